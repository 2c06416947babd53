"""The FHIR API's view of studies: ResearchStudy (read, search) and ResearchSubject (search).

Both are read from the chain (`interop.fhir_research` maps them). A study is consortium data:
any caller a scope allows may read it; its title only at the sponsor, to its own staff (the
sponsor keeps it off chain, `node.notes`). A subject is a patient's enrolment: it is the
patient's data, so a search reaches only

- a patient token: the patient's own enrolments;
- a practitioner or backend service of this hospital: the enrolments of patients this hospital
  is custodian of (`records/custody_of`), each decided by `authorize` as any of the patient's
  administrative data and written on the access trail (allowed or not).

Nobody gets the list of every pid of a study from here: a study's subjects held by no
custodian of this hospital are simply not in the answer.

Search parameters are exactly those of `interactions.SEARCH_PARAMS` (comma = OR, a repeated
parameter = AND); anything else is left out of the self link and reported in an
OperationOutcome entry, or refused with 400 under `Prefer: handling=strict`, as for the other
types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from medledger.api import interactions
from medledger.api import search as fhir_search
from medledger.api.auth import authenticated, require
from medledger.api.fhir import LocalRecords, Svc, viewed
from medledger.api.outcomes import FhirError, fhir_response
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims, outside_launch, patient_of
from medledger.contracts import queries
from medledger.interop.fhir_research import study_to_fhir, subject_to_fhir

STUDY_STATUS_SYSTEM = "http://hl7.org/fhir/research-study-status"
SUBJECT_STATUS_SYSTEM = "http://hl7.org/fhir/research-subject-status"


@dataclass
class Params:
    """A parsed search of a fixed-parameter type: each parameter's AND'ed groups of OR'ed
    values, the self link's query, and what was not applied (name, why)."""

    groups: dict[str, list[list[str]]] = field(default_factory=dict)
    applied: list[tuple[str, str]] = field(default_factory=list)
    not_applied: list[tuple[str, str]] = field(default_factory=list)
    count: int = fhir_search.DEFAULT_COUNT
    offset: int = 0

    def matches(self, name: str, test: Callable[[str], bool]) -> bool:
        """Every occurrence of `name` has a value `test` accepts (true when it is absent)."""
        return all(any(test(v) for v in group) for group in self.groups.get(name, []))

    def values(self, name: str) -> list[list[str]]:
        return self.groups.get(name, [])


def parse_params(resource_type: str, items: Iterable[tuple[str, str]], strict: bool) -> Params:
    """The search a query string asks of `resource_type` (`interactions.SEARCH_PARAMS`)."""
    accepted = {name for name, _, _ in interactions.SEARCH_PARAMS[resource_type]}
    params = Params()
    rest: list[tuple[str, str]] = []
    for name, value in items:
        if name == "_offset":
            if not value.isdigit():
                raise FhirError(400, "invalid", f"_offset: {value!r} is not a number", name)
            params.offset = int(value)
        elif name in accepted:
            values = [v for v in value.split(",") if v]
            if not values:
                params.not_applied.append((name, "empty value"))
                continue
            params.groups.setdefault(name, []).append(values)
            params.applied.append((name, value))
        else:
            rest.append((name, value))
    query, _ = fhir_search.parse_limited(
        resource_type,
        rest,
        strict=strict,
        keep=(),
        why=f"not a search parameter of {resource_type} here",
    )
    params.not_applied += query.not_applied
    fhir_search.refuse_if_strict(params.not_applied, strict)
    params.count = query.count
    params.applied += query.applied
    return params


def _code(value: str, system: str) -> str | None:
    """A token value's code when its system (if given) is `system`; None matches nothing."""
    given, bar, code = value.rpartition("|")
    if bar and given not in ("", system):
        return None
    return code


def _reference(value: str, base: str, resource_type: str) -> str:
    """The id a reference value names (`Type/id`, `id` or this server's absolute URL)."""
    local = value.removeprefix(base + "/")
    return local.removeprefix(f"{resource_type}/")


