"""The patient portal: my records, who accessed my data (with proofs), consents, access
requests, studies, erasure, and the acts hospitals took in my name.

Every read the portal makes is decided and recorded on the chain exactly like an API read,
and it shows only the resource types (and categories) the token's scopes let the API serve.
An action needs the scope of the FHIR write it amounts to (a consent: `Consent` create or
update; an erasure request: `Patient` delete), and the hospital signs it for the patient only
when it is one of their custodians (the contract refuses any other hospital too).
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from medledger.api.auth import allows
from medledger.api.outcomes import FhirError
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims, patient_of
from medledger.contracts import consent, queries, research
from medledger.contracts.erasure import Request as ErasureRequest
from medledger.contracts.messages import body_of, kind_of
from medledger.web.auth import (
    csrf_token,
    guard_post,
    login_form,
    patient_claims,
    services,
    signed_in,
)
from medledger.web.records import TYPE_WORDS, hospital_names, patient_header, timeline_rows
from medledger.web.render import message, render, when
from medledger.web.trail import grouped, hospitals_in


def router() -> APIRouter:
    """The portal page, its actions (each a POST signed by the hospital in the patient's
    name) and the proofs of the patient's own txs."""
    routes = APIRouter(dependencies=[Depends(guard_post)])

    @routes.get("/portal")
    def portal(request: Request, who: str = "", outcome: str = "") -> Response:
        svc = services(request)
        claims = signed_in(request)
        pid = None if claims is None else patient_of(claims)
        if claims is None or pid is None:
            return login_form(request, "/portal")
        records = timeline_rows(svc, pid, claims)
        rids = [r["rid"] for r in records]
        meta = {"custodian": svc.org}
        audited = svc.decide_and_audit(claims, pid, meta, "patient-request", "read", rids)
        if records:
            svc.log(audited.entries, wait=False)
        trail = queries.access_of_patient(svc.node.engine, pid)
        # The chain knows every hospital's index entries for this patient; those held
        # elsewhere stay sealed here unless a consent brought their metadata key or a copy.
        held = {r["rid"] for r in records}
        everything = allows(claims, "*", "search")  # counts of every type: for *-scopes only
        elsewhere = [
            entry
            for entry in queries.records_of_patient(svc.node.engine, pid)
            if entry["rid"] not in held and not entry["shredded"]
        ]
        if everything is None or everything.categories is not None:
            elsewhere = []
        by_custodian: dict[str, list[int]] = {}
        for entry in elsewhere:
            by_custodian.setdefault(entry["custodian"], []).append(entry["time"])
        sealed = [
            {"date": when(max(times))[:10], "count": len(times), "source": custodian}
            for custodian, times in sorted(by_custodian.items())
        ]
        names = hospital_names(svc)
        consents = {int(c["id"]): c for c in queries.consent_list(svc.node.engine, pid)}
        outcome = outcome if outcome in ("granted", "denied") else ""
        trail_orgs = hospitals_in(trail)
        who = who if who in trail_orgs else ""  # a filter the form cannot show is not applied
        accesses = grouped(trail, names, pid, consents, who=who, outcome=outcome)
        sections = _sections(svc, pid) if allows(claims, "Consent", "search") else None
        header = patient_header(svc, records) if records else {}
        holding: dict[str, int] = {}
        for r in records:
            holding[r["source"]] = holding.get(r["source"], 0) + 1
        for kept in sealed:
            source = str(kept["source"])
            holding[source] = holding.get(source, 0) + int(str(kept["count"]))
        return render(
            request,
            "portal.html",
            "My health records",
            csrf=csrf_token(svc, claims),
            pid=pid,
            header=header,
            hospitals=names,
            holding=sorted(holding.items(), key=lambda h: names.get(h[0], h[0])),
            records=records,
            sealed=sealed,
            accesses=accesses if allows(claims, "AuditEvent", "search") else None,
            trail_orgs=trail_orgs,
            who=who,
            outcome=outcome,
            sections=sections,
            categories=CATEGORY_WORDS,
            acts=ACT_WORDS,
            channels=CHANNEL_WORDS,
            types=TYPE_WORDS,
        )

    def _patient(
        request: Request, resource_type: str, interaction: str
    ) -> tuple[HospitalServices, Claims, str]:
        """The signed-in patient, if their scopes allow the FHIR write this action is."""
        claims, pid = patient_claims(request, resource_type, interaction)
        return services(request), claims, pid

    @routes.post("/portal/consent")
    def grant(
        request: Request,
        grantee: Annotated[str, Form()],
        purpose: Annotated[str, Form()],
        categories: Annotated[list[str] | None, Form()] = None,
        end: Annotated[str, Form()] = "",
    ) -> Response:
        """Categories come as one field per ticked box (the form), or one comma-separated
        field (an access request's Grant button). None ticked grants nothing: "all my records"
        is a box of its own (`*`), never what an empty form means."""
        import time
        from datetime import date, datetime

        svc, claims, pid = _patient(request, "Consent", "create")
        end_ms = 0
        if end:
            day = date.fromisoformat(end)
            end_ms = int(
                datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC).timestamp() * 1000
            )
        cats = [c.strip() for f in categories or [] for c in f.split(",") if c.strip()]
        if not cats:
            return message(
                request,
                "No data ticked",
                "Tick the data this hospital may see, or all my records: nothing was granted.",
                400,
                cls="bad",
                back="/portal#grant-form",
            )
        msg = consent.Grant(
            pid=pid,
            grantee=grantee,
            categories=cats if cats and "*" not in cats else ["*"],
            purpose=purpose,
            start_ms=int(time.time() * 1000),
            end_ms=end_ms,
        )
        return _act(request, svc, claims, msg, "#consents")

    @routes.post("/portal/consent/{cid}/revoke")
    def revoke(request: Request, cid: int) -> Response:
        svc, claims, pid = _patient(request, "Consent", "update")
        found = queries.consent_get(svc.node.engine, cid)
        if found is None or found["pid"] != pid:  # only one's own consents
            raise FhirError(404, "not-found", f"no consent {cid} of yours")
        msg = consent.Revoke(id=cid, reason="patient-request")
        return _act(request, svc, claims, msg, "#consents")

    @routes.post("/portal/study/{study}/{action}")
    def study(request: Request, study: str, action: str) -> Response:
        svc, claims, pid = _patient(request, "Consent", "create" if action == "enrol" else "update")
        if action not in ("enrol", "withdraw"):
            raise FhirError(404, "not-found", "no such action")
        act = research.Enrol if action == "enrol" else research.Withdraw
        return _act(request, svc, claims, act(study=study, pid=pid), "#studies")

    @routes.post("/portal/erasure")
    def erasure(request: Request) -> Response:
        svc, claims, pid = _patient(request, "Patient", "delete")
        return _act(request, svc, claims, ErasureRequest(pid=pid), "#erasure")

    @routes.get("/portal/proof/{tx}")
    def proof(request: Request, tx: str) -> Response:
        svc = services(request)
        _, pid = patient_claims(request, "AuditEvent", "search")
        app = svc.node.app
        if app is None:
            raise FhirError(404, "not-found", "this node keeps no ledger replica")
        # Only the txs of the patient's own trail and records: a tx id is no key to others'.
        engine = svc.node.engine
        own = {a["tx"].hex() for a in queries.access_of_patient(engine, pid)} | {
            r["tx"].hex() for r in queries.records_of_patient(engine, pid)
        }
        found = app.prove(bytes.fromhex(tx)) if tx.lower() in own else None
        if found is None:
            raise FhirError(404, "not-found", f"tx {tx} is not one of your records or accesses")
        return JSONResponse(
            found.to_json(),
            headers={"Content-Disposition": f'attachment; filename="proof-{tx[:16]}.json"'},
        )

    return routes


