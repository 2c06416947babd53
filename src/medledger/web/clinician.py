"""The clinician view: one timeline of a patient across hospitals, break-the-glass and
access requests.

Each record is decided for treatment first; a running break-the-glass opening of this
clinician is the emergency basis for what treatment alone does not reach; every read and
refusal is recorded on the chain. The clinician finds a patient by INS only through a POST
form; URLs carry pids, never an INS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from medledger.api.tokens import outside_launch
from medledger.contracts.consent import RequestAccess
from medledger.contracts.emergency import Open
from medledger.node.notes import NoteStore, emergency_justification
from medledger.web.auth import (
    clinician_refusal,
    csrf_token,
    guard_post,
    is_clinician,
    login_form,
    services,
    signed_in,
)
from medledger.web.clinician_rules import duplicate_exams
from medledger.web.records import hospital_names, patient_header, timeline_rows, trends
from medledger.web.render import message, render

_PID = re.compile(r"^[0-9a-f]{64}$")
_OUTSIDE_LAUNCH = "your sign-in is limited to another patient (its launch context)"


def router() -> APIRouter:
    """The timeline page and the clinician's three forms (find, request access, break the
    glass)."""
    routes = APIRouter(dependencies=[Depends(guard_post)])

    @routes.get("/clinician")
    def clinician(request: Request, patient: str = "", window: int | None = None) -> Response:
        svc = services(request)
        claims = signed_in(request)
        if not is_clinician(claims):
            return login_form(request, "/clinician", clinician_refusal(claims))
        assert claims is not None  # is_clinician says so
        csrf = csrf_token(svc, claims)
        if not patient:
            return render(request, "clinician.html", "Clinician view", csrf=csrf)
        pid = patient.strip().lower()
        if not _PID.match(pid):  # an INS never travels in a URL: it is typed in the form
            return render(request, "clinician.html", "Clinician view", 400, csrf, bad_pid=True)
        if outside_launch(claims, pid):
            return message(request, "Clinician view", _OUTSIDE_LAUNCH, 403, cls="bad")
        rows = []
        denial = ""
        # Treatment first; a running break-the-glass opening of this clinician is the
        # emergency basis for what treatment alone does not reach.
        granted: dict[tuple[str, str], list[str]] = {}
        refused: dict[str, list[str]] = {}
        for r in timeline_rows(svc, pid, claims):
            meta = {"custodian": r["source"], "type": r["type"], "category": r["category"]}
            purpose = "treatment"
            decision = svc.decide(claims, pid, meta, purpose)
            if not decision.allowed:
                emergency = svc.decide(claims, pid, meta, "emergency")
                if emergency.allowed:
                    purpose, decision = "emergency", emergency
            if decision.allowed:
                rows.append(r)
                granted.setdefault((purpose, decision.basis), []).append(r["rid"])
            else:
                denial = decision.reason
                refused.setdefault(decision.reason, []).append(r["rid"])
        from medledger.contracts.authorize import Decision

        for reason, rids in sorted(refused.items()):  # refusals are on the chain too
            svc.record_access(
                claims, pid, "read", "treatment", Decision(False, "", reason), rids, wait=False
            )
        for (purpose, basis), rids in sorted(granted.items()):
            svc.record_access(
                claims, pid, "read", purpose, Decision(True, basis, ""), rids, wait=False
            )
        # The window is the hospital's choice (config.json `clinician.duplicate_window_days`),
        # and a clinician may widen or narrow it for one look (`?window=DAYS`).
        default = svc.node.config.clinician.duplicate_window_days
        warnings = duplicate_exams(rows, window if window is not None else default)
        header = patient_header(svc, rows) if rows else {}
        return render(
            request,
            "clinician.html",
            header.get("name") or f"Patient {pid[:12]}…",
            csrf=csrf,
            pid=pid,
            header=header,
            rows=rows,
            charts=trends(rows),
            hospitals=hospital_names(svc),
            warnings=warnings,
            denial=denial,
        )

    @routes.post("/clinician/find")
    def find(request: Request, patient: Annotated[str, Form()]) -> Response:
        """The INS is typed in a form and turned into the pid at once: it never appears in a
        URL, a log line or the browser's history."""
        from medledger.node.patients import resolve_pid

        svc = services(request)
        claims = signed_in(request)
        if not is_clinician(claims):  # no INS-to-pid lookups for strangers
            return login_form(request, "/clinician", clinician_refusal(claims))
        try:
            pid = resolve_pid(svc.node.config.pseudonym_key(), patient)
        except ValueError as exc:
            return message(request, "Clinician view", str(exc), 400, cls="bad")
        return RedirectResponse(f"/clinician?patient={pid}", status_code=303)

    @routes.post("/clinician/request-access")
    def request_access(
        request: Request,
        patient: Annotated[str, Form()],
        note: Annotated[str, Form()],
        categories: Annotated[str, Form()] = "*",
    ) -> Response:
        cats = [c.strip() for c in categories.split(",") if c.strip()] or ["*"]

        def ask(notes: NoteStore) -> RequestAccess:
            # The note stays here, salted: a bare hash of a short note could be guessed.
            kept = notes.keep("access-request", note=note)
            return RequestAccess(
                pid=patient, categories=cats, purpose="treatment", reason_hash=kept
            )

        refused = _sign_as_clinician(request, patient, ask)
        if refused is not None:
            return refused
        return message(
            request,
            "Access requested",
            "Your request is on the ledger: the patient sees it in their portal and may grant it.",
            cls="ok",
            back=f"/clinician?patient={patient}",
        )

    @routes.post("/clinician/break-glass")
    def break_glass(
        request: Request,
        patient: Annotated[str, Form()],
        reason: Annotated[str, Form()],
        note: Annotated[str, Form()],
    ) -> Response:
        def open_(notes: NoteStore) -> Open:
            # The reason code and note stay here for the DPO; the chain gets their hash.
            return Open(pid=patient, reason_hash=emergency_justification(notes, reason, note))

        refused = _sign_as_clinician(request, patient, open_)
        if refused is not None:
            return refused
        return RedirectResponse(f"/clinician?patient={patient}", status_code=303)

    return routes


def _sign_as_clinician(
    request: Request, pid: str, build: Callable[[NoteStore], Any]
) -> Response | None:
    """Sign with the signed-in clinician's own key the message `build` makes about patient
    `pid` (its notes kept in the hospital's NoteStore); None once committed, else the page to
    answer: the login form for anyone but a clinician, a 403 when the token's launch context
    is another patient, or a 409 naming the refusal."""
    from medledger.node.wallet import TxRejected

    svc = services(request)
    claims = signed_in(request)
    if not is_clinician(claims):
        return login_form(request, "/clinician", clinician_refusal(claims))
    assert claims is not None  # is_clinician says so
    if outside_launch(claims, pid):  # a launch context narrows the token, as on the API
        return message(request, "Refused", _OUTSIDE_LAUNCH, 403, cls="bad")
    practitioner = claims.subject.removeprefix("Practitioner/")
    try:
        wallet = svc.node.practitioner_wallet(practitioner)
        wallet.send_message(build(NoteStore(svc.node.config.home)))
    except (TxRejected, ValueError) as exc:
        text = exc.log if isinstance(exc, TxRejected) else str(exc)
        return message(request, "Refused", text, 409, cls="bad")
    return None
