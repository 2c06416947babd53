"""The pages: patient portal, clinician view, network explorer.

Pages are rendered on the server from the same services the FHIR API uses; the caller's
bearer token sits in an HttpOnly cookie set by the login form (`Secure` over https), and every
read a page makes is decided and recorded on the chain exactly like an API read.

The pages apply the token's SMART scopes through the API's own `auth.require`: a page shows
only the resource types (and categories) the scopes let the API serve, and an action needs
the scope of the FHIR write it amounts to (a consent: `Consent` create or update; an erasure
request: `Patient` delete).

Every POST is refused when its Origin (or Referer) is another site, the sign-in form
included, and a signed-in POST must carry the session's CSRF token (an HMAC of the token, in a
hidden field that `render.page` adds to every POST form). Signing out revokes the token on the
server (`HospitalServices.signed_out`) until it expires, so a copy of it is useless after.
The clinician finds a patient by INS only through a POST form; URLs carry pids, never an INS.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from datetime import UTC
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from medledger.api.auth import allows
from medledger.api.fhir import LocalRecords
from medledger.api.outcomes import FhirError
from medledger.api.scopes import ScopeError, grants
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims, TokenError, patient_of, verify_token
from medledger.contracts import queries
from medledger.contracts.access import reason_in_words
from medledger.web.render import e, page, table, when

COOKIE = "medledger_token"
_PID = re.compile(r"^[0-9a-f]{64}$")
_VERIFYING = threading.Lock()  # one replay from genesis at a time


def _svc(request: Request) -> HospitalServices:
    svc: HospitalServices = request.app.state.services
    return svc


def _claims(request: Request) -> Claims | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    svc = _svc(request)
    try:
        claims = verify_token(token, svc.trusted_issuers, svc.audience)
        grants(claims.scopes)  # a scope the server cannot honour exactly signs nobody in
    except (TokenError, ScopeError):
        return None
    if svc.signed_out.revoked(claims.token_id):
        return None
    return claims


def csrf_token(svc: HospitalServices, claims: Claims | None) -> str:
    """The session's CSRF token: bound to the signed-in token, useless with any other."""
    if claims is None:
        return ""
    return hmac.new(svc.csrf_secret, claims.token_id.encode(), hashlib.sha256).hexdigest()[:32]


def _same_site(request: Request) -> bool:
    """Whether a POST comes from this site's own pages (by Origin, else Referer). A client
    that sends neither is no browser acting for someone else; a browser always sends Origin
    on a cross-site POST."""
    from urllib.parse import urlsplit

    own = str(request.base_url).rstrip("/")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return True


async def _guard_post(request: Request) -> None:
    """Every page POST: same site, and the session's CSRF token when someone is signed in."""
    if request.method != "POST":
        return
    if not _same_site(request):
        raise FhirError(403, "forbidden", "a form posted from another site is refused")
    claims = _claims(request)
    if claims is None or request.url.path == "/login":
        return  # nobody signed in: the handler refuses, nothing is done in anyone's name
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(
        sent, csrf_token(_svc(request), claims)
    ):
        raise FhirError(403, "forbidden", "this form has no valid CSRF token: reload the page")


def _clinician(claims: Claims | None) -> bool:
    """A practitioner whose scopes let them read records as a user (`user/...r`): the
    clinician view, break-the-glass and access requests all lead to reading records."""
    if claims is None or not claims.subject.startswith("Practitioner/"):
        return False
    return any(g.level == "user" and "r" in g.letters for g in grants(claims.scopes))


def _clinician_refusal(claims: Claims | None) -> str:
    if claims is None or not claims.subject.startswith("Practitioner/"):
        return ""
    return "your token's scopes allow no reading of records (a user/ read scope is needed)"


def _patient_claims(request: Request, resource_type: str, interaction: str) -> tuple[Claims, str]:
    """A signed-in patient whose scopes allow this FHIR interaction (403 otherwise), and their
    pid. Only a token that IS the patient (`patient_of`): a practitioner's launch context is
    not a patient sign-in."""
    from medledger.api.auth import require

    claims = _claims(request)
    pid = None if claims is None else patient_of(claims)
    if claims is None or pid is None:
        raise FhirError(401, "login", "sign in as a patient first")
    require(claims, resource_type, interaction)
    return claims, pid


