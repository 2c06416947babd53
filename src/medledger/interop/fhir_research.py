"""FHIR R4 ResearchStudy and ResearchSubject for the research contract's studies and enrolments.

Read-only views of what the chain holds (`research/study`, `research/of_patient`): nothing here
is written back. Mapping:

    study id             `id`, and `identifier` system `urn:medledger:study`
    status               open (before its end) -> active; closed by the sponsor, or past its
                         end -> completed; a contract status `closed-to-accrual` as it is
    ethics_ref           `identifier` system `urn:medledger:ethics-approval`
    protocol_hash        `identifier` system `urn:medledger:protocol-sha256` (hex)
    categories           `category`, system `urn:medledger:category`
    sponsor              `sponsor`: Reference by identifier `urn:medledger:org`
    registered / end     `period`
    title                only when the caller passes it (the sponsor keeps it off chain)

    enrolment            ResearchSubject: `id` = the study token (`research.member_token`,
                         hex: already public, it names no health fact), `status` on-study or
                         withdrawn, `period` from enrolment to withdrawal, `study`
                         ResearchStudy/<id>, `individual` the patient by pseudonym
                         (`urn:medledger:pid`), never by a direct identifier.
"""

from __future__ import annotations

import datetime
from typing import Any

from medledger.contracts.research import member_token
from medledger.interop.fhir_consent import CATEGORY_SYSTEM, ORG_SYSTEM, PID_SYSTEM, STUDY_SYSTEM

ETHICS_SYSTEM = "urn:medledger:ethics-approval"
PROTOCOL_SYSTEM = "urn:medledger:protocol-sha256"
#: The contract's enrolment status -> ResearchSubject.status (R4 research-subject-status).
SUBJECT_STATUS = {"enrolled": "on-study", "withdrawn": "withdrawn"}


def _instant(ms: int) -> str:
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def study_status(study: dict[str, Any], now_ms: int) -> str:
    """The ResearchStudy.status of a study as the chain holds it, at `now_ms`."""
    status = str(study["status"])
    if status == "open":
        ended = bool(study.get("end_ms")) and now_ms >= int(study["end_ms"])
        return "completed" if ended else "active"
    if status == "closed-to-accrual":
        return status
    return "completed"


def study_to_fhir(study: dict[str, Any], now_ms: int, title: str | None = None) -> dict[str, Any]:
    """A ResearchStudy for a study as `research/study` returns it (`title` only at its sponsor)."""
    period: dict[str, str] = {"start": _instant(int(study["time"]))}
    end = int(study.get("closed") or study.get("end_ms") or 0)
    if end:
        period["end"] = _instant(end)
    resource: dict[str, Any] = {
        "resourceType": "ResearchStudy",
        "id": study["id"],
        "identifier": [
            {"system": STUDY_SYSTEM, "value": study["id"]},
            {"system": ETHICS_SYSTEM, "value": study["ethics_ref"]},
            {"system": PROTOCOL_SYSTEM, "value": bytes(study["protocol_hash"]).hex()},
        ],
        "status": study_status(study, now_ms),
        "category": [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": c}]} for c in study["categories"]
        ],
        "period": period,
        "sponsor": {
            "type": "Organization",
            "identifier": {"system": ORG_SYSTEM, "value": study["sponsor"]},
        },
    }
    if title:
        resource["title"] = title
    return resource


def subject_id(study: str, pid: str) -> str:
    """A ResearchSubject's id: the study token of the enrolment (64 hex characters)."""
    return member_token(study, pid).hex()


def subject_to_fhir(enrolment: dict[str, Any]) -> dict[str, Any]:
    """A ResearchSubject for an enrolment as `research/of_patient` returns it."""
    period: dict[str, str] = {"start": _instant(int(enrolment["since"]))}
    if enrolment["status"] == "withdrawn" and enrolment.get("withdrawn"):
        period["end"] = _instant(int(enrolment["withdrawn"]))
    return {
        "resourceType": "ResearchSubject",
        "id": subject_id(enrolment["study"], enrolment["pid"]),
        "status": SUBJECT_STATUS.get(str(enrolment["status"]), "off-study"),
        "period": period,
        "study": {"reference": f"ResearchStudy/{enrolment['study']}"},
        "individual": {
            "type": "Patient",
            "identifier": {"system": PID_SYSTEM, "value": enrolment["pid"]},
        },
    }
