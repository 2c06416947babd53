"""FHIR Consent (R4 and R5 shapes) to and from medledger's consent contract.

`to_fhir(consent, version)` turns a consent as stored on the chain (`consent/get`) into a FHIR
Consent resource; `from_fhir(resource)` turns a FHIR Consent (either version, detected from
its shape) into the body of a `consent.grant` tx. The round trip is exact for every consent
the contract can hold, so a hospital can import the consents its own system already collects
and export what the chain holds to any FHIR client.

Mapping (no direct identifier: the patient is referenced by pseudonym only)
    patient (pid)        R4 `patient`, R5 `subject` and `grantor`: Reference by identifier
                         system `urn:medledger:pid`
    grantee org/prac     R4 `provision.actor` (role IRCP, information recipient), R5 `grantee`;
                         identifier systems `urn:medledger:org`, `urn:medledger:practitioner`
    grantee study        the core extension naming the research study
                         (R4 consent-ResearchStudyContext, R5 workflow-researchStudy)
    categories           `provision.code`, system `urn:medledger:category`; none means "*"
    purpose              `provision.purpose` (v3 ActReason TREAT, ETREAT, HRESCH), and the R4
                         `scope` (treatment or research)
    period               R4 `provision.period`, R5 `period`; no end means until revoked
    custodian scope      `provision.actor` with role CST (custodian); absent means any
    evidence hash        extension `urn:medledger:extension:evidence-sha256` (base64)
    recording hospital   R4 `organization`, R5 `manager` (when signed on the patient's behalf)
    revoked              status `inactive`

Only permits are representable (the contract grants; the consortium's policies deny): a deny
decision or nested provisions are refused on import, not silently dropped.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from medledger.interop.metadata import CATEGORIES

PID_SYSTEM = "urn:medledger:pid"
ORG_SYSTEM = "urn:medledger:org"
PRACTITIONER_SYSTEM = "urn:medledger:practitioner"
STUDY_SYSTEM = "urn:medledger:study"
CONSENT_SYSTEM = "urn:medledger:consent"
CATEGORY_SYSTEM = "urn:medledger:category"
EVIDENCE_URL = "urn:medledger:extension:evidence-sha256"
STUDY_URL = {
    "R4": "http://hl7.org/fhir/StructureDefinition/consent-ResearchStudyContext",
    "R5": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
}
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

PURPOSE_CODES = {"treatment": "TREAT", "emergency": "ETREAT", "research": "HRESCH"}
PURPOSE_OF_CODE = {v: k for k, v in PURPOSE_CODES.items()}
PATIENT_CONSENT = {
    "coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]
}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class FhirConsentError(ValueError):
    """The resource is not a Consent medledger can hold; the message names the element."""


# -- times ----------------------------------------------------------------------------------


def _instant(ms: int) -> str:
    """FHIR dateTime in UTC with milliseconds: exact for the ms block times of the chain."""
    t = _EPOCH + datetime.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _ms(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise FhirConsentError(f"{where}: expected a FHIR dateTime")
    try:
        t = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise FhirConsentError(f"{where}: {value!r} is not a FHIR dateTime") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)  # a bare date: midnight UTC
    return (t - _EPOCH) // datetime.timedelta(milliseconds=1)


# -- references -----------------------------------------------------------------------------


def _ref(kind: str, system: str, value: str) -> dict[str, Any]:
    return {"type": kind, "identifier": {"system": system, "value": value}}


def _grantee_ref(grantee: str) -> dict[str, Any] | None:
    kind, _, rest = grantee.partition(":")
    if kind == "org":
        return _ref("Organization", ORG_SYSTEM, rest)
    if kind == "practitioner":
        return _ref("Practitioner", PRACTITIONER_SYSTEM, rest)
    return None  # a study: carried by the research-study extension


def _grantee_of(ref: Any, where: str) -> str:
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    system = ident.get("system") if isinstance(ident, dict) else None
    value = ident.get("value") if isinstance(ident, dict) else None
    if system == ORG_SYSTEM and isinstance(value, str):
        return f"org:{value}"
    if system == PRACTITIONER_SYSTEM and isinstance(value, str):
        return f"practitioner:{value}"
    raise FhirConsentError(
        f"{where}: the grantee is referenced by identifier ({ORG_SYSTEM} or {PRACTITIONER_SYSTEM})"
    )


def _role(code: str) -> dict[str, Any]:
    return {"coding": [{"system": PARTICIPATION, "code": code}]}


def _has_role(actor: dict[str, Any], code: str) -> bool:
    role = actor.get("role") or {}
    return any(c.get("code") == code for c in role.get("coding", []))


# -- export ---------------------------------------------------------------------------------


def to_fhir(consent: dict[str, Any], version: str = "R4") -> dict[str, Any]:
    """A FHIR Consent (R4 or R5 shape) for a consent as the chain stores it."""
    if version not in ("R4", "R5"):
        raise ValueError(f"version: R4 or R5, not {version!r}")
    pid = consent["pid"]
    patient = _ref("Patient", PID_SYSTEM, pid)
    purpose = consent["purpose"]
    signed = consent.get("signed") or {}
    extensions: list[dict[str, Any]] = []
    if signed.get("evidence_hash"):
        extensions.append(
            {
                "url": EVIDENCE_URL,
                "valueBase64Binary": base64.b64encode(signed["evidence_hash"]).decode(),
            }
        )
    grantee = consent["grantee"]
    if grantee.startswith("study:"):
        study = grantee.removeprefix("study:")
        extensions.append(
            {
                "url": STUDY_URL[version],
                "valueReference": _ref("ResearchStudy", STUDY_SYSTEM, study),
            }
        )
    period: dict[str, Any] = {"start": _instant(consent["start_ms"])}
    if consent["end_ms"]:
        period["end"] = _instant(consent["end_ms"])
    provision: dict[str, Any] = {
        "purpose": [{"system": ACT_REASON, "code": PURPOSE_CODES[purpose]}],
    }
    actors: list[dict[str, Any]] = []
    if version == "R4" and (ref := _grantee_ref(grantee)) is not None:
        actors.append({"role": _role("IRCP"), "reference": ref})
    if consent["custodian"] != "*":
        actors.append(
            {
                "role": _role("CST"),
                "reference": _ref("Organization", ORG_SYSTEM, consent["custodian"]),
            }
        )
    if actors:
        provision["actor"] = actors
    if consent["categories"] != ["*"]:
        provision["code"] = [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": c}]} for c in consent["categories"]
        ]
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": f"medledger-consent-{consent['id']}",
        "identifier": [{"system": CONSENT_SYSTEM, "value": str(consent["id"])}],
        "status": "active" if consent["status"] == "active" else "inactive",
        "category": [PATIENT_CONSENT],
    }
    if extensions:
        resource["extension"] = extensions
    recorder = signed.get("org") if signed.get("by") == "hospital" else None
    if version == "R4":
        scope = "research" if purpose == "research" else "treatment"
        resource.update(
            scope={"coding": [{"system": SCOPE_SYSTEM, "code": scope}]},
            patient=patient,
            dateTime=_instant(consent["time"]),
            performer=[patient],
            policyRule={"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
            provision={"type": "permit", "period": period, **provision},
        )
        if recorder:
            resource["organization"] = [_ref("Organization", ORG_SYSTEM, recorder)]
    else:
        resource.update(
            subject=patient,
            date=_instant(consent["time"])[:10],
            period=period,
            grantor=[patient],
            decision="permit",
            provision=[provision],
        )
        if (ref := _grantee_ref(grantee)) is not None:
            resource["grantee"] = [ref]
        if recorder:
            resource["manager"] = [_ref("Organization", ORG_SYSTEM, recorder)]
    return resource


# -- import ---------------------------------------------------------------------------------


def _validate(resource: dict[str, Any], version: str) -> None:
    """Check the resource against fhir.resources' model of that version (R4 via R4B)."""
    try:
        if version == "R4":
            from fhir.resources.R4B.consent import Consent as ConsentR4

            ConsentR4.model_validate(resource)
        else:
            from fhir.resources.consent import Consent as ConsentR5

            ConsentR5.model_validate(resource)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        raise FhirConsentError(
            f"not a valid FHIR {version} Consent: {' '.join(first[:3])}"
        ) from None


