"""The FHIR R4 facade: metadata, read, search by patient, $everything, AuditEvent, Consent.

Writes are in `writes`, versions (vread, history) in `history`, `$summary` in `summary`; which
interaction each type offers is the one table of `interactions`.

Resources are served as the vault holds them (the bytes received, with the server's
`meta.versionId`/`lastUpdated` on a read, see `versions`); Bundles are assembled by
concatenating those bytes, never re-serialised through models. Every access, allowed or not,
is written on the chain before (remote) or as (local) the data is served.

Scopes decide first (`auth.require`): a resource type or category the token's scopes do not
reach is never served, not even inside `$everything`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from medledger.api import interactions, versions
from medledger.api import search as fhir_search
from medledger.api.audit import to_audit_event
from medledger.api.auth import authenticated, require, scope_permission
from medledger.api.interactions import (
    RECORD_TYPES,
    SEARCH_PARAMS,
    SYSTEM_INTERACTIONS,
    capability_resources,
)
from medledger.api.outcomes import FhirError, fhir_response
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims, outside_launch, patient_of
from medledger.contracts import queries
from medledger.contracts.consent import Grant

_PID = re.compile(r"^[0-9a-f]{64}$")
#: The types the generic search route serves: the patient's records (their table is
#: `interactions`), and the consents it lists among them.
SUPPORTED = ("Patient", *RECORD_TYPES, "Consent")


SEARCH_DOC = (
    "Searches are patient-scoped: a search names its patient (patient=, subject=Patient/...), "
    "or the token carries a patient launch context, or _id (any type) or identifier=system|value "
    "(Patient) pins it; otherwise it is refused with 400. A parameter not applied is left out "
    "of the self link and reported in an OperationOutcome entry (search.mode outcome), or "
    "refused with 400 under Prefer: handling=strict. Pages are frozen at the first one: "
    "next/previous links carry _snapshot (bound to the caller, kept 10 minutes) and _offset."
)


def services(request: Request) -> HospitalServices:
    svc: HospitalServices = request.app.state.services
    return svc


Svc = Annotated[HospitalServices, Depends(services)]


def capability_statement(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "software": {"name": "medledger", "version": "0.1.0"},
        "implementation": {"description": "medledger hospital node", "url": base},
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ]
                },
                "documentation": SEARCH_DOC,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "resource": [
                    entry
                    | (
                        fhir_search.capability(str(entry["type"]), SUPPORTED)
                        if entry["type"] not in SEARCH_PARAMS
                        else _fixed_capability(str(entry["type"]))
                    )
                    if interactions.offers(str(entry["type"]), "search-type")
                    else entry
                    for entry in capability_resources()
                ],
            }
        ],
    }


def _fixed_capability(resource_type: str) -> dict[str, Any]:
    """The searchParam list of a type searched by a fixed few parameters."""
    params = [
        {"name": name, "type": kind, **({"documentation": doc} if doc else {})}
        for name, kind, doc in SEARCH_PARAMS[resource_type]
    ]
    return {"searchParam": [*params, {"name": "_count", "type": "number"}]}


def _bundle(
    entries: list[tuple[str, bytes]],
    total: int,
    links: list[tuple[str, str]],
    outcome: list[tuple[str, bytes, str]],
) -> bytes:
    """A searchset Bundle around stored resource bytes, without re-serialising them."""
    matches = [(url, raw, "match") for url, raw in entries]
    return fhir_search.bundle(total, links, matches + outcome)


def _fixed_params(
    request: Request, accepted: tuple[str, ...]
) -> tuple[str, list[tuple[str, bytes, str]]]:
    """For the searches that take a fixed few parameters (AuditEvent, Consent): the self link
    of those applied, and an outcome entry naming the others (400 under handling=strict)."""
    items = request.query_params.multi_items()
    query, _ = fhir_search.parse_limited(
        "", items, strict=_strict(request), keep=accepted, why="not supported by this search"
    )
    applied = [(n, v) for n, v in items if n in accepted or n == "_count"]
    url = str(request.url.replace(query=urlencode(applied)))
    notes = fhir_search.not_applied_notes(query)
    return url, [fhir_search.outcome_entry(notes)] if notes else []


class LocalRecords:
    """This hospital's latest record versions for a patient, in a stable order."""

    def __init__(self, svc: HospitalServices) -> None:
        self.svc = svc

    def pid_of(self, patient: str) -> str:
        from medledger.vault.errors import RecordNotFound

        ref = patient.removeprefix("Patient/")
        if _PID.match(ref):
            return ref
        try:
            info = self.svc.vault.info(ref)
        except RecordNotFound:
            raise FhirError(404, "not-found", f"Patient/{ref} is not known here") from None
        if info.resource_type != "Patient":
            raise FhirError(404, "not-found", f"Patient/{ref} is not known here")
        return info.pid

    def latest(self, pid: str, types: tuple[str, ...] | None = None) -> list[Any]:
        latest: dict[str, Any] = {}
        for info in self.svc.vault.records_of(pid):
            if types is not None and info.resource_type not in types:
                continue
            known = latest.get(info.rid)
            if known is None or info.version > known.version:
                latest[info.rid] = info
        return sorted(latest.values(), key=lambda i: (i.resource_type, i.rid))