#: The consent categories in words, for the grant form and the consents table.
CATEGORY_WORDS = {
    "*": "all my records",
    "demographics": "identity and contact details",
    "encounters": "visits and stays",
    "conditions": "diagnoses and conditions",
    "allergies": "allergies",
    "medications": "medications",
    "immunizations": "vaccinations",
    "labs": "laboratory results",
    "vital-signs": "vital signs (weight, blood pressure...)",
    "observations": "other observations",
    "diagnostic-reports": "reports",
    "imaging": "imaging",
    "procedures": "procedures and operations",
    "care-plans": "care plans",
    "documents": "documents",
    "administrative": "administrative data",
    "other": "anything else",
}

#: The acts a hospital may take in a patient's name (contracts' `announce_on_behalf`), in words.
ACT_WORDS = {
    "consent.grant": "granted a consent",
    "consent.revoke": "revoked a consent",
    "erasure.request": "asked for erasure",
    "patients.bind": "replaced your key",
    "research.enrol": "enrolled you in a study",
    "research.withdraw": "withdrew you from a study",
}
#: How the patient's request reached the hospital.
CHANNEL_WORDS = {"portal": "through this portal", "desk": "at the hospital's desk"}
#: Statuses of consents and erasure requests, translated by the template.
STATUS_WORDS = (
    "active",
    "contested",
    "revoked",
    "expired",
    "pending",
    "open",
    "done",
    "overdue",
    "attested",
    "cancelled",
    "refused",
)

#: What a patient asks their hospital's portal to sign on their behalf.
PortalAct = consent.Grant | consent.Revoke | research.Enrol | research.Withdraw | ErasureRequest


def _on_behalf(svc: HospitalServices, claims: Claims, msg: PortalAct) -> None:
    """The hospital signs for the patient through its portal (channel `portal`, no practitioner
    took it); the evidence is the patient's authenticated request (their token's claims and
    what they asked), whose hash goes on the chain. Only a custodian of the patient may: the
    contract refuses any other hospital (patients.acting_for_patient)."""
    asked = {"token": claims.raw, "kind": kind_of(msg), "body": body_of(msg)}
    evidence = hashlib.sha256(orjson.dumps(asked, default=str)).digest()
    svc.node.wallet.send_message(dataclasses.replace(msg, evidence_hash=evidence, channel="portal"))


