"""The index metadata of a record: what a hospital may see of a record without reading it.

Each record's index entry on the chain carries `meta_ct`, these few fields encrypted under the
custodian's key for the patient. They let a clinician's timeline list "HbA1c, 2024-03-02,
labs" across hospitals, and let consent contracts decide by category, without fetching the
resource. So the fields are deliberately small and never copy a direct identifier: a Patient's
title is "Patient", not a name, and its date is not the birth date. They are bounded
(`TITLE_MAX` characters of title, `CODE_MAX` of code) so that, sealed and padded
(`indexing.seal_meta`), they always fit the fixed sizes the chain accepts.

`CATEGORIES` is the fixed vocabulary consents are written in ("share my labs and imaging with
hospital B"). Mapping is by resource type, refined by Observation.category and
DiagnosticReport.category: a laboratory report is `labs`, a radiology report `imaging`, so that
a consent to a category covers the reports of that kind too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The consent categories are part of the consensus rules, so they live with the contracts.
from medledger.contracts.categories import CATEGORIES as CATEGORIES

_BY_TYPE: dict[str, str] = {
    "Patient": "demographics",
    "RelatedPerson": "demographics",
    "Encounter": "encounters",
    "EpisodeOfCare": "encounters",
    "Appointment": "encounters",
    "Condition": "conditions",
    "AllergyIntolerance": "allergies",
    "MedicationRequest": "medications",
    "MedicationStatement": "medications",
    "MedicationAdministration": "medications",
    "MedicationDispense": "medications",
    "Immunization": "immunizations",
    "ImmunizationRecommendation": "immunizations",
    "Specimen": "labs",
    "Observation": "observations",
    "DiagnosticReport": "diagnostic-reports",
    "ImagingStudy": "imaging",
    "Media": "imaging",
    "Procedure": "procedures",
    "ServiceRequest": "procedures",
    "CarePlan": "care-plans",
    "CareTeam": "care-plans",
    "Goal": "care-plans",
    "DocumentReference": "documents",
    "Composition": "documents",
    "Binary": "documents",
    "Bundle": "documents",  # a document as received (its entries decide who reads it whole)
    "Coverage": "administrative",
    "Consent": "administrative",
    "Claim": "administrative",
    "ExplanationOfBenefit": "administrative",
}

_OBSERVATION_CATEGORY: dict[str, str] = {
    "laboratory": "labs",
    "vital-signs": "vital-signs",
    "imaging": "imaging",
    "procedure": "procedures",
}
#: DiagnosticReport.category codes (HL7 v2 table 0074 "diagnostic service section").
_REPORT_CATEGORY: dict[str, str] = {
    "LAB": "labs",
    "CH": "labs",
    "HM": "labs",
    "MB": "labs",
    "SP": "labs",
    "IMM": "labs",
    "SR": "labs",
    "BLB": "labs",
    "CP": "labs",
    "RAD": "imaging",
    "CT": "imaging",
    "MR": "imaging",
    "NMR": "imaging",
    "NMS": "imaging",
    "RUS": "imaging",
    "VUS": "imaging",
    "XRC": "imaging",
    "CUS": "imaging",
}
#: LOINC codes that are vital signs even when a sender forgot the category.
VITAL_SIGN_LOINC = frozenset(
    {
        "85353-1",
        "85354-9",
        "8480-6",
        "8462-4",
        "8867-4",
        "9279-1",
        "8310-5",
        "2708-6",
        "59408-5",
        "29463-7",
        "8302-2",
        "39156-5",
        "9843-4",
    }
)
TITLE_MAX = 80
#: A `system|code` longer than this is not a code: it is left out of the index.
CODE_MAX = 200
LOINC = "http://loinc.org"
_MEDICATION_TYPES = frozenset(
    {"MedicationRequest", "MedicationStatement", "MedicationAdministration", "MedicationDispense"}
)


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    if isinstance(concept, list):
        return [c for x in concept for c in _codings(x)]
    if isinstance(concept, dict | Mapping):  # dict first: no ABC check for JSON
        if "concept" in concept:  # R5 CodeableReference
            return _codings(concept.get("concept"))
        return [c for c in concept.get("coding") or [] if isinstance(c, dict | Mapping)]
    return []


def _text(concept: Any) -> str | None:
    if isinstance(concept, list):
        for x in concept:
            found = _text(x)
            if found:
                return found
        return None
    if isinstance(concept, Mapping):
        if "concept" in concept:
            return _text(concept.get("concept"))
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            return str(concept["text"]).strip()
        for coding in _codings(concept):
            if isinstance(coding.get("display"), str) and coding["display"].strip():
                return str(coding["display"]).strip()
    return None


def _main_concept(resource: Mapping[str, Any]) -> Any:
    """The concept that says what the record is (its "code"), per resource type, R4 and R5."""
    rt = resource.get("resourceType")
    if rt in _MEDICATION_TYPES:
        return (
            resource.get("medicationCodeableConcept")  # R4
            or resource.get("medication")  # R5 CodeableReference
        )
    if rt == "Immunization":
        return resource.get("vaccineCode")
    if rt == "Encounter":
        return resource.get("type") or resource.get("serviceType") or resource.get("class")
    if rt == "ImagingStudy":
        return (
            resource.get("procedureCode")  # R4
            or resource.get("procedure")  # R5
            or [{"coding": resource.get("modality")}]
        )
    if rt in ("DocumentReference", "Composition"):
        return resource.get("type")
    if rt == "AllergyIntolerance":
        return resource.get("code")
    if rt == "Consent":
        return resource.get("category")
    if rt == "CarePlan":
        return resource.get("category")
    return resource.get("code")


def _first_code(concept: Any) -> str | None:
    # R4 Encounter.class is a bare Coding
    if (
        isinstance(concept, Mapping)
        and isinstance(concept.get("code"), str)
        and isinstance(concept.get("system"), str)
    ):
        found = f"{concept['system']}|{concept['code']}"
        return found if len(found) <= CODE_MAX else None
    for coding in _codings(concept):
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str):
            found = f"{system}|{code}"
            return found if len(found) <= CODE_MAX else None
    return None


def _category_codes(resource: Mapping[str, Any]) -> list[str]:
    return [
        str(c.get("code"))
        for c in _codings(resource.get("category"))
        if isinstance(c.get("code"), str)
    ]


def category_of(resource: Mapping[str, Any]) -> str:
    """The consent category of a resource (one of `CATEGORIES`)."""
    rt = resource.get("resourceType")
    if rt == "Observation":
        for code in _category_codes(resource):
            if code in _OBSERVATION_CATEGORY:
                return _OBSERVATION_CATEGORY[code]
        loinc = {c.get("code") for c in _codings(resource.get("code")) if c.get("system") == LOINC}
        if loinc & VITAL_SIGN_LOINC:
            return "vital-signs"
        return "observations"
    if rt == "DiagnosticReport":
        for code in _category_codes(resource):
            if code in _REPORT_CATEGORY:
                return _REPORT_CATEGORY[code]
        return "diagnostic-reports"
    return _BY_TYPE.get(str(rt), "other")


def categories_of_type(resource_type: str) -> frozenset[str]:
    """Every category a resource of this type can fall in (`category_of` refines Observation
    and DiagnosticReport by their content): a reader that wants only some categories leaves
    a record whose type can fall in none of them unopened."""
    if resource_type == "Observation":
        return frozenset({*_OBSERVATION_CATEGORY.values(), "vital-signs", "observations"})
    if resource_type == "DiagnosticReport":
        return frozenset({*_REPORT_CATEGORY.values(), "diagnostic-reports"})
    return frozenset({_BY_TYPE.get(resource_type, "other")})


def types_in(categories: Iterable[str]) -> frozenset[str] | None:
    """The resource types whose records can fall in these categories (`categories_of_type`);
    None when "other" is among them (any type this module does not name falls there)."""
    wanted = frozenset(categories)
    if "other" in wanted:
        return None
    return frozenset(
        t for t in {*_BY_TYPE, "Observation", "DiagnosticReport"} if categories_of_type(t) & wanted
    )


def main_codings(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(system, code) of every coding of the concept that says what the record is."""
    concept = _main_concept(resource)
    if isinstance(concept, Mapping) and "code" in concept and "system" in concept:
        concept = {"coding": [concept]}  # R4 Encounter.class is a bare Coding
    return [
        (str(c["system"]), str(c["code"]))
        for c in _codings(concept)
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]


