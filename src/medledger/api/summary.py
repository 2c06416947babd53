"""`GET /fhir/Patient/<id>/$summary`: the patient's International Patient Summary (IPS).

http://hl7.org/fhir/uv/ips/ — a `document` Bundle assembled, when asked, from everything the
caller may see of the patient at this hospital: its own records and the copies it holds from
other hospitals. Each record is decided and logged on the chain as `$everything` does (action
`export`). The first entry is a Composition (LOINC 60591-5) with the IPS sections: problems,
allergies and medications always (with an `emptyReason` when there is nothing to show), then
immunizations, past illnesses, procedures, results and vital signs when present; each section
references its entries by their `urn:uuid` fullUrl, and every reference between the entries
(the subject, a reaction's Condition...) is rewritten to the entry it names. The hospital is
the author and custodian (an Organization entry).

Nothing is left out silently: a record the caller's scopes or the consents do not let them see
is counted in its section (`WITHHELD` extension, and said in the section's narrative; a section
with nothing shown but something withheld has `emptyReason` `withheld`), and the document
carries an OperationOutcome entry, referenced from the Composition, saying how many and why.
The hospital's own resources the entries reference (the Practitioner who performed, the
Medication prescribed) are entries too, so that every reference resolves in the document.
"""

from __future__ import annotations

import html
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from medledger.api.auth import authenticated, require
from medledger.api.fhir import LocalRecords, Svc, _in_scope, _meta_of, _within_launch
from medledger.api.interactions import SUPPORTING_TYPES
from medledger.api.outcomes import FhirError, fhir_response
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims
from medledger.interop.fhir import reference_holders

LOINC = "http://loinc.org"
IPS = "http://hl7.org/fhir/uv/ips/StructureDefinition"
#: Extension on a section (valueUnsignedInt): how many of its records were withheld.
WITHHELD = "urn:medledger:fhir:extension:withheld-records"
#: Extension on the Composition (valueReference): the OperationOutcome saying what was withheld.
WITHHELD_OUTCOME = "urn:medledger:fhir:extension:withheld-outcome"
_EMPTY = "http://terminology.hl7.org/CodeSystem/list-empty-reason"

#: (key, LOINC code, display, title, always present) in the order of the document.
SECTIONS = (
    ("problems", "11450-4", "Problem list - Reported", "Active Problems", True),
    ("allergies", "48765-2", "Allergies and adverse reactions Document", "Allergies", True),
    ("medications", "10160-0", "History of Medication use Narrative", "Medications", True),
    ("immunizations", "11369-6", "History of Immunization Narrative", "Immunizations", False),
    ("past-illness", "11348-0", "History of Past illness Narrative", "Past Problems", False),
    ("procedures", "47519-4", "History of Procedures Document", "Procedures", False),
    ("results", "30954-2", "Relevant diagnostic tests/laboratory data Narrative", "Results", False),
    ("vital-signs", "8716-3", "Vital signs", "Vital Signs", False),
)
_BY_TYPE = {
    "Condition": "problems",
    "AllergyIntolerance": "allergies",
    "MedicationStatement": "medications",
    "MedicationRequest": "medications",
    "MedicationAdministration": "medications",
    "MedicationDispense": "medications",
    "Immunization": "immunizations",
    "Procedure": "procedures",
    "DiagnosticReport": "results",
    "Observation": "results",
}
_PAST = ("inactive", "remission", "resolved")


def make_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")

    @router.get("/Patient/{rid}/$summary")
    def summary(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], rid: str, request: Request
    ) -> Response:
        require(claims, "Patient", "read")
        if request.query_params:
            names = ", ".join(sorted(set(request.query_params.keys())))
            raise FhirError(
                400,
                "not-supported",
                f"$summary takes no parameters here (given: {names}); the IPS is always built",
            )
        records = LocalRecords(svc)
        pid = _within_launch(claims, records.pid_of(rid))
        return fhir_response(build(svc, claims, pid, str(request.base_url)))

    return router


def section_of(resource_type: str, category: str, resource: dict[str, Any] | None) -> str | None:
    """The IPS section a record belongs to (None: not part of a summary)."""
    key = _BY_TYPE.get(resource_type)
    if key == "results" and category == "vital-signs":
        return "vital-signs"
    if key == "problems" and resource is not None:
        status = resource.get("clinicalStatus")
        codes = {c.get("code") for c in _codings(status)}
        if codes & set(_PAST):
            return "past-illness"
    return key