def _meta_of(svc: HospitalServices, info: Any) -> dict[str, Any]:
    return svc.record_meta(info)


def _page(
    request: Request, self_link: str, offset: int, count: int, total: int
) -> list[tuple[str, str]]:
    url = request.url
    links = [("self", self_link)]
    if offset + count < total:
        links.append(("next", str(url.include_query_params(_offset=offset + count, _count=count))))
    return links


def make_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    snapshots = fhir_search.Snapshots()  # this app's frozen search results (page links)

    @router.get("/metadata")
    def metadata(request: Request) -> Response:
        return fhir_response(orjson.dumps(capability_statement(str(request.base_url) + "fhir")))

    @router.get("/AuditEvent")
    def audit_events(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        patient: str,
        request: Request,
        count: Annotated[int, Query(alias="_count", ge=1, le=500)] = 50,
        offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    ) -> Response:
        require(claims, "AuditEvent", "search")
        pid = LocalRecords(svc).pid_of(patient)
        _gate_patient_data(svc, claims, pid, "AuditEvent", "search")
        trail = queries.access_of_patient(svc.node.engine, pid)
        events = [orjson.dumps(to_audit_event(e, f"Patient/{patient}")) for e in trail]
        page = events[offset : offset + count]
        entries = [(f"{request.base_url}fhir/AuditEvent/{i}", raw) for i, raw in enumerate(page)]
        self_link, outcome = _fixed_params(request, ("patient", "_offset"))
        links = _page(request, self_link, offset, count, len(events))
        return fhir_response(_bundle(entries, len(events), links, outcome))

    # -- Consent: the consent contract, seen as FHIR ----------------------------------------
    @router.post("/Consent")
    async def create_consent(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], request: Request
    ) -> Response:
        import anyio

        from medledger.interop.fhir_consent import PID_SYSTEM, FhirConsentError, from_fhir, to_fhir

        require(claims, "Consent", "create")
        raw = await request.body()
        try:
            resource = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FhirError(400, "invalid", f"body is not JSON: {exc}") from None
        records = LocalRecords(svc)
        for field in ("patient", "subject"):  # Patient/<id> here becomes the patient's pid
            ref = resource.get(field) if isinstance(resource, dict) else None
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                pid = records.pid_of(ref["reference"])
                resource[field] = {"identifier": {"system": PID_SYSTEM, "value": pid}}
        try:
            msg = Grant(**from_fhir(resource))
        except FhirConsentError as exc:
            raise FhirError(422, "invalid", str(exc)) from None
        if outside_launch(claims, msg.pid):
            raise FhirError(403, "forbidden", "a token only consents for its own patient")
        if patient_of(claims) is not None:
            # The patient asked for it themself, authenticated here: no practitioner took it.
            msg.channel = "portal"
        else:
            # Checked before anything is signed: who took the request, on the chain, now.
            msg.taken_by = _request_taker(svc, claims)
        # The hospital records it on the patient's behalf; the evidence is this request.
        msg.evidence_hash = hashlib.sha256(orjson.dumps(claims.raw) + raw).digest()
        from medledger.ledger.errors import Code
        from medledger.node.wallet import TxRejected

        try:
            committed = await anyio.to_thread.run_sync(lambda: svc.node.wallet.send_message(msg))
        except TxRejected as exc:
            if exc.code == Code.UNAUTHORIZED:  # e.g. not a custodian of this patient
                raise FhirError(403, "forbidden", exc.log) from None
            raise FhirError(422, "business-rule", exc.log) from None
        cid = int(
            next(e.get("id") for e in committed.result.events if e.type == "consent.granted") or 0
        )
        consent = queries.consent_get(svc.node.engine, cid)
        assert consent is not None  # committed just above
        return fhir_response(
            orjson.dumps(to_fhir(consent, "R4")),
            201,
            {"Location": f"{request.base_url}fhir/Consent/medledger-consent-{cid}"},
        )

    @router.get("/Consent/{fid}")
    def read_consent(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], fid: str, request: Request
    ) -> Response:
        from medledger.interop.fhir_consent import to_fhir

        require(claims, "Consent", "read")
        view = fhir_search.read_view("Consent", request.query_params.multi_items())
        number = fid.removeprefix("medledger-consent-")
        if not number.isdigit():
            raise FhirError(404, "not-found", f"Consent/{fid} is not known here")
        consent = queries.consent_get(svc.node.engine, int(number))
        if consent is None or outside_launch(claims, consent["pid"]):
            raise FhirError(404, "not-found", f"Consent/{fid} is not known here")
        _gate_patient_data(svc, claims, consent["pid"], "Consent", "read")
        return fhir_response(viewed(orjson.dumps(to_fhir(consent, "R4")), view))

    @router.get("/Consent")
    def search_consents(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], patient: str, request: Request
    ) -> Response:
        from medledger.interop.fhir_consent import to_fhir

        require(claims, "Consent", "search")
        pid = LocalRecords(svc).pid_of(patient)
        _gate_patient_data(svc, claims, pid, "Consent", "search")
        found = queries.consent_list(svc.node.engine, pid)
        entries = [
            (
                f"{request.base_url}fhir/Consent/medledger-consent-{c['id']}",
                orjson.dumps(to_fhir(c, "R4")),
            )
            for c in found
        ]
        self_link, outcome = _fixed_params(request, ("patient",))
        return fhir_response(_bundle(entries, len(entries), [("self", self_link)], outcome))

    @router.get("/Patient/{rid}/$everything")
    def everything(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], rid: str, request: Request
    ) -> Response:
        require(claims, "Patient", "read")
        path = f"Patient/{rid}/$everything"
        if "_snapshot" in request.query_params:
            return _serve_snapshot(svc, claims, request, snapshots, path)
        query, _ = fhir_search.parse_limited(
            "Patient",
            request.query_params.multi_items(),
            strict=_strict(request),
            keep=(),
            why="$everything takes only _count here",
        )
        if not any(name == "_count" for name, _ in query.applied):
            query.count = 100
        records = LocalRecords(svc)
        pid = _within_launch(claims, records.pid_of(rid))
        infos = _in_scope(svc, claims, records.latest(pid), "read")
        return _serve_search(svc, claims, request, snapshots, query, infos, path, "export")

    @router.get("/{resource_type}/{rid}")
    def read(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        rid: str,
        request: Request,
    ) -> Response:
        interactions.check(resource_type, "read")
        require(claims, resource_type, "read")
        view = fhir_search.read_view(resource_type, request.query_params.multi_items())
        info = stored(svc, resource_type, rid)
        if info.pid == svc.vault.hospital_pid:
            # The hospital's own (a Practitioner, a Medication...): no patient's, so the scope
            # decides alone, and nothing about a patient is decided or logged.
            body, headers, _ = versions.served(svc.vault, svc.node.engine, rid, info.version)
            return fhir_response(viewed(body, view), headers=headers)
        body, headers = serve_version(svc, claims, info)
        if resource_type == "Bundle":  # a document: whole, to who may see all of it
            _whole_document(svc, claims, info.pid, body)
        return fhir_response(viewed(body, view), headers=headers)

    @router.get("/{resource_type}")
    def search(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        request: Request,
    ) -> Response:
        _supported(resource_type)
        require(claims, resource_type, "search")
        if "_snapshot" in request.query_params:
            return _serve_snapshot(svc, claims, request, snapshots, resource_type)
        return run_search(svc, claims, request, resource_type, request.query_params.multi_items())

    @router.post("/{resource_type}/_search")
    async def search_by_post(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        request: Request,
    ) -> Response:
        """R4's search by POST: the parameters in a form body (and the URL's query), so that
        identifiers stay out of URLs and their logs; then exactly the GET search."""
        import anyio

        interactions.check(resource_type, "search-type")
        if resource_type not in SUPPORTED or resource_type in _SEARCHED_BY_OWN_ROUTE:
            raise FhirError(
                405, "not-supported", f"search {resource_type} by GET (no search by POST)"
            )
        require(claims, resource_type, "search")
        body = await request.body()  # bounded by app.BodyLimit
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and media != "application/x-www-form-urlencoded":
            raise FhirError(
                415,
                "not-supported",
                f"Content-Type {media or 'missing'!r}: a search by POST is a form "
                "(application/x-www-form-urlencoded)",
            )
        try:
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise FhirError(400, "invalid", "the form body is not UTF-8") from None
        items = [*request.query_params.multi_items(), *form]
        return await anyio.to_thread.run_sync(
            lambda: run_search(svc, claims, request, resource_type, items)
        )

    def run_search(
        svc: HospitalServices,
        claims: Claims,
        request: Request,
        resource_type: str,
        items: list[tuple[str, str]],
    ) -> Response:
        query = fhir_search.parse(
            resource_type, items, strict=_strict(request), base=_base(request), served=SUPPORTED
        )
        records = LocalRecords(svc)
        pids = _search_pids(svc, claims, records, query)
        infos = [i for pid in pids for i in records.latest(pid, (resource_type,))]
        infos = _in_scope(svc, claims, infos, "search")
        return _serve_search(svc, claims, request, snapshots, query, infos, resource_type, "search")

    return router