def _searchset(
    request: Request, resource_type: str, params: Params, found: list[tuple[str, bytes]]
) -> Response:
    base = f"{request.base_url}fhir"
    page = found[params.offset : params.offset + max(params.count, 0)]
    applied = params.applied + ([("_offset", str(params.offset))] if params.offset else [])
    links = [("self", f"{base}/{resource_type}" + (f"?{urlencode(applied)}" if applied else ""))]
    if params.count and params.offset + params.count < len(found):
        following = [(n, v) for n, v in params.applied if n != "_offset"]
        following.append(("_offset", str(params.offset + params.count)))
        links.append(("next", f"{base}/{resource_type}?{urlencode(following)}"))
    entries = [(f"{base}/{resource_type}/{ident}", raw, "match") for ident, raw in page]
    notes = [
        ("warning", "not-supported", f"parameter {name} was not applied: {why}")
        for name, why in params.not_applied
    ]
    return fhir_response(
        fhir_search.bundle(
            len(found), links, entries + ([fhir_search.outcome_entry(notes)] if notes else [])
        )
    )


def _staff_of_this_hospital(claims: Claims) -> bool:
    """A practitioner's or backend service's token (not a patient's): who may see a title."""
    kind = claims.subject.partition("/")[0]
    return patient_of(claims) is None and kind in ("Practitioner", "Device")


def _study_resource(svc: HospitalServices, claims: Claims, study: dict[str, Any]) -> bytes:
    from medledger.node.notes import NoteStore, title_of_study

    title = None
    if study["sponsor"] == svc.org and _staff_of_this_hospital(claims):
        title = title_of_study(NoteStore(svc.node.config.home), study)
    return orjson.dumps(study_to_fhir(study, int(time.time() * 1000), title))


def _subject_pids(svc: HospitalServices, claims: Claims, params: Params, base: str) -> list[str]:
    """The patients whose enrolments this caller may search, narrowed by patient/individual:
    the patient themself, or the patients of this hospital's custody."""
    records = LocalRecords(svc)
    named: set[str] | None = None
    for name in ("patient", "individual"):
        for group in params.values(name):
            pids = set()
            for value in group:
                pid = records.pid_of(_reference(value, base, "Patient"))
                if outside_launch(claims, pid):
                    raise FhirError(
                        403, "forbidden", "the token's launch context is another patient", name
                    )
                pids.add(pid)
            named = pids if named is None else named & pids
    if claims.patient is not None:  # a patient token, or a launch context: that patient only
        named = {claims.patient} if named is None else named & {claims.patient}
    if patient_of(claims) is not None:
        return sorted(named or ())
    custody = set(queries.custody_of(svc.node.engine, svc.org))
    return sorted(custody if named is None else named & custody)


def _study_matches(params: Params, study: dict[str, Any]) -> bool:
    def identified(value: str) -> bool:
        system, bar, code = value.rpartition("|")
        return any(
            i["value"] == code and (not bar or system in ("", i["system"]))
            for i in study["identifier"]
        )

    return (
        params.matches("_id", lambda v: v == study["id"])
        and params.matches("identifier", identified)
        and params.matches("status", lambda v: _code(v, STUDY_STATUS_SYSTEM) == study["status"])
    )


def _subject_matches(params: Params, base: str, subject: dict[str, Any]) -> bool:
    study = str(subject["study"]["reference"]).removeprefix("ResearchStudy/")
    return params.matches(
        "study", lambda v: _reference(v, base, "ResearchStudy") == study
    ) and params.matches("status", lambda v: _code(v, SUBJECT_STATUS_SYSTEM) == subject["status"])