def _act(
    request: Request,
    svc: HospitalServices,
    claims: Claims,
    msg: PortalAct,
    anchor: str,
) -> Response:
    from medledger.node.wallet import TxRejected

    refusal = _not_custodian(svc, claims)  # checked before signing anything
    if refusal is None:
        try:
            _on_behalf(svc, claims, msg)
        except TxRejected as exc:
            refusal = exc.log
    if refusal is not None:
        return message(request, "Refused", refusal, 409, cls="bad", back=f"/portal{anchor}")
    return RedirectResponse(f"/portal{anchor}", status_code=303)


def _not_custodian(svc: HospitalServices, claims: Claims) -> str | None:
    """Why this hospital's portal may not act for the signed-in patient, if it may not: only a
    custodian of the patient acts in their name (the contract refuses anyone else too)."""
    assert claims.patient is not None  # a patient's portal: signed in as the patient
    held = queries.records_of_patient(svc.node.engine, claims.patient, svc.org)
    if any(not entry["shredded"] for entry in held):
        return None
    return (
        f"not a custodian of this patient: {svc.org} holds none of your care records, so it "
        "cannot act in your name; ask a hospital that treats you"
    )


def data_in_words(categories: list[str]) -> list[str]:
    """Consent categories as a patient reads them (["laboratory results", "imaging"]), each
    translated by the template."""
    return [CATEGORY_WORDS.get(c, c) for c in categories]


def grantee_in_words(grantee: str, names: dict[str, str]) -> str:
    """`org:chu-lyon` → "CHU de Lyon"; `practitioner:chu-lyon/dr-a` → "dr-a, CHU de Lyon"."""
    kind, _, rest = grantee.partition(":")
    if kind == "org":
        return names.get(rest, rest)
    if kind == "practitioner":
        org, _, who = rest.partition("/")
        return f"{who}, {names.get(org, org)}"
    if kind == "study":
        return f"study {rest}"
    return grantee


def _self_grant_note(consent: dict[str, Any]) -> str:
    """Tell the patient when a hospital gave itself access in their name, and any contest."""
    if not consent.get("self_granted"):
        return ""
    signed = consent["signed"]
    taker = f", request taken by {signed['practitioner']}" if signed["practitioner"] else ""
    note = f"{signed['org']} granted itself this access on your behalf ({signed['channel']}{taker})"
    contest = consent.get("contest")
    if contest:
        note += f"; contested by {contest['org']}'s DPO ({contest['reason']})"
    return note


def _sections(svc: HospitalServices, pid: str) -> dict[str, Any]:
    """Consents (grant, revoke), studies (enrol, withdraw), erasure and the acts in the
    patient's name, from the ledger, as data for `portal.html`."""
    engine = svc.node.engine
    names = hospital_names(svc)
    consents = [
        {
            **c,
            "grantee_words": grantee_in_words(str(c["grantee"]), names),
            "data": data_in_words(c["categories"]),
            "period": when(c["start_ms"]) + (" → " + when(c["end_ms"]) if c["end_ms"] else ""),
            "note": _self_grant_note(c),
            "revocable": c["status"] in ("active", "contested"),
        }
        for c in queries.consent_list(engine, pid)
    ]
    requests = [
        {
            **r,
            "who": (f"{r['practitioner']}, " if r["practitioner"] else "")
            + names.get(str(r["org"]), str(r["org"])),
            "data": data_in_words(r["categories"]),
        }
        for r in queries.consent_requests(engine, pid)
    ]
    mine = {r["study"]: r for r in queries.research_of_patient(engine, pid)}
    from medledger.node.notes import NoteStore, title_of_study

    notes = NoteStore(svc.node.config.home)  # titles of the studies this hospital sponsors
    studies = []
    for st in queries.studies(engine):
        enrolled = mine.get(st["id"], {}).get("status") == "enrolled"
        studies.append(
            {
                **st,
                "title": title_of_study(notes, st),
                "data": data_in_words(st["categories"]),
                "enrolled": enrolled,
                "action": "withdraw" if enrolled else "enrol",
            }
        )
    erasure = queries.erasure_status(engine, pid)
    waiting = queries.erasure_pending(engine, pid) if erasure is None else None
    hours = None
    if erasure is None and waiting is None:
        hours = queries.policy_params(engine)["on_behalf_delay_ms"] // (3600 * 1000)
    members = [m for m in queries.members(engine) if m["org"] != svc.org]
    notices = queries.patient_notices(engine, pid)
    return {
        "consents": consents,
        "requests": requests,
        "studies": studies,
        "erasure": erasure,
        "waiting": waiting,
        "hours": hours,
        "members": members,
        "custodians": sorted(notices["custodians"].items()),
        "acts": notices["acts"],
        "rebind": notices["rebind"],
    }