#: Types whose GET search is a route of its own (the chain's consents, the audit trail,
#: studies), not `run_search`: searched by GET only.
_SEARCHED_BY_OWN_ROUTE = frozenset({"Consent", "AuditEvent", "ResearchStudy", "ResearchSubject"})


def _within_launch(claims: Claims, pid: str) -> str:
    """The pid, unless the token's launch context limits it to another patient (403)."""
    if outside_launch(claims, pid):
        raise FhirError(403, "forbidden", "the token's launch context is another patient")
    return pid


def stored(svc: HospitalServices, resource_type: str, rid: str, version: int | None = None) -> Any:
    """The vault's info of `resource_type/rid` (a version of it): 404 if unknown here or of
    another type, 410 if its patient was erased."""
    from medledger.vault.errors import PatientErased, RecordNotFound

    what = f"{resource_type}/{rid}" + ("" if version is None else f"/_history/{version}")
    try:
        info = svc.vault.info(rid, version)
    except RecordNotFound:
        raise FhirError(404, "not-found", f"{what} is not known here") from None
    except PatientErased:
        raise FhirError(410, "deleted", f"{what} was erased (its patient was erased)") from None
    if info.resource_type != resource_type:
        raise FhirError(404, "not-found", f"{what} is not known here")
    return info