def _date(value: Any) -> str | None:
    """The date part of a FHIR date/dateTime/instant (partial dates such as 2024-03 are kept)."""
    if isinstance(value, str) and len(value) >= 4:
        return value[:10]
    if isinstance(value, Mapping):  # Period
        return _date(value.get("start")) or _date(value.get("end"))
    return None


_DATE_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
    "Condition": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "Encounter": ("period", "actualPeriod", "plannedStartDate"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "MedicationAdministration": (
        "effectiveDateTime",
        "effectivePeriod",
        "occurenceDateTime",  # sic, R5
        "occurencePeriod",
    ),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "AllergyIntolerance": ("onsetDateTime", "recordedDate"),
    "ImagingStudy": ("started",),
    "Procedure": ("performedDateTime", "performedPeriod", "occurrenceDateTime", "occurrencePeriod"),
    "Immunization": ("occurrenceDateTime",),
    "DocumentReference": ("date",),
    "Composition": ("date",),
    "CarePlan": ("period", "created"),
    "Consent": ("dateTime", "date"),
    "ServiceRequest": ("occurrenceDateTime", "authoredOn"),
    "Specimen": ("receivedTime",),
}


def date_of(resource: Mapping[str, Any]) -> str | None:
    """The clinically relevant date (YYYY-MM-DD, or partial), never a Patient's birth date."""
    rt = str(resource.get("resourceType"))
    if rt == "Patient":
        return None
    for name in _DATE_FIELDS.get(rt, ("effectiveDateTime", "date", "period", "authoredOn")):
        found = _date(resource.get(name))
        if found:
            return found
    meta = resource.get("meta")
    if isinstance(meta, Mapping):
        return _date(meta.get("lastUpdated"))
    return None


