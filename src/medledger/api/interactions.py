"""Which FHIR interactions this server answers, per resource type: the one table.

The routes ask `check` before they do anything (404 for a type not served, 405 for an
interaction it does not offer) and the CapabilityStatement is written from the same table, so
the statement lists exactly what works and nothing else.
"""

from __future__ import annotations

from medledger.api.outcomes import FhirError

#: Patient-compartment record types stored in the vault and served as received.
RECORD_TYPES = (
    "AllergyIntolerance",
    "Condition",
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
_RECORD = ("read", "vread", "history-instance", "search-type", "create", "update")

#: The hospital's own resources that documents and messages carry (who acted, with what):
#: no patient's, read and created, not versioned through the API.
SUPPORTING_TYPES = (
    "Device",
    "Location",
    "Medication",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Substance",
)

#: type -> the interactions (FHIR `TypeRestfulInteraction` codes) its routes answer.
INTERACTIONS: dict[str, tuple[str, ...]] = {
    "Patient": _RECORD,
    **dict.fromkeys(RECORD_TYPES, _RECORD),
    **dict.fromkeys(SUPPORTING_TYPES, ("read", "create")),
    # A document as it was received (`GET /fhir/Bundle/<id>`).
    "Bundle": ("read",),
    # Consents are the consent contract's, seen as FHIR: no versions of their own.
    "Consent": ("read", "search-type", "create"),
    "AuditEvent": ("search-type",),
    # Studies and enrolments are the research contract's, seen as FHIR (api.research).
    "ResearchStudy": ("read", "search-type"),
    "ResearchSubject": ("search-type",),
}

#: The types searched by a fixed few parameters (not `search.TYPES`): (name, type, doc) each,
#: exactly what their routes apply; `_count` (and `_offset` for the pages) besides.
SEARCH_PARAMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "AuditEvent": (("patient", "reference", ""),),
    "ResearchStudy": (
        ("_id", "token", "the study's id"),
        ("identifier", "token", "urn:medledger:study|<id>, urn:medledger:ethics-approval|<ref>"),
        ("status", "token", "active, completed"),
    ),
    "ResearchSubject": (
        ("study", "reference", "ResearchStudy/<id>"),
        ("patient", "reference", "the patient's id here (or its pid)"),
        ("individual", "reference", "the same as patient"),
        ("status", "token", "on-study, withdrawn"),
    ),
}

#: type -> (operation name, its OperationDefinition).
OPERATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "Patient": (
        ("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything"),
        ("summary", "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"),
    ),
}

#: Whole-system interactions (`POST /fhir` with a transaction Bundle).
SYSTEM_INTERACTIONS = ("transaction",)


def offers(resource_type: str, interaction: str) -> bool:
    return interaction in INTERACTIONS.get(resource_type, ())


def check(resource_type: str, interaction: str) -> None:
    """404 for a type this server does not serve, 405 for an interaction it does not offer."""
    offered = INTERACTIONS.get(resource_type)
    if offered is None:
        raise FhirError(404, "not-supported", f"resource type {resource_type} is not served here")
    if interaction not in offered:
        raise FhirError(
            405,
            "not-supported",
            f"{interaction} is not offered on {resource_type} (offered: {', '.join(offered)})",
        )


def capability_resources() -> list[dict[str, object]]:
    """`CapabilityStatement.rest.resource` without search parameters (the search routes add
    theirs): type, interactions, versioning and operations, from the tables above."""
    resources: list[dict[str, object]] = []
    for resource_type, offered in INTERACTIONS.items():
        entry: dict[str, object] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in offered],
        }
        if "vread" in offered:
            entry |= {
                "versioning": "versioned",
                "readHistory": True,
                "updateCreate": True,  # stored under a server id, the sender's kept as its source
                "conditionalCreate": True,
            }
        if resource_type in OPERATIONS:
            entry["operation"] = [
                {"name": name, "definition": url} for name, url in OPERATIONS[resource_type]
            ]
        resources.append(entry)
    return resources