def viewed(body: bytes, view: fhir_search.Query | None) -> bytes:
    """A read's body as its `_elements`/`_summary` asked (`search.read_view`)."""
    return body if view is None else fhir_search.subset(body, view)


def serve_version(svc: HospitalServices, claims: Claims, info: Any) -> tuple[bytes, dict[str, str]]:
    """One record version as a read serves it: the scopes' categories, then decided and
    logged on the chain, then its bytes with the server's meta (and ETag/Last-Modified)."""
    what = f"{info.resource_type}/{info.rid}"
    if not _in_scope(svc, claims, [info], "read"):
        raise FhirError(403, "forbidden", f"{what} is outside the categories of your scopes")
    meta = _meta_of(svc, info)
    audited = svc.decide_and_audit(claims, info.pid, meta, "treatment", "read", [info.rid])
    durable = svc.log_later(audited.entries, wait=False)
    if not audited.decision.allowed:
        durable()
        raise FhirError(403, "forbidden", f"access denied: {audited.decision.reason}")
    body, headers, _ = versions.served(svc.vault, svc.node.engine, info.rid, info.version)
    durable()  # the entry on disk before the record leaves; its read overlapped the fsync
    return body, headers


def _request_taker(svc: HospitalServices, claims: Claims) -> str:
    """The practitioner behind this token, if they may take a patient's request (else 403).

    Read on the chain at this moment: a revoked practitioner's unexpired token is refused, as
    is a role the consent rules do not allow (patients.REQUEST_ROLES).
    """
    from medledger.contracts.patients import REQUEST_ROLES

    kind, _, ident = claims.subject.partition("/")
    if kind != "Practitioner":
        raise FhirError(
            403,
            "forbidden",
            f"{claims.subject}: a consent in a patient's name is taken by a practitioner of "
            f"{svc.org}, or asked by the patient themself",
        )
    key = svc.practitioner_key(claims)
    actor = None if key is None else queries.actor_of_key(svc.node.engine, key)
    if actor is None or actor["org"] != svc.org or actor["practitioner"] != ident:
        raise FhirError(403, "forbidden", f"{claims.subject} is not a practitioner of {svc.org}")
    if not actor["active"]:
        raise FhirError(403, "forbidden", f"practitioner {svc.org}/{ident} is revoked")
    if not REQUEST_ROLES.intersection(actor["roles"]):
        raise FhirError(
            403,
            "forbidden",
            f"practitioner {svc.org}/{ident} lacks a role allowed to take a patient's request "
            f"({', '.join(sorted(REQUEST_ROLES))})",
        )
    return ident