def _login_form(svc: HospitalServices, target: str, message: str = "") -> Response:
    body = f"""
<p>{e(message)}</p>
<form method="post" action="/login"><input type="hidden" name="next" value="{e(target)}">
<label>Bearer token <input name="token" size="80" required></label>
<button type="submit">Sign in</button></form>
<p class="muted">Demo tokens come from <code>medledger token --home HOME --user ...</code>.</p>"""
    return page("Sign in", svc.node.config.name, body, 401 if message else 200)


def _timeline_rows(svc: HospitalServices, pid: str, claims: Claims) -> list[dict[str, Any]]:
    """Local records of the patient that the token's scopes reach (as an API search would),
    newest first, with their source hospital."""
    from medledger.interop.metadata import extract_metadata

    rows = []
    for info in LocalRecords(svc).latest(pid):
        allowed = allows(claims, info.resource_type, "search")
        if allowed is None:
            continue
        resource = orjson.loads(svc.vault.get(info.rid))
        if not allowed.covers(resource):
            continue
        meta = extract_metadata(resource)
        rows.append(
            {
                "rid": info.rid,
                "type": info.resource_type,
                "date": meta.get("date") or "",
                "title": meta.get("title") or "",
                "code": meta.get("code") or "",
                "category": meta.get("category") or "",
                "source": info.custodian,
                "copy": info.is_copy,
            }
        )
    rows.sort(key=lambda r: r["date"], reverse=True)
    return rows