def make_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")

    @router.get("/ResearchStudy/{study_id}")
    def read_study(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], study_id: str, request: Request
    ) -> Response:
        interactions.check("ResearchStudy", "read")
        require(claims, "ResearchStudy", "read")
        view = fhir_search.read_view("ResearchStudy", request.query_params.multi_items())
        study = queries.study(svc.node.engine, study_id)
        if study is None:
            raise FhirError(404, "not-found", f"ResearchStudy/{study_id} is not known here")
        return fhir_response(viewed(_study_resource(svc, claims, study), view))

    @router.get("/ResearchStudy")
    def search_studies(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], request: Request
    ) -> Response:
        require(claims, "ResearchStudy", "search")
        params = parse_params("ResearchStudy", request.query_params.multi_items(), _strict(request))
        now = int(time.time() * 1000)
        found = [
            (str(study["id"]), _study_resource(svc, claims, study))
            for study in queries.studies(svc.node.engine)
            if _study_matches(params, study_to_fhir(study, now))
        ]
        return _searchset(request, "ResearchStudy", params, found)

    @router.get("/ResearchSubject")
    def search_subjects(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], request: Request
    ) -> Response:
        require(claims, "ResearchSubject", "search")
        params = parse_params(
            "ResearchSubject", request.query_params.multi_items(), _strict(request)
        )
        base = f"{request.base_url}fhir"
        candidates = _subject_pids(svc, claims, params, base)
        matched = [
            subject
            for enrolment in _enrolments(svc, candidates, _named_studies(params, base))
            if _subject_matches(params, base, subject := subject_to_fhir(enrolment))
        ]
        found = _allowed_subjects(svc, claims, matched)
        return _searchset(request, "ResearchSubject", params, found)

    return router


def _named_studies(params: Params, base: str) -> set[str] | None:
    """The studies `study=` narrows to (every occurrence's values intersected), or None."""
    named: set[str] | None = None
    for group in params.values("study"):
        ids = {_reference(v, base, "ResearchStudy") for v in group}
        named = ids if named is None else named & ids
    return named


def _enrolments(
    svc: HospitalServices, pids: list[str], studies: set[str] | None
) -> list[dict[str, Any]]:
    """The enrolments of these patients (in those studies), read in one committed view: a
    study's search over a large custody asks one key per patient, not one query each."""
    from medledger.consensus.engine import NoLocalReplica
    from medledger.contracts.research import enrolment_of, studies_of

    try:
        with svc.node.engine.read_view() as state:
            return [
                found
                for pid in pids
                for study in (sorted(studies) if studies is not None else studies_of(state, pid))
                if (found := enrolment_of(state, study, pid)) is not None
            ]
    except NoLocalReplica:  # a node reached over RPC: its typed queries
        return [
            e
            for pid in pids
            for e in queries.research_of_patient(svc.node.engine, pid)
            if studies is None or e["study"] in studies
        ]


def _allowed_subjects(
    svc: HospitalServices, claims: Claims, subjects: list[dict[str, Any]]
) -> list[tuple[str, bytes]]:
    """The subjects this caller may see, each patient decided once and the decision (allowed
    or not) on the access trail; 403 when every one was refused."""
    meta = {"custodian": svc.org, "category": "administrative", "type": "ResearchSubject"}
    decisions: dict[str, Any] = {}
    found = []
    for subject in sorted(subjects, key=lambda s: (s["study"]["reference"], s["id"])):
        pid = subject["individual"]["identifier"]["value"]
        if pid not in decisions:
            decisions[pid] = svc.decide(claims, pid, meta, "treatment")
        if decisions[pid].allowed:
            found.append((str(subject["id"]), orjson.dumps(subject)))
    for pid, decision in sorted(decisions.items()):
        svc.record_access(claims, pid, "search", "treatment", decision, [], wait=False)
    refused = [d for d in decisions.values() if not d.allowed]
    if refused and not found:
        raise FhirError(403, "forbidden", f"access denied: {refused[0].reason}")
    return found


def _strict(request: Request) -> bool:
    return fhir_search.strict_handling(request.headers.get("prefer", ""))