def _gate_patient_data(
    svc: HospitalServices, claims: Claims, pid: str, kind: str, action: str
) -> None:
    """Consents and the access trail are the patient's data too: the patient themself, or
    someone `authorize` allows at this hospital, and the access is recorded either way."""
    meta = {"custodian": svc.org, "category": "administrative", "type": kind}
    # The patient themself is allowed by `decide` (`patient_of`).
    audited = svc.decide_and_audit(claims, pid, meta, "treatment", action, [])
    svc.log(audited.entries, wait=False)
    if not audited.decision.allowed:
        raise FhirError(403, "forbidden", f"access denied: {audited.decision.reason}")


def _in_scope(
    svc: HospitalServices, claims: Claims, infos: list[Any], interaction: str
) -> list[Any]:
    """The records the token's scopes reach: their type, and a category restriction if any
    (matched on the resource's own category codings, as a FHIR search would)."""
    kept = []
    for info in infos:
        allowed = scope_permission(claims, info.resource_type, interaction)
        if not allowed or (allowed.levels == {"patient"} and claims.patient is None):
            continue
        if allowed.categories is not None and not allowed.covers(
            orjson.loads(svc.vault.get(info.rid, info.version))
        ):
            continue
        kept.append(info)
    return kept


def _whole_document(svc: HospitalServices, claims: Claims, pid: str, data: bytes) -> None:
    """A document is served whole only to a caller allowed every category of its entries."""
    from medledger.interop.metadata import document_categories

    for category in document_categories(orjson.loads(data)):
        meta = {"custodian": svc.org, "category": category, "type": "Bundle"}
        decision = svc.decide(claims, pid, meta, "treatment")
        if not decision.allowed:
            raise FhirError(
                403,
                "forbidden",
                f"the document holds {category} records, which you may not see here: "
                f"{decision.reason}",
            )


def _supported(resource_type: str) -> None:
    if resource_type not in SUPPORTED:
        raise FhirError(404, "not-supported", f"resource type {resource_type} is not served here")


def _base(request: Request) -> str:
    return f"{request.base_url}fhir"


def _strict(request: Request) -> bool:
    return fhir_search.strict_handling(request.headers.get("prefer", ""))