def make_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(_guard_post)])

    @router.get("/")
    def home(request: Request) -> Response:
        svc = _svc(request)
        body = f"""<div class="card"><p>This is the node of <b>{e(svc.node.config.name)}</b>
({e(svc.org)}) in the consortium <code>{e(svc.node.config.chain_id)}</code>.</p>
<ul><li><a href="/portal">Patient portal</a>: my records, who accessed my data, consents.</li>
<li><a href="/clinician">Clinician view</a>: one timeline across hospitals.</li>
<li><a href="/explorer">Network explorer</a>: blocks, validators, verification.</li>
<li><a href="/docs">API (OpenAPI)</a> · <a href="/fhir/metadata">FHIR metadata</a></li></ul></div>"""
        return page("medledger", svc.node.config.name, body)

    @router.post("/login")
    def login(
        request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        svc = _svc(request)
        try:
            claims = verify_token(token.strip(), svc.trusted_issuers, svc.audience)
            grants(claims.scopes)
        except (TokenError, ScopeError) as exc:
            return _login_form(svc, next, f"That token was refused: {exc}.")
        if svc.signed_out.revoked(claims.token_id):
            return _login_form(svc, next, "That token was refused: it was signed out.")
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        if "\\" in target:  # browsers read /\host as //host
            target = "/"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token.strip(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.get("/logout")
    def logout(request: Request) -> Response:
        claims = _claims(request)
        if claims is not None:  # the token itself stops working, not just this cookie
            _svc(request).signed_out.revoke(claims.token_id, claims.expires)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(
            COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response

    # -- patient portal -------------------------------------------------------------------
    @router.get("/portal")
    def portal(request: Request) -> Response:
        svc = _svc(request)
        claims = _claims(request)
        pid = None if claims is None else patient_of(claims)
        if claims is None or pid is None:
            return _login_form(svc, "/portal")
        decision = svc.decide(claims, pid, {"custodian": svc.org}, "patient-request")
        records = _timeline_rows(svc, pid, claims)
        if records:
            svc.record_access(
                claims,
                pid,
                "read",
                "patient-request",
                decision,
                [r["rid"] for r in records],
                wait=False,
            )
        trail = queries.access_of_patient(svc.node.engine, pid)
        record_rows = [[e(r["date"]), e(r["type"]), e(r["title"]), e(r["source"])] for r in records]
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
        for custodian, times in sorted(by_custodian.items()):
            record_rows.append(
                [
                    e(when(max(times))[:10]),
                    f"{len(times)} records",
                    '<span class="muted">held there; details sealed (grant that hospital\'s '
                    "records to this one to see them here)</span>",
                    e(custodian),
                ]
            )
        trail_rows = [
            [
                e(when(a["time"])),
                e(a["actor"]),
                # A remote act is backed by its hospital's request, verified on the chain.
                e(a["actor_org"])
                + (f" (signed by {e(a['request_signer'])})" if a.get("request_signer") else ""),
                # The entry's signer, not a claim of the tx: who answers for this line.
                f'<span title="{e(a.get("signer", ""))}">served and signed by '
                f"{e(a['custodian'])}</span>",
                e(a["action"]),
                e(a["purpose"]),
                f'<span class="{"ok" if a["outcome"] == "granted" else "bad"}">'
                f"{e(a['outcome'])}</span>",
                e(a["basis"] or reason_in_words(a["reason"])),
                f'<a href="/portal/proof/{a["tx"].hex()}">proof</a> (block {a["height"]})',
            ]
            for a in reversed(trail)
        ]
        no_scope = '<p class="muted">Your sign-in does not allow this (token scopes).</p>'
        sections = (
            _portal_sections(svc, pid)
            if allows(claims, "Consent", "search")
            else f'<h2 id="consents">My consents</h2>{no_scope}'
        )
        who = (
            table(
                [
                    "when",
                    "who",
                    "of",
                    "served by",
                    "action",
                    "purpose",
                    "outcome",
                    "basis",
                    "proof",
                ],
                trail_rows,
                "nobody accessed your data yet",
            )
            if allows(claims, "AuditEvent", "search")
            else no_scope
        )
        body = f"""<p class="muted">Signed in as patient <code>{e(pid[:16])}…</code>
(<a href="/logout">sign out</a>)</p>
<h2>My records</h2>{table(["date", "type", "what", "hospital"], record_rows)}
<h2 id="who">Who accessed my data</h2>
<p class="muted">From the ledger: every read, search or refusal, with the basis of the
decision. Each line has a proof you can check offline with
<code>medledger ledger check-proof FILE --genesis genesis.json</code>.</p>
{who}{sections}"""
        return page("My health records", svc.node.config.name, body, csrf=csrf_token(svc, claims))

    def _patient(
        request: Request, resource_type: str, interaction: str
    ) -> tuple[HospitalServices, Claims, str]:
        """The signed-in patient, if their scopes allow the FHIR write this action is."""
        claims, pid = _patient_claims(request, resource_type, interaction)
        return _svc(request), claims, pid

    @router.post("/portal/consent")
    def grant(
        request: Request,
        grantee: Annotated[str, Form()],
        purpose: Annotated[str, Form()],
        categories: Annotated[str, Form()] = "*",
        end: Annotated[str, Form()] = "",
    ) -> Response:
        import time
        from datetime import date, datetime

        svc, claims, pid = _patient(request, "Consent", "create")
        end_ms = 0
        if end:
            day = date.fromisoformat(end)
            end_ms = int(
                datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC).timestamp() * 1000
            )
        cats = [c.strip() for c in categories.split(",") if c.strip()] or ["*"]
        body = {
            "pid": pid,
            "grantee": grantee,
            "categories": cats,
            "purpose": purpose,
            "start_ms": int(time.time() * 1000),
            "end_ms": end_ms,
        }
        return _act(svc, claims, "consent.grant", body, "#consents")

    @router.post("/portal/consent/{cid}/revoke")
    def revoke(request: Request, cid: int) -> Response:
        svc, claims, pid = _patient(request, "Consent", "update")
        consent = queries.consent_get(svc.node.engine, cid)
        if consent is None or consent["pid"] != pid:  # only one's own consents
            raise FhirError(404, "not-found", f"no consent {cid} of yours")
        return _act(
            svc,
            claims,
            "consent.revoke",
            {"id": cid, "reason": "patient-request"},
            "#consents",
        )

    @router.post("/portal/study/{study}/{action}")
    def study(request: Request, study: str, action: str) -> Response:
        svc, claims, pid = _patient(request, "Consent", "create" if action == "enrol" else "update")
        if action not in ("enrol", "withdraw"):
            raise FhirError(404, "not-found", "no such action")
        return _act(svc, claims, f"research.{action}", {"study": study, "pid": pid}, "#studies")

    @router.post("/portal/erasure")
    def erasure(request: Request) -> Response:
        svc, claims, pid = _patient(request, "Patient", "delete")
        return _act(svc, claims, "erasure.request", {"pid": pid}, "#erasure")

    @router.get("/portal/proof/{tx}")
    def proof(request: Request, tx: str) -> Response:
        from medledger.ledger.proofs import prove_tx

        svc = _svc(request)
        _, pid = _patient_claims(request, "AuditEvent", "search")
        app = svc.node.app
        if app is None:
            raise FhirError(404, "not-found", "this node keeps no ledger replica")
        # Only the txs of the patient's own trail and records: a tx id is no key to others'.
        engine = svc.node.engine
        own = {a["tx"].hex() for a in queries.access_of_patient(engine, pid)} | {
            r["tx"].hex() for r in queries.records_of_patient(engine, pid)
        }
        found = prove_tx(app.store, bytes.fromhex(tx)) if tx.lower() in own else None
        if found is None:
            raise FhirError(404, "not-found", f"tx {tx} is not one of your records or accesses")
        return JSONResponse(
            found.to_json(),
            headers={"Content-Disposition": f'attachment; filename="proof-{tx[:16]}.json"'},
        )

    # -- clinician view ---------------------------------------------------------------------
    @router.get("/clinician")
    def clinician(request: Request, patient: str = "", window: int | None = None) -> Response:
        svc = _svc(request)
        claims = _claims(request)
        if not _clinician(claims):
            return _login_form(svc, "/clinician", _clinician_refusal(claims))
        csrf = csrf_token(svc, claims)
        form = """<form method="post" action="/clinician/find"><label>Patient INS
<input name="patient" required></label><button>Find</button></form>"""
        if not patient:
            return page("Clinician view", svc.node.config.name, form, csrf=csrf)
        pid = patient.strip().lower()
        if not _PID.match(pid):  # an INS never travels in a URL: it is typed in the form
            return page(
                "Clinician view",
                svc.node.config.name,
                form + '<p class="bad">patient: a pid (64 hex characters); type an INS in the '
                "form above</p>",
                400,
                csrf=csrf,
            )
        rows = []
        denial = ""
        # Treatment first; a running break-the-glass opening of this clinician is the
        # emergency basis for what treatment alone does not reach.
        granted: dict[tuple[str, str], list[str]] = {}
        refused: dict[str, list[str]] = {}
        for r in _timeline_rows(svc, pid, claims):
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
        warn_html = "".join(f'<p class="warn">{e(w)}</p>' for w in warnings)
        if denial:
            warn_html += f"""<div class="card"><p class="bad">Some records are not yours to see:
{e(denial)}.</p><form method="post" action="/clinician/break-glass">
<input type="hidden" name="patient" value="{e(pid)}"><b>Break the glass</b> (emergency access,
reviewed by your DPO, the patient is told): <select name="reason">
<option>life-threatening</option><option>unconscious</option><option>unable-to-consent</option>
<option>urgent-care</option><option>other</option></select>
<input name="note" placeholder="justification" size="40" required>
<button id="break-glass">Open emergency access</button></form>
<form method="post" action="/clinician/request-access">
<input type="hidden" name="patient" value="{e(pid)}"><b>Or ask the patient</b> for access:
<input name="categories" value="*" size="24" title="comma-separated categories, or *">
<input name="note" placeholder="why (sent to the patient)" size="30" required>
<button id="request-access">Request access</button></form></div>"""
        body = (
            form
            + warn_html
            + table(
                ["date", "type", "what", "code", "source hospital"],
                [
                    [e(r["date"]), e(r["type"]), e(r["title"]), e(r["code"]), e(r["source"])]
                    for r in rows
                ],
                f"no record you may see ({denial})" if denial else "no record",
            )
        )
        return page(f"Patient {pid[:12]}…", svc.node.config.name, body, csrf=csrf)

    @router.post("/clinician/find")
    def find(request: Request, patient: Annotated[str, Form()]) -> Response:
        """The INS is typed in a form and turned into the pid at once: it never appears in a
        URL, a log line or the browser's history."""
        from medledger.node.patients import resolve_pid

        svc = _svc(request)
        claims = _claims(request)
        if not _clinician(claims):  # no INS-to-pid lookups for strangers
            return _login_form(svc, "/clinician", _clinician_refusal(claims))
        try:
            pid = resolve_pid(svc.node.config.pseudonym_key(), patient)
        except ValueError as exc:
            return page("Clinician view", svc.node.config.name, f'<p class="bad">{e(exc)}</p>', 400)
        return RedirectResponse(f"/clinician?patient={pid}", status_code=303)

    @router.post("/clinician/request-access")
    def request_access(
        request: Request,
        patient: Annotated[str, Form()],
        note: Annotated[str, Form()],
        categories: Annotated[str, Form()] = "*",
    ) -> Response:
        from medledger.node.wallet import TxRejected

        svc = _svc(request)
        claims = _claims(request)
        if not _clinician(claims):
            return _login_form(svc, "/clinician", _clinician_refusal(claims))
        practitioner = claims.subject.removeprefix("Practitioner/")
        cats = [c.strip() for c in categories.split(",") if c.strip()] or ["*"]
        try:
            from medledger.node.notes import NoteStore

            # The note stays here, salted: a bare hash of a short note could be guessed.
            kept = NoteStore(svc.node.config.home).keep("access-request", note=note)
            svc.node.practitioner_wallet(practitioner).send(
                "consent.request",
                {"pid": patient, "categories": cats, "purpose": "treatment", "reason_hash": kept},
            )
        except (TxRejected, ValueError) as exc:
            text = exc.log if isinstance(exc, TxRejected) else str(exc)
            return page("Refused", svc.node.config.name, f'<p class="bad">{e(text)}</p>', 409)
        body = (
            '<p class="ok">Your request is on the ledger: the patient sees it in their portal '
            f'and may grant it.</p><p><a href="/clinician?patient={e(patient)}">back</a></p>'
        )
        return page("Access requested", svc.node.config.name, body)

    @router.post("/clinician/break-glass")
    def break_glass(
        request: Request,
        patient: Annotated[str, Form()],
        reason: Annotated[str, Form()],
        note: Annotated[str, Form()],
    ) -> Response:
        from medledger.node.wallet import TxRejected

        svc = _svc(request)
        claims = _claims(request)
        if not _clinician(claims):
            return _login_form(svc, "/clinician", _clinician_refusal(claims))
        practitioner = claims.subject.removeprefix("Practitioner/")
        try:
            from medledger.node.notes import NoteStore, emergency_justification

            wallet = svc.node.practitioner_wallet(practitioner)
            # The reason code and note stay here for the DPO; the chain gets their hash.
            justification = emergency_justification(NoteStore(svc.node.config.home), reason, note)
            wallet.send("emergency.open", {"pid": patient, "reason_hash": justification})
        except (TxRejected, ValueError) as exc:
            text = exc.log if isinstance(exc, TxRejected) else str(exc)
            return page("Refused", svc.node.config.name, f'<p class="bad">{e(text)}</p>', 409)
        return RedirectResponse(f"/clinician?patient={patient}", status_code=303)

    # -- network explorer ---------------------------------------------------------------------
    @router.get("/explorer")
    def explorer(request: Request) -> Response:
        svc = _svc(request)
        engine = svc.node.engine
        top = engine.height()
        blocks = []
        app = svc.node.app
        if app is not None:
            for h in range(top, max(0, top - 20), -1):
                record = app.block(h)
                if record is None:
                    continue
                kinds = _kinds(record.txs)
                blocks.append(
                    [
                        f'<a href="/explorer/block/{h}">{h}</a>',
                        e(when(record.header.time_ms)),
                        e(len(record.txs)),
                        e(kinds),
                        f"<code>{e(record.header.app_hash.hex()[:16])}</code>",
                    ]
                )
        members = queries.members(engine)
        health = _hospitals_health(svc)
        validators = [
            [
                e(m["org"]),
                e(m["name"]),
                e(m["power"]),
                f"<code>{e(m['key'].hex()[:16])}</code>",
                health.get(m["org"], '<span class="muted">no address known</span>'),
            ]
            for m in members
        ]
        body = f"""<div class="card">Engine <b>{e(svc.node.config.engine)}</b>, height <b>{top}</b>.
<form class="inline" method="post" action="/explorer/verify"><button>Verify the chain</button></form></div>
<h2>Hospitals and validators</h2>{table(["hospital", "name", "voting power", "key", "health"], validators)}
<h2>Latest blocks</h2>{table(["height", "time", "txs", "kinds", "app hash"], blocks)}
<p class="muted">No personal data is on the chain: only pseudonyms, commitments and sealed
metadata, so this page shows tx kinds and signers, never bodies.</p>"""
        csrf = csrf_token(svc, _claims(request))
        return page("Network explorer", svc.node.config.name, body, csrf=csrf)

    @router.get("/explorer/block/{height}")
    def block(request: Request, height: int) -> Response:
        from medledger.ledger.tx import decode_tx

        svc = _svc(request)
        app = svc.node.app
        # Only heights this node committed are looked up (a huge one must not reach SQLite).
        known = app is not None and 0 <= height <= svc.node.engine.height()
        record = app.block(height) if known and app is not None else None
        if record is None:
            return page("No such block", svc.node.config.name, "<p>Not committed here.</p>", 404)
        rows = []
        for i, (raw, result) in enumerate(zip(record.txs, record.results, strict=True)):
            tx = decode_tx(raw)
            verdict = (
                '<span class="ok">ok</span>'
                if result.ok
                else f'<span class="bad">{e(result.code)} {e(result.log)}</span>'
            )
            rows.append(
                [
                    e(i),
                    f"<code>{e(tx.id.hex()[:16])}</code>",
                    e(tx.kind),
                    f"<code>{e(tx.signer.hex()[:16])}</code>",
                    e(tx.nonce),
                    verdict,
                ]
            )
        hd = record.header
        body = f"""<div class="card">Time {e(when(hd.time_ms))}<br>Hash <code>{e(record.hash.hex())}</code><br>
Previous <code>{e(hd.prev_hash.hex())}</code><br>Tx root <code>{e(hd.tx_root.hex())}</code><br>
App hash <code>{e(hd.app_hash.hex())}</code></div>
{table(["#", "tx id", "kind", "signer", "nonce", "result"], rows, "empty block")}"""
        return page(f"Block {height}", svc.node.config.name, body)

    @router.post("/explorer/verify")
    async def verify(request: Request) -> Response:
        svc = _svc(request)
        if _claims(request) is None:  # a replay from genesis is costly: signed-in users only
            return _login_form(svc, "/explorer")
        if not _VERIFYING.acquire(blocking=False):
            return page(
                "Verification",
                svc.node.config.name,
                "<p>A verification is already running; try again when it ends.</p>",
                429,
            )
        try:
            result = await anyio.to_thread.run_sync(_verify, svc)
        finally:
            _VERIFYING.release()
        ok, text = result
        body = (
            f'<p class="{"ok" if ok else "bad"}">{e(text)}</p><p><a href="/explorer">back</a></p>'
        )
        return page("Verification", svc.node.config.name, body, 200 if ok else 409)

    @router.get("/health")
    def health(request: Request) -> dict[str, object]:
        svc = _svc(request)
        info = svc.node.app.info() if svc.node.app is not None else None
        return {
            "org": svc.org,
            "engine": svc.node.config.engine,
            "height": svc.node.engine.height(),
            "app_hash": info.app_hash.hex() if info else "",
        }

    return router


def _on_behalf(svc: HospitalServices, claims: Claims, kind: str, body: dict[str, Any]) -> None:
    """The hospital signs for the patient through its portal (channel `portal`, no practitioner
    took it); the evidence is the patient's authenticated request (their token's claims and
    what they asked), whose hash goes on the chain. Only a custodian of the patient may: the
    contract refuses any other hospital (patients.acting_for_patient)."""
    evidence = hashlib.sha256(
        orjson.dumps({"token": claims.raw, "kind": kind, "body": body}, default=str)
    ).digest()
    svc.node.wallet.send(kind, {**body, "evidence_hash": evidence, "channel": "portal"})


def _act(
    svc: HospitalServices, claims: Claims, kind: str, body: dict[str, Any], anchor: str
) -> Response:
    from medledger.node.wallet import TxRejected

    refusal = _not_custodian(svc, claims)  # checked before signing anything
    if refusal is None:
        try:
            _on_behalf(svc, claims, kind, body)
        except TxRejected as exc:
            refusal = exc.log
    if refusal is not None:
        return page(
            "Refused",
            svc.node.config.name,
            f'<p class="bad">{e(refusal)}</p><p><a href="/portal{anchor}">back</a></p>',
            409,
        )
    return RedirectResponse(f"/portal{anchor}", status_code=303)


def _not_custodian(svc: HospitalServices, claims: Claims) -> str | None:
    """Why this hospital's portal may not act for the signed-in patient, if it may not: only a
    custodian of the patient acts in their name (the contract refuses anyone else too)."""
    held = svc.node.engine.query(
        "records/of_patient", {"pid": claims.patient, "custodian": svc.org}
    )
    if any(not entry["shredded"] for entry in held):
        return None
    return (
        f"not a custodian of this patient: {svc.org} holds none of your care records, so it "
        "cannot act in your name; ask a hospital that treats you"
    )


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
    return f'<br><span class="bad">{e(note)}</span>'


def _portal_sections(svc: HospitalServices, pid: str) -> str:
    """Consents (grant, revoke), studies (enrol, withdraw) and erasure, from the ledger."""
    engine = svc.node.engine
    consent_rows = [
        [
            e(c["id"]),
            e(c["grantee"]),
            e(", ".join(c["categories"])),
            e(c["purpose"]),
            e(when(c["start_ms"])) + (" → " + e(when(c["end_ms"])) if c["end_ms"] else ""),
            e(c["status"]) + _self_grant_note(c),
            f'<form class="inline" method="post" action="/portal/consent/{c["id"]}/revoke"><button>Revoke</button></form>'
            if c["status"] in ("active", "contested")
            else "",
        ]
        for c in queries.consent_list(engine, pid)
    ]
    requests = [
        [
            e(when(r["time"])),
            e(r["org"] + (f"/{r['practitioner']}" if r["practitioner"] else "")),
            e(", ".join(r["categories"])),
            e(r["purpose"]),
            "granted"
            if r["granted"]
            else (
                '<form class="inline" method="post" action="/portal/consent">'
                f'<input type="hidden" name="grantee" value="org:{e(r["org"])}">'
                f'<input type="hidden" name="categories" value="{e(",".join(r["categories"]))}">'
                f'<input type="hidden" name="purpose" value="{e(r["purpose"])}">'
                "<button>Grant</button></form>"
            ),
        ]
        for r in queries.consent_requests(engine, pid)
    ]
    mine = {r["study"]: r for r in queries.research_of_patient(engine, pid)}
    study_rows = []
    from medledger.node.notes import NoteStore, title_of_study

    notes = NoteStore(svc.node.config.home)  # titles of the studies this hospital sponsors
    for st in queries.studies(engine):
        enrolled = mine.get(st["id"], {}).get("status") == "enrolled"
        action = "withdraw" if enrolled else "enrol"
        title = title_of_study(notes, st)
        study_rows.append(
            [
                e(st["id"]),
                e(title) if title else f'<span class="muted">ethics {e(st["ethics_ref"])}</span>',
                e(", ".join(st["categories"])),
                "enrolled" if enrolled else "not enrolled",
                f'<form class="inline" method="post" action="/portal/study/{e(st["id"])}/{action}"><button>{action.capitalize()}</button></form>',
            ]
        )
    erasure = queries.erasure_status(engine, pid)
    waiting = queries.erasure_pending(engine, pid) if erasure is None else None
    if waiting is not None:
        erasure_html = (
            f"<p>Request {e(waiting['id'])}, filed in your name by {e(waiting['signed']['org'])}:"
            f" <b>pending</b> until {e(when(waiting['effective_ms']))}. Nothing is erased "
            "before then; if you did not ask for it, your own key or another hospital that "
            "treats you can cancel it.</p>"
        )
    elif erasure is None:
        hours = queries.policy_params(engine)["on_behalf_delay_ms"] // (3600 * 1000)
        erasure_html = f"""<form method="post" action="/portal/erasure"><p>You may ask every hospital to
erase your data. Care records under legal retention (20 years) are kept by the hospital that made
them; copies held elsewhere are erased. Asked here, the request takes effect after {hours} hours,
and the other hospitals that treat you are told.</p><button>Request erasure</button></form>"""
    else:
        erasure_html = f"<p>Request {e(erasure['id'])}: <b>{e(erasure['status'])}</b></p>" + table(
            ["hospital", "status", "reason"],
            [[e(o["holder"]), e(o["status"]), e(o["reason"])] for o in erasure["obligations"]],
        )
    options = "".join(
        f'<option value="org:{e(m["org"])}">{e(m["name"])}</option>'
        for m in queries.members(engine)
        if m["org"] != svc.org
    )
    return f"""
<h2 id="requests">Access requests</h2>{table(["when", "who", "data", "purpose", ""], requests, "no request")}
<h2 id="consents">My consents</h2>{table(["#", "who", "data", "purpose", "period", "status", ""], consent_rows, "no consent")}
<form method="post" action="/portal/consent"><b>Grant a consent:</b> <select name="grantee">{options}</select>
<input name="categories" value="*" size="30" title="comma-separated categories, or *">
<select name="purpose"><option>treatment</option><option>research</option></select>
<label>until <input name="end" type="date"></label><button>Grant</button></form>
<h2 id="studies">Research studies</h2>{table(["study", "title", "data", "me", ""], study_rows, "no study open")}
<h2 id="erasure">Erasure</h2>{erasure_html}
{_notices_html(queries.patient_notices(engine, pid))}"""


def _notices_html(notices: dict[str, Any]) -> str:
    """Who holds the patient's records since when, what hospitals signed in their name, and a
    pending key rebinding: a hospital cannot act for them unseen (contracts/patients.py)."""
    holders = table(
        ["hospital", "your records there since"],
        [[e(org), e(when(since))] for org, since in sorted(notices["custodians"].items())],
        "no hospital holds your records",
    )
    acts = table(
        ["when", "hospital", "what", "how", "taken by"],
        [
            [e(when(a["time"])), e(a["org"]), e(a["act"]), e(a["channel"]), e(a["taken_by"])]
            for a in notices["acts"]
        ],
        "no hospital acted in your name",
    )
    rebind = notices["rebind"]
    key_note = (
        f'<p class="bad">{e(rebind["org"])} asked to replace your key: it takes effect at '
        f"{e(when(rebind['effective_ms']))} unless your current key or another hospital that "
        "treats you cancels it.</p>"
        if rebind
        else ""
    )
    return f"""<h2 id="notices">Acts in my name</h2>{key_note}{acts}
<h3>Hospitals holding my records</h3>{holders}"""


def _hospitals_health(svc: HospitalServices) -> dict[str, str]:
    """Each hospital's node as its own /health reports it (height, app hash), or why not."""
    import httpx

    from medledger.node.config import hospital_homes, load_config

    out: dict[str, str] = {}
    try:
        homes = hospital_homes(svc.node.config.consortium_dir)
    except Exception:
        return out
    mine = svc.node.app.info() if svc.node.app is not None else None
    for home in homes:
        try:
            config = load_config(home)
            host, port = config.api.address
            if not port:
                continue
            data = httpx.get(f"http://{host}:{port}/health", timeout=0.5).json()
        except Exception as exc:
            out[home.name] = f'<span class="bad">unreachable ({e(type(exc).__name__)})</span>'
            continue
        same = mine is not None and data.get("height") == mine.height
        agree = same and data.get("app_hash") == mine.app_hash.hex()
        note = " · same app hash as here" if agree else ""
        out[str(data.get("org"))] = (
            f'<span class="ok">up</span>, height {e(data.get("height"))}{e(note)}'
        )
    return out


def _kinds(txs: list[bytes]) -> str:
    from collections import Counter

    from medledger.ledger.tx import decode_tx

    counts = Counter(decode_tx(t).kind for t in txs)
    return ", ".join(f"{k}×{n}" if n > 1 else k for k, n in sorted(counts.items()))


def _verify(svc: HospitalServices) -> tuple[bool, str]:
    from medledger.contracts import default_registry
    from medledger.ledger.replay import VerifyError, verify_history
    from medledger.ledger.store import Store

    app = svc.node.app
    if app is None:
        return False, "this node keeps no ledger replica"
    store = Store(app.store.path)  # a second connection: reads committed data only
    try:
        with store.snapshot():
            report = verify_history(store, app.genesis, default_registry())
    except VerifyError as exc:
        return False, f"verification failed at {exc}"
    finally:
        store.close()
    return True, (
        f"ok: replayed {report.height} blocks and {report.txs} txs from genesis; every "
        f"signature, nonce, link and app hash matches (app hash {report.app_hash.hex()[:16]}…)"
    )


def duplicate_exams(rows: list[dict[str, Any]], window_days: int = 42) -> list[str]:
    """Warn when the same exam (same LOINC or imaging code) was done at another hospital within
    the window: the clinician may not need to order it again."""
    from datetime import date

    by_code: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if (
            r["type"] in ("Observation", "ImagingStudy", "DiagnosticReport")
            and r["code"]
            and r["date"]
        ):
            by_code.setdefault(r["code"], []).append(r)
    warnings = []
    for code, items in sorted(by_code.items()):
        items.sort(key=lambda r: r["date"])
        for a, b in zip(items, items[1:], strict=False):
            if a["source"] == b["source"]:
                continue
            try:
                gap = abs(
                    (date.fromisoformat(b["date"][:10]) - date.fromisoformat(a["date"][:10])).days
                )
            except ValueError:
                continue
            if gap <= window_days:
                warnings.append(
                    f"{b['title'] or code}: done at {a['source']} on {a['date'][:10]} and at "
                    f"{b['source']} on {b['date'][:10]} ({gap} days apart)"
                )
    return warnings
