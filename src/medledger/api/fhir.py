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

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from medledger.api import interactions, versions
from medledger.api.audit import to_audit_event
from medledger.api.auth import authenticated, require, scope_permission
from medledger.api.interactions import SYSTEM_INTERACTIONS, capability_resources
from medledger.api.outcomes import FhirError, fhir_response
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims, outside_launch, patient_of
from medledger.contracts import queries
from medledger.contracts.consent import Grant

_PID = re.compile(r"^[0-9a-f]{64}$")
PATIENT_COMPARTMENT = (
    "AllergyIntolerance",
    "Condition",
    "Consent",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "ImagingStudy",
    "Immunization",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Procedure",
)
SUPPORTED = ("Patient", *PATIENT_COMPARTMENT)


def services(request: Request) -> HospitalServices:
    svc: HospitalServices = request.app.state.services
    return svc


Svc = Annotated[HospitalServices, Depends(services)]


def capability_statement(base: str) -> dict[str, Any]:
    search = [
        {"name": "patient", "type": "reference"},
        {"name": "_count", "type": "number"},
    ]
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
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "resource": [
                    entry
                    | (
                        {"searchParam": search if entry["type"] != "AuditEvent" else search[:1]}
                        if interactions.offers(str(entry["type"]), "search-type")
                        else {}
                    )
                    for entry in capability_resources()
                ],
            }
        ],
    }


def _bundle(entries: list[tuple[str, bytes]], total: int, links: list[tuple[str, str]]) -> bytes:
    """A searchset Bundle around stored resource bytes, without re-serialising them."""
    head = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": r, "url": u} for r, u in links],
        }
    )
    items = b",".join(
        b'{"fullUrl":' + orjson.dumps(url) + b',"resource":' + raw + b',"search":{"mode":"match"}}'
        for url, raw in entries
    )
    return head[:-1] + b',"entry":[' + items + b"]}"


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


def _page(request: Request, offset: int, count: int, total: int) -> list[tuple[str, str]]:
    url = request.url
    links = [("self", str(url))]
    if offset + count < total:
        links.append(("next", str(url.include_query_params(_offset=offset + count, _count=count))))
    return links


def make_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")

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
        return fhir_response(
            _bundle(entries, len(events), _page(request, offset, count, len(events)))
        )

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
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], fid: str
    ) -> Response:
        from medledger.interop.fhir_consent import to_fhir

        require(claims, "Consent", "read")
        number = fid.removeprefix("medledger-consent-")
        if not number.isdigit():
            raise FhirError(404, "not-found", f"Consent/{fid} is not known here")
        consent = queries.consent_get(svc.node.engine, int(number))
        if consent is None or outside_launch(claims, consent["pid"]):
            raise FhirError(404, "not-found", f"Consent/{fid} is not known here")
        _gate_patient_data(svc, claims, consent["pid"], "Consent", "read")
        return fhir_response(orjson.dumps(to_fhir(consent, "R4")))

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
        return fhir_response(_bundle(entries, len(entries), [("self", str(request.url))]))

    @router.get("/Patient/{rid}/$everything")
    def everything(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        rid: str,
        request: Request,
        count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    ) -> Response:
        require(claims, "Patient", "read")
        records = LocalRecords(svc)
        pid = _within_launch(claims, records.pid_of(rid))
        infos = _in_scope(svc, claims, records.latest(pid), "read")
        return _serve_search(svc, claims, request, pid, infos, offset, count, "export")

    @router.get("/{resource_type}/{rid}")
    def read(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], resource_type: str, rid: str
    ) -> Response:
        interactions.check(resource_type, "read")
        require(claims, resource_type, "read")
        info = stored(svc, resource_type, rid)
        body, headers = serve_version(svc, claims, info)
        return fhir_response(body, headers=headers)

    @router.get("/{resource_type}")
    def search(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        request: Request,
        patient: str | None = None,
        count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    ) -> Response:
        _supported(resource_type)
        require(claims, resource_type, "search")
        if patient is None:
            patient = claims.patient
        if patient is None:
            raise FhirError(400, "required", "search needs a patient parameter", "patient")
        records = LocalRecords(svc)
        pid = _within_launch(claims, records.pid_of(patient))
        infos = _in_scope(svc, claims, records.latest(pid, (resource_type,)), "search")
        return _serve_search(svc, claims, request, pid, infos, offset, count, "search")

    return router


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


def serve_version(svc: HospitalServices, claims: Claims, info: Any) -> tuple[bytes, dict[str, str]]:
    """One record version as a read serves it: the scopes' categories, then decided and
    logged on the chain, then its bytes with the server's meta (and ETag/Last-Modified)."""
    what = f"{info.resource_type}/{info.rid}"
    if not _in_scope(svc, claims, [info], "read"):
        raise FhirError(403, "forbidden", f"{what} is outside the categories of your scopes")
    meta = _meta_of(svc, info)
    audited = svc.decide_and_audit(claims, info.pid, meta, "treatment", "read", [info.rid])
    svc.log(audited.entries, wait=False)
    if not audited.decision.allowed:
        raise FhirError(403, "forbidden", f"access denied: {audited.decision.reason}")
    body, headers, _ = versions.served(svc.vault, svc.node.engine, info.rid, info.version)
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


def _supported(resource_type: str) -> None:
    if resource_type not in SUPPORTED:
        raise FhirError(404, "not-supported", f"resource type {resource_type} is not served here")


def _serve_search(
    svc: HospitalServices,
    claims: Claims,
    request: Request,
    pid: str,
    infos: list[Any],
    offset: int,
    count: int,
    action: str,
) -> Response:
    from medledger.contracts.authorize import Decision

    allowed = []
    denied: dict[str, list[str]] = {}  # reason -> rids
    for info in infos:
        decision = svc.decide(claims, pid, _meta_of(svc, info), "treatment")
        if decision.allowed:
            allowed.append((info, decision))
        else:
            denied.setdefault(decision.reason, []).append(info.rid)
    page = allowed[offset : offset + count]
    for reason, rids in sorted(denied.items()):  # every refusal is on the chain too
        svc.record_access(
            claims, pid, action, "treatment", Decision(False, "", reason), rids, wait=False
        )
    if infos and not allowed:
        raise FhirError(403, "forbidden", f"access denied: {min(denied)}")
    by_basis: dict[str, list[str]] = {}  # one entry per basis: each names exactly its own
    for info, d in page:
        by_basis.setdefault(d.basis, []).append(info.rid)
    for basis, rids in sorted(by_basis.items()):
        svc.record_access(
            claims, pid, action, "treatment", Decision(True, basis, ""), rids, wait=False
        )
    base = str(request.base_url)
    entries = [(f"{base}fhir/{i.resource_type}/{i.rid}", svc.vault.get(i.rid)) for i, _ in page]
    return fhir_response(
        _bundle(entries, len(allowed), _page(request, offset, count, len(allowed)))
    )