def build(svc: HospitalServices, claims: Claims, pid: str, base: str) -> bytes:
    """The IPS document of `pid` for this caller, as JSON bytes (decisions logged)."""
    from medledger.contracts.authorize import Decision

    latest = LocalRecords(svc).latest(pid)
    reachable = {id(i) for i in _in_scope(svc, claims, latest, "read")}
    decided: dict[tuple[str, str, str], Decision] = {}
    allowed: list[tuple[Any, Decision]] = []
    withheld: dict[str, int] = {}  # section -> count
    reasons: dict[str, int] = {}  # why -> count
    denied: dict[str, list[str]] = {}  # reason -> rids (logged)
    for info in latest:
        meta = _meta_of(svc, info)
        section = section_of(info.resource_type, str(meta.get("category")), None)
        # Summary content: the Patient and the sections' records; the others (encounters,
        # imaging studies...) only when an entry references them.
        content = info.resource_type == "Patient" or section is not None
        if id(info) not in reachable:
            why = "outside the categories or types of your scopes"
        else:
            key = (str(meta["custodian"]), str(meta["type"]), str(meta["category"]))
            if key not in decided:
                decided[key] = svc.decide(claims, pid, meta, "treatment")
            decision = decided[key]
            if decision.allowed:
                allowed.append((info, decision))
                continue
            why = f"access denied: {decision.reason}"
            if content:
                denied.setdefault(decision.reason, []).append(info.rid)
        if content:
            reasons[why] = reasons.get(why, 0) + 1
            if section is not None:
                withheld[section] = withheld.get(section, 0) + 1
    for reason, rids in sorted(denied.items()):  # every refusal is on the chain too
        svc.record_access(
            claims, pid, "export", "treatment", Decision(False, "", reason), rids, wait=False
        )
    patients = [i for i, _ in allowed if i.resource_type == "Patient"]
    if not patients:
        raise FhirError(
            403, "forbidden", "the patient's own record is not yours to see: no summary for you"
        )
    subject = min(patients, key=lambda i: (i.is_copy, i.custodian != svc.org, i.rid))
    document, served = _document(svc, base, subject, allowed, withheld, reasons)
    by_basis: dict[str, list[str]] = {}  # what the document holds, by what allowed it
    for info, decision in allowed:
        if info.rid in served:
            by_basis.setdefault(decision.basis, []).append(info.rid)
    for basis, rids in sorted(by_basis.items()):
        svc.record_access(
            claims, pid, "export", "treatment", Decision(True, basis, ""), rids, wait=False
        )
    return document