def _search_pids(
    svc: HospitalServices, claims: Claims, records: LocalRecords, query: fhir_search.Query
) -> list[str]:
    """The patients a search is about (each within the token's launch context, else 403).

    `patient` / `subject` name them (Patient/<id>, <id>, its pid, or this server's absolute
    URL); they are applied by searching those patients' records only. Else `_id` pins the
    records it names, `identifier=system|value` a Patient (its pid is the pseudonym of that
    identifier), and a token's launch context its patient. Nothing else may search: 400."""
    from medledger.interop.ins import InvalidINS
    from medledger.interop.pseudonym import pseudonymise
    from medledger.vault.errors import PatientErased, RecordNotFound

    if query.resource_type != "Patient":
        pins = [
            f for f in query.filters_named(*fhir_search.PATIENT_PARAMS) if f.modifier != "missing"
        ]
        pids: set[str] | None = None
        for pin in pins:
            found = set()
            for value in pin.values:
                if value.ref_url is not None or (value.ref_type or "Patient") != "Patient":
                    raise FhirError(
                        400,
                        "not-supported",
                        f"{pin.name}: {value.raw!r} is not a Patient of this server; searches "
                        "here are by a patient of this hospital",
                        pin.name,
                    )
                found.add(_within_launch(claims, records.pid_of(value.code)))
            pids = found if pids is None else pids & found
        query.filters = [f for f in query.filters if f not in pins]  # applied as the pids
        if pids is not None:
            return sorted(pids)
    pinned: set[str] = set()
    for value in (v for f in query.filters_named("_id") for v in f.values):
        try:
            pinned.add(svc.vault.info(value.code).pid)
        except (RecordNotFound, PatientErased, ValueError):
            continue  # matches nothing
    if query.resource_type == "Patient":
        for ident in query.filters_named("identifier"):
            for value in ident.values:
                if ident.modifier or not value.system or not value.code:
                    continue  # no pseudonym without both: matched within the other pins
                try:
                    pinned.add(pseudonymise(svc.ingestor.pseudonym_key, value.system, value.code))
                except InvalidINS as exc:
                    why = f"identifier: {value.code!r} is not a valid INS ({exc})"
                    raise FhirError(400, "invalid", why, "identifier") from None
                except ValueError as exc:
                    raise FhirError(400, "invalid", f"identifier: {exc}", "identifier") from None
    pins_given = query.filters_named("_id") or (
        query.resource_type == "Patient" and query.filters_named("identifier") and pinned
    )
    if pins_given:
        return sorted(_within_launch(claims, pid) for pid in pinned)
    if claims.patient is not None:
        return [claims.patient]
    how = "patient=, subject=Patient/<id>, _id=" + (
        " or identifier=system|value" if query.resource_type == "Patient" else ""
    )
    ignored = "; ".join(f"{name}: {why}" for name, why in query.not_applied)
    raise FhirError(
        400,
        "required",
        f"a {query.resource_type} search is about one patient: give {how}, or use a token with "
        "a patient launch context" + (f" (not applied: {ignored})" if ignored else ""),
        "patient",
    )


class _Decider:
    """`svc.decide` for each record of one request, asked once per distinct question (the
    patient, custodian, type and category are all `authorize` reads of a record)."""

    def __init__(self, svc: HospitalServices, claims: Claims) -> None:
        self.svc = svc
        self.claims = claims
        self.memo: dict[tuple[str, ...], Any] = {}

    def __call__(self, info: Any) -> Any:
        meta = _meta_of(self.svc, info)
        key = (info.pid, str(meta["custodian"]), str(meta["type"]), str(meta["category"]))
        if key not in self.memo:
            self.memo[key] = self.svc.decide(self.claims, info.pid, meta, "treatment")
        return self.memo[key]


class _Trail:
    """The access entries of one request: every decision, grouped as the chain records them
    (one entry per patient and basis, or patient and reason), written once at the end."""

    def __init__(self, svc: HospitalServices, claims: Claims, action: str) -> None:
        self.svc = svc
        self.claims = claims
        self.action = action
        self.allowed: dict[tuple[str, str], list[str]] = {}
        self.denied: dict[tuple[str, str], list[str]] = {}

    def add(self, info: Any, decision: Any) -> None:
        if decision.allowed:
            self.allowed.setdefault((info.pid, decision.basis), []).append(info.rid)
        else:
            self.denied.setdefault((info.pid, decision.reason), []).append(info.rid)

    def write(self) -> None:
        from medledger.contracts.authorize import Decision

        for (pid, reason), rids in sorted(self.denied.items()):
            self.svc.record_access(
                self.claims,
                pid,
                self.action,
                "treatment",
                Decision(False, "", reason),
                rids,
                wait=False,
            )
        for (pid, basis), rids in sorted(self.allowed.items()):
            self.svc.record_access(
                self.claims,
                pid,
                self.action,
                "treatment",
                Decision(True, basis, ""),
                rids,
                wait=False,
            )


class _Loaded:
    """The decrypted JSON of the records one request reads (each decrypted once), and their
    commit times when `_lastUpdated` is asked (from the chain's record index)."""

    def __init__(self, svc: HospitalServices, base: str, times: bool) -> None:
        self.svc = svc
        self.base = base
        self.times = times
        self.docs: dict[tuple[str, int], dict[str, Any]] = {}
        self.index: dict[str, dict[str, Any]] = {}

    def doc(self, info: Any) -> dict[str, Any]:
        key = (info.rid, info.version)
        if key not in self.docs:
            self.docs[key] = orjson.loads(self.svc.vault.get(info.rid, info.version))
        return self.docs[key]

    def context(self, info: Any) -> fhir_search.MatchContext:
        return fhir_search.MatchContext(self.base, self._committed(info) if self.times else None)

    def _committed(self, info: Any) -> Any:
        from datetime import UTC, datetime

        if info.pid not in self.index:
            rows = queries.records_of_patient(self.svc.node.engine, info.pid)
            self.index[info.pid] = {str(r["rid"]): r for r in rows}
        row = self.index[info.pid].get(info.rid)
        if row is None or row.get("version") != info.version:
            row = next(
                (
                    v
                    for v in queries.record_versions(self.svc.node.engine, info.rid)
                    if v.get("version") == info.version
                ),
                None,
            )
        if row is None:
            return None
        return datetime.fromtimestamp(int(row["time"]) / 1000, UTC)