def _version(resource: dict[str, Any]) -> str:
    if "patient" in resource or "scope" in resource or isinstance(resource.get("provision"), dict):
        return "R4"
    return "R5"


def _pid(ref: Any, where: str) -> str:
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    if not isinstance(ident, dict) or ident.get("system") != PID_SYSTEM:
        raise FhirConsentError(f"{where}: the patient is referenced by pid ({PID_SYSTEM})")
    value = ident.get("value")
    if not isinstance(value, str) or len(value) != 64:
        raise FhirConsentError(f"{where}: a pid is 64 hex characters")
    return value


def from_fhir(resource: dict[str, Any]) -> dict[str, Any]:
    """The `consent.grant` body a FHIR Consent (R4 or R5 shape) stands for."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        raise FhirConsentError("resourceType: expected Consent")
    version = _version(resource)
    _validate(resource, version)
    if resource.get("status") != "active":
        raise FhirConsentError(
            f"status: only an active consent can be granted, not {resource.get('status')!r}"
        )
    extensions = {e.get("url"): e for e in resource.get("extension", []) if isinstance(e, dict)}

    if version == "R4":
        if "patient" not in resource:
            raise FhirConsentError("patient: missing")
        pid = _pid(resource["patient"], "patient")
        provision = resource.get("provision") or {}
        if provision.get("type", "permit") != "permit":
            raise FhirConsentError("provision.type: only permit (deny is a consortium policy)")
        period = provision.get("period") or {}
        fallback_start = resource.get("dateTime")
    else:
        if "subject" not in resource:
            raise FhirConsentError("subject: the patient is missing")
        pid = _pid(resource["subject"], "subject")
        if resource.get("decision", "permit") != "permit":
            raise FhirConsentError("decision: only permit (deny is a consortium policy)")
        provisions = resource.get("provision") or [{}]
        if len(provisions) != 1:
            raise FhirConsentError("provision: exactly one provision is supported")
        provision = provisions[0]
        period = resource.get("period") or provision.get("period") or {}
        fallback_start = resource.get("date")
    if provision.get("provision"):
        raise FhirConsentError("provision.provision: nested exceptions are not supported")

    # Grantee: a study extension, R5 `grantee`, or an R4 actor with role IRCP.
    grantee = None
    for url in STUDY_URL.values():
        if url in extensions:
            ref = extensions[url].get("valueReference") or {}
            ident = ref.get("identifier") or {}
            if ident.get("system") != STUDY_SYSTEM or not isinstance(ident.get("value"), str):
                raise FhirConsentError(
                    f"extension {url}: the study is referenced by {STUDY_SYSTEM}"
                )
            grantee = f"study:{ident['value']}"
    actors = [a for a in provision.get("actor", []) if isinstance(a, dict)]
    recipients = [a for a in actors if _has_role(a, "IRCP")]
    if version == "R5":
        grantees = resource.get("grantee") or []
        if len(grantees) > 1:
            raise FhirConsentError("grantee: one grantee per consent")
        if grantees:
            grantee = _grantee_of(grantees[0], "grantee[0]")
    if recipients:
        if len(recipients) > 1 or grantee is not None:
            raise FhirConsentError("provision.actor: one grantee per consent")
        grantee = _grantee_of(recipients[0].get("reference"), "provision.actor (IRCP)")
    if grantee is None:
        raise FhirConsentError("grantee: no grantee (organization, practitioner or study)")

    custodians = [a for a in actors if _has_role(a, "CST")]
    custodian = "*"
    if custodians:
        ref = custodians[0].get("reference") or {}
        ident = ref.get("identifier") or {}
        if len(custodians) > 1 or ident.get("system") != ORG_SYSTEM:
            raise FhirConsentError(f"provision.actor (CST): one custodian, by {ORG_SYSTEM}")
        custodian = str(ident["value"])

    purposes = [
        PURPOSE_OF_CODE[p["code"]]
        for p in provision.get("purpose", [])
        if p.get("system") == ACT_REASON and p.get("code") in PURPOSE_OF_CODE
    ]
    if not purposes and version == "R4":
        codes = [c.get("code") for c in (resource.get("scope") or {}).get("coding", [])]
        purposes = [c for c in codes if c in ("treatment", "research")]
    if len(set(purposes)) != 1:
        raise FhirConsentError("provision.purpose: exactly one of TREAT, ETREAT, HRESCH")

    categories: list[str] = []
    for i, concept in enumerate(provision.get("code", [])):
        codes = [
            c.get("code") for c in concept.get("coding", []) if c.get("system") == CATEGORY_SYSTEM
        ]
        if not codes or codes[0] not in CATEGORIES:
            raise FhirConsentError(
                f"provision.code[{i}]: a category of {CATEGORY_SYSTEM} ({', '.join(CATEGORIES)})"
            )
        categories.append(codes[0])

    start = period.get("start", fallback_start)
    if start is None:
        raise FhirConsentError("period.start: when does the consent start?")
    evidence = b""
    if EVIDENCE_URL in extensions:
        try:
            evidence = base64.b64decode(
                extensions[EVIDENCE_URL]["valueBase64Binary"], validate=True
            )
        except (KeyError, ValueError):
            raise FhirConsentError(f"extension {EVIDENCE_URL}: base64 SHA-256") from None
    return {
        "pid": pid,
        "grantee": grantee,
        "categories": sorted(categories) if categories else ["*"],
        "purpose": purposes[0],
        "start_ms": _ms(start, "period.start"),
        "end_ms": _ms(period["end"], "period.end") if period.get("end") else 0,
        "custodian": custodian,
        "evidence_hash": evidence,
    }