def _document(
    svc: HospitalServices,
    base: str,
    subject: Any,
    allowed: list[tuple[Any, Any]],
    withheld: dict[str, int],
    reasons: dict[str, int],
) -> tuple[bytes, set[str]]:
    """(the document, the rids of the patient's records it holds)."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    urls: dict[str, str] = {}  # "Type/rid" -> urn:uuid of its entry

    def urn(kind: str, ident: str, version: int = 0) -> str:
        name = f"{base}fhir/{kind}/{ident}/_history/{version}"
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"

    patient_url = urn("Patient", subject.rid, subject.version)
    for info, _ in allowed:
        if info.resource_type == "Patient":
            urls[f"Patient/{info.rid}"] = patient_url  # every record of the person: one subject
    entries: list[tuple[str, dict[str, Any]]] = []
    sections: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    category = {info.rid: str(_meta_of(svc, info)["category"]) for info, _ in allowed}
    holders: dict[int, list[dict[str, Any]]] = {}  # id(resource) -> its references' objects

    def load(info: Any, data: bytes | None = None) -> tuple[Any, dict[str, Any]]:
        resource = orjson.loads(data or svc.vault.get(info.rid, info.version))
        holders[id(resource)] = reference_holders(resource)  # one walk per resource
        return info, resource

    def references(resource: dict[str, Any]) -> list[str]:
        return [holder["reference"] for holder in holders[id(resource)]]

    content = [
        info
        for info, _ in allowed
        if info.rid == subject.rid
        or section_of(info.resource_type, category[info.rid], None) is not None
    ]
    read = svc.vault.get_many([(info.rid, info.version) for info in content])  # at once
    loaded: list[tuple[Any, dict[str, Any]]] = [
        load(info, data) for info, data in zip(content, read, strict=True)
    ]
    # The patient's other records the entries reference (an Observation's Encounter...).
    others = {f"{i.resource_type}/{i.rid}": i for i, _ in allowed if i.resource_type != "Patient"}
    included = {f"{i.resource_type}/{i.rid}" for i, _ in loaded}
    pending = [r for _, res in loaded for r in references(res)]
    while pending:
        ref = pending.pop()
        if ref in others and ref not in included:
            included.add(ref)
            loaded.append(load(others[ref]))
            pending += references(loaded[-1][1])
    for info, _resource in loaded:
        if info.resource_type != "Patient":
            urls[f"{info.resource_type}/{info.rid}"] = urn(
                info.resource_type, info.rid, info.version
            )
    cited = {ref for _, resource in loaded for ref in references(resource)}
    supporting = [load(info) for info in _supporting(svc, cited)]
    for info, _resource in supporting:
        urls[f"{info.resource_type}/{info.rid}"] = urn(info.resource_type, info.rid, info.version)

    def repoint(resource: dict[str, Any]) -> None:
        for holder in holders[id(resource)]:
            holder["reference"] = urls.get(holder["reference"], holder["reference"])

    for info, resource in loaded:
        repoint(resource)
        if info.resource_type == "Patient":
            entries.insert(0, (patient_url, resource))
            continue
        section = section_of(info.resource_type, category[info.rid], resource)
        url = urls[f"{info.resource_type}/{info.rid}"]
        entries.append((url, resource))
        if section is not None:
            sections.setdefault(section, []).append(url)
            labels.setdefault(section, []).append(_label(resource))
    for info, resource in supporting:  # who acted, with what: after the clinical entries
        repoint(resource)
        entries.append((urls[f"{info.resource_type}/{info.rid}"], resource))
    org_url = urn("Organization", svc.org)
    organization = {
        "resourceType": "Organization",
        "id": org_url.removeprefix("urn:uuid:"),
        "identifier": [{"system": "urn:medledger:org", "value": svc.org}],
        "name": svc.node.config.name or svc.org,
    }
    composition_id = str(uuid.uuid4())
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": composition_id,
        "meta": {"profile": [f"{IPS}/Composition-uv-ips"]},
        "status": "final",
        "type": {
            "coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]
        },
        "subject": {"reference": patient_url},
        "date": now,
        "author": [{"reference": org_url}],
        "title": f"International Patient Summary ({svc.org})",
        "confidentiality": "N",
        "custodian": {"reference": org_url},
        "section": [
            _section(
                key, code, display, title, sections.get(key, []), labels.get(key, []), withheld
            )
            for key, code, display, title, always in SECTIONS
            if always or key in sections or key in withheld
        ],
    }
    extra: list[tuple[str, dict[str, Any]]] = []
    if reasons:
        outcome_url = f"urn:uuid:{uuid.uuid4()}"
        composition["extension"] = [
            {"url": WITHHELD_OUTCOME, "valueReference": {"reference": outcome_url}}
        ]
        extra.append((outcome_url, _withheld_outcome(reasons)))
    document = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [f"{IPS}/Bundle-uv-ips"]},
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": now,
        "entry": [
            {"fullUrl": url, "resource": resource}
            for url, resource in [
                (f"urn:uuid:{composition_id}", composition),
                *entries,
                (org_url, organization),
                *extra,
            ]
        ],
    }
    for url, resource in entries:
        resource["id"] = url.removeprefix("urn:uuid:")
    return orjson.dumps(document), {info.rid for info, _ in loaded}


def _section(
    key: str,
    code: str,
    display: str,
    title: str,
    refs: list[str],
    labels: list[str],
    withheld: dict[str, int],
) -> dict[str, Any]:
    held_back = withheld.get(key, 0)
    items = "".join(f"<li>{html.escape(label)}</li>" for label in labels)
    text = f"<ul>{items}</ul>" if items else "<p>No information available.</p>"
    if held_back:
        text += f"<p>{held_back} record(s) withheld: not yours to see.</p>"
    section: dict[str, Any] = {
        "title": title,
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>',
        },
    }
    if held_back:
        section["extension"] = [{"url": WITHHELD, "valueUnsignedInt": held_back}]
    if refs:
        section["entry"] = [{"reference": ref} for ref in refs]
    else:
        reason = "withheld" if held_back else "unavailable"
        section["emptyReason"] = {
            "coding": [{"system": _EMPTY, "code": reason, "display": reason.capitalize()}]
        }
    return section


def _supporting(svc: HospitalServices, references: set[str]) -> list[Any]:
    """The hospital's own resources (Practitioner, Medication...) among `references` (of the
    entries), so that every reference of the document resolves inside it. They are no
    patient's record (kept under the vault's `hospital_pid`): nothing about a patient is
    decided for them."""
    from medledger.vault.errors import VaultError

    owner = getattr(svc.vault, "hospital_pid", None)  # the vault's owner of such resources
    if owner is None:
        return []
    wanted = sorted(ref for ref in references if ref.partition("/")[0] in SUPPORTING_TYPES)
    found = []
    for ref in wanted:
        kind, _, rid = ref.partition("/")
        try:
            info = svc.vault.info(rid)
        except (VaultError, ValueError):
            continue
        if info.resource_type == kind and info.pid == owner:
            found.append(info)
    return found


def _withheld_outcome(reasons: dict[str, int]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "id": str(uuid.uuid4()),
        "issue": [
            {
                "severity": "warning",
                "code": "suppressed",
                "diagnostics": f"{count} record(s) left out of this summary: {why}",
            }
            for why, count in sorted(reasons.items())
        ],
    }


def _codings(concept: Any) -> list[dict[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _label(resource: dict[str, Any]) -> str:
    """What a section's narrative says of an entry: its code's text or first display."""
    for name in ("code", "medicationCodeableConcept", "vaccineCode"):
        concept = resource.get(name)
        if isinstance(concept, dict):
            if isinstance(concept.get("text"), str):
                return str(concept["text"])
            for coding in _codings(concept):
                if isinstance(coding.get("display"), str):
                    return str(coding["display"])
                if isinstance(coding.get("code"), str):
                    return str(coding["code"])
    return str(resource.get("resourceType", "entry"))