def title_of(resource: Mapping[str, Any]) -> str:
    """A short display: the text or display of the main code, else the resource type."""
    rt = str(resource.get("resourceType") or "Resource")
    if rt == "Patient":
        return "Patient"
    text = _text(_main_concept(resource))
    if rt == "DocumentReference" and not text and isinstance(resource.get("description"), str):
        text = resource["description"]
    if rt == "ImagingStudy" and not text and isinstance(resource.get("description"), str):
        text = resource["description"]
    title = text or rt
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"


def extract_metadata(resource: Mapping[str, Any]) -> dict[str, str | None]:
    """`{type, category, code, date, title}` of a FHIR resource (R4 or R5), for the index.

    `code` is `system|code` of the main code (LOINC for an Observation...), `date` the
    clinically relevant ISO date; both may be None when the resource has none.
    """
    return {
        "type": str(resource.get("resourceType")),
        "category": category_of(resource),
        "code": None
        if resource.get("resourceType") == "Patient"
        else _first_code(_main_concept(resource)),
        "date": date_of(resource),
        "title": title_of(resource),
    }


def document_categories(bundle: Mapping[str, Any]) -> list[str]:
    """The categories of a document Bundle's entries (sorted, its supporting resources left
    out): a caller is given the document whole only if allowed every one of them, besides
    `documents`, the category of the Bundle itself."""
    from medledger.interop.fhir import is_supporting

    found: set[str] = set()
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(resource, Mapping) and not is_supporting(str(resource.get("resourceType"))):
            found.add(category_of(resource))
    return sorted(found)