def _serve_search(
    svc: HospitalServices,
    claims: Claims,
    request: Request,
    snapshots: fhir_search.Snapshots,
    query: fhir_search.Query,
    infos: list[Any],
    path: str,
    action: str,
) -> Response:
    """The first page of a search: match, sort, decide each match (denials on the chain),
    freeze the allowed ones in a snapshot when they need more than one page, serve."""
    base = _base(request)
    times = any(f.param_name == "_lastUpdated" for f in query.filters) or any(
        name == "_lastUpdated" for name, _ in query.sort
    )
    loaded = _Loaded(svc, base, times)
    matched = [
        info
        for info in infos
        if all(f.matches(loaded.doc(info), loaded.context(info)) for f in query.filters)
    ]
    if query.sort:
        matched = fhir_search.sort_resources(matched, query.sort, loaded.doc, loaded.context)
    decide = _Decider(svc, claims)
    trail = _Trail(svc, claims, action)
    allowed = []
    for info in matched:
        decision = decide(info)
        if decision.allowed:
            allowed.append(info)
        else:
            trail.add(info, decision)
    if matched and not allowed:
        trail.write()  # every refusal is on the chain too
        raise FhirError(403, "forbidden", f"access denied: {min(r for _, r in trail.denied)}")
    items = [(i.rid, i.version) for i in allowed]
    self_link = f"{base}/{path}" + (f"?{query.self_query()}" if query.applied else "")
    if query.summary_count:
        for info in allowed:  # the count tells of these records: on their trail too
            trail.add(info, decide(info))
        trail.write()
        notes = fhir_search.not_applied_notes(query)
        outcome = [fhir_search.outcome_entry(notes)] if notes else []
        return fhir_response(fhir_search.bundle(len(items), [("self", self_link)], outcome))
    token = None
    if len(items) > query.count:
        owner = (claims.issuer, claims.subject, claims.patient)
        token = snapshots.put(owner, path, action, items, query).token
    page = _Page(svc, claims, base, path, query, items, token, decide, trail, loaded)
    return page.serve(0, query.count, self_link, fhir_search.not_applied_notes(query))


def _serve_snapshot(
    svc: HospitalServices,
    claims: Claims,
    request: Request,
    snapshots: fhir_search.Snapshots,
    path: str,
) -> Response:
    """A page link: the same frozen result, each of its records decided again as served."""
    asked, kept = fhir_search.parse_limited(
        "",
        request.query_params.multi_items(),
        strict=_strict(request),
        keep=("_snapshot", "_offset"),
        why="a page link takes only _snapshot, _offset and _count",
    )
    offset = kept.get("_offset", "0")
    if not offset.isdigit():
        raise FhirError(400, "invalid", f"_offset: {offset!r} is not a number", "_offset")
    snap = snapshots.get(kept["_snapshot"], (claims.issuer, claims.subject, claims.patient))
    if snap.path != path:
        raise FhirError(
            404, "not-found", "no search result of yours has this _snapshot here", "_snapshot"
        )
    count = asked.count if asked.applied else snap.query.count
    count = max(count, 1)
    base = _base(request)
    decide = _Decider(svc, claims)
    trail = _Trail(svc, claims, snap.action)
    loaded = _Loaded(svc, base, False)
    page = _Page(
        svc, claims, base, path, snap.query, list(snap.items), snap.token, decide, trail, loaded
    )
    self_link = page.link(int(offset), count)
    notes = fhir_search.not_applied_notes(snap.query) + fhir_search.not_applied_notes(asked)
    return page.serve(int(offset), count, self_link, notes)


class _Page:
    """Serves one page of a frozen result: its matches at their frozen versions, what
    `_include`/`_revinclude` bring, the links, and an OperationOutcome entry for anything
    not applied or left out."""

    def __init__(
        self,
        svc: HospitalServices,
        claims: Claims,
        base: str,
        path: str,
        query: fhir_search.Query,
        items: list[tuple[str, int]],
        token: str | None,
        decide: _Decider,
        trail: _Trail,
        loaded: _Loaded,
    ) -> None:
        self.svc = svc
        self.claims = claims
        self.base = base
        self.path = path
        self.query = query
        self.items = items
        self.token = token
        self.decide = decide
        self.trail = trail
        self.loaded = loaded

    def link(self, offset: int, count: int) -> str:
        return f"{self.base}/{self.path}?_snapshot={self.token}&_offset={offset}&_count={count}"

    def serve(
        self, offset: int, count: int, self_link: str, notes: list[tuple[str, str, str]]
    ) -> Response:
        from medledger.vault.errors import PatientErased, RecordNotFound

        served: list[Any] = []
        entries: list[tuple[str, bytes, str]] = []
        gone = refused = 0
        for rid, version in self.items[offset : offset + count]:
            try:
                info = self.svc.vault.info(rid, version)
                raw = self.svc.vault.get(rid, version)
            except (RecordNotFound, PatientErased):
                gone += 1
                continue
            decision = self.decide(info)
            self.trail.add(info, decision)
            if not decision.allowed:
                refused += 1
                continue
            served.append(info)
            body = fhir_search.subset(raw, self.query) if self.query.subsets() else raw
            entries.append((f"{self.base}/{info.resource_type}/{rid}", body, "match"))
        if gone:
            notes.append(("information", "deleted", f"{gone} matches were erased since page 1"))
        if refused:
            notes.append(
                ("information", "forbidden", f"{refused} matches are no longer allowed to you")
            )
        if self.query.includes:
            entries += self._included(served, notes)
        self.trail.write()
        links = [("self", self_link)]
        if self.token is not None:
            links.append(("first", self.link(0, count)))
            if offset > 0:
                links.append(("previous", self.link(max(0, offset - count), count)))
            if offset + count < len(self.items):
                links.append(("next", self.link(offset + count, count)))
        if notes:
            entries.append(fhir_search.outcome_entry(notes))
        return fhir_response(fhir_search.bundle(len(self.items), links, entries))

    def _included(self, served: list[Any], notes: list[tuple[str, str, str]]) -> list[Any]:
        """The resources `_include` / `_revinclude` name for this page's matches, each in the
        token's scopes and decided and logged like a match."""
        from medledger.vault.errors import PatientErased, RecordNotFound

        seen = {info.rid for info in served}
        found: list[Any] = []
        records = LocalRecords(self.svc)
        for include in self.query.includes:
            if include.reverse:
                for pid in sorted({info.pid for info in served}):
                    for other in records.latest(pid, (include.source,)):
                        doc = self.loaded.doc(other)
                        if any(
                            fhir_search.points_at(doc, include, i.resource_type, i.rid, self.base)
                            for i in served
                        ):
                            found.append(other)
                continue
            for info in served:
                for kind, ident in fhir_search.references(
                    self.loaded.doc(info), include, self.base
                ):
                    try:
                        target = self.svc.vault.info(ident)
                    except (RecordNotFound, PatientErased, ValueError):
                        continue
                    if target.resource_type == kind and kind in self.query.served:
                        found.append(target)
        unique = []
        for info in found:
            if info.rid not in seen:
                seen.add(info.rid)
                unique.append(info)
        if len(unique) > fhir_search.MAX_INCLUDED:
            notes.append(
                (
                    "warning",
                    "too-costly",
                    f"{len(unique) - fhir_search.MAX_INCLUDED} included resources left out "
                    f"(at most {fhir_search.MAX_INCLUDED} a page): ask smaller pages",
                )
            )
            unique = unique[: fhir_search.MAX_INCLUDED]
        in_scope = _in_scope(self.svc, self.claims, unique, "read")
        if len(in_scope) < len(unique):
            notes.append(
                (
                    "information",
                    "suppressed",
                    f"{len(unique) - len(in_scope)} included resources are outside your scopes",
                )
            )
        entries = []
        refused = 0
        for info in in_scope:
            decision = self.decide(info)
            self.trail.add(info, decision)
            if not decision.allowed:
                refused += 1
                continue
            raw = self.svc.vault.get(info.rid, info.version)
            entries.append((f"{self.base}/{info.resource_type}/{info.rid}", raw, "include"))
        if refused:
            notes.append(
                ("information", "forbidden", f"{refused} included resources are not allowed to you")
            )
        return entries
