"""Which resources belong to a patient, and through which of their fields: the FHIR Patient
compartment.

medledger stores every clinical resource as one patient's record, under that patient's
pseudonym, keys and consents; the hospital's other resources (its practitioners,
organisations, locations, medications, devices...) are its *supporting* resources, stored
with no patient. Which is which is not ours to invent: the FHIR CompartmentDefinition for
Patient lists the resource types that may be in a patient's compartment and, for each, the
search parameters that link it to the patient. The tables below are those definitions
(R4 4.0.1, which R4B 4.3.0 keeps for every type it shares, and R5 5.0.0), each parameter
written as the element path its search expression reads (`Encounter.patient` is
`Encounter.subject`, `Appointment.actor` is `Appointment.participant.actor`...), in the
definition's order: the first path that names a Patient is the resource's patient.

A type in the compartment of either version is clinical in both (an R4 Task whose `for` is a
patient is that patient's record, as R5 says); `Device` is in neither (R4 has an optional
`Device.patient` but no compartment link; R5 moved the link to DeviceAssociation), so a
Device is a supporting resource.
"""

from __future__ import annotations

import functools
from typing import Any

from medledger.interop.validate import FhirVersion, model_class, reference_path

#: R4 (4.0.1; R4B 4.3.0 adds no member): type -> element paths of its compartment parameters.
_R4: dict[str, tuple[str, ...]] = {
    "Account": ("subject",),
    "AdverseEvent": ("subject",),
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "Appointment": ("participant.actor",),
    "AppointmentResponse": ("actor",),
    "AuditEvent": ("agent.who", "entity.what"),
    "Basic": ("subject", "author"),
    "BodyStructure": ("patient",),
    "CarePlan": ("subject", "activity.detail.performer"),
    "CareTeam": ("subject", "participant.member"),
    "ChargeItem": ("subject",),
    "Claim": ("patient", "payee.party"),
    "ClaimResponse": ("patient",),
    "ClinicalImpression": ("subject",),
    "Communication": ("subject", "sender", "recipient"),
    "CommunicationRequest": ("subject", "sender", "recipient", "requester"),
    "Composition": ("subject", "author", "attester.party"),
    "Condition": ("subject", "asserter"),
    "Consent": ("patient",),
    "Coverage": ("policyHolder", "subscriber", "beneficiary", "payor"),
    "CoverageEligibilityRequest": ("patient",),
    "CoverageEligibilityResponse": ("patient",),
    "DetectedIssue": ("patient",),
    "DeviceRequest": ("subject", "performer"),
    "DeviceUseStatement": ("subject",),
    "DiagnosticReport": ("subject",),
    "DocumentManifest": ("subject", "author", "recipient"),
    "DocumentReference": ("subject", "author"),
    "Encounter": ("subject",),
    "EnrollmentRequest": ("candidate",),
    "EpisodeOfCare": ("patient",),
    "ExplanationOfBenefit": ("patient", "payee.party"),
    "FamilyMemberHistory": ("patient",),
    "Flag": ("subject",),
    "Goal": ("subject",),
    "Group": ("member.entity",),
    "ImagingStudy": ("subject",),
    "Immunization": ("patient",),
    "ImmunizationEvaluation": ("patient",),
    "ImmunizationRecommendation": ("patient",),
    "Invoice": ("subject", "recipient"),
    "List": ("subject", "source"),
    "MeasureReport": ("subject",),
    "Media": ("subject",),
    "MedicationAdministration": ("subject", "performer.actor"),
    "MedicationDispense": ("subject", "receiver"),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "MolecularSequence": ("patient",),
    "NutritionOrder": ("patient",),
    "Observation": ("subject", "performer"),
    "Patient": ("link.other",),
    "Person": ("link.target",),
    "Procedure": ("subject", "performer.actor"),
    "Provenance": ("target",),
    "QuestionnaireResponse": ("subject", "author"),
    "RelatedPerson": ("patient",),
    "RequestGroup": ("subject", "action.participant"),
    "ResearchSubject": ("individual",),
    "RiskAssessment": ("subject",),
    "Schedule": ("actor",),
    "ServiceRequest": ("subject", "performer"),
    "Specimen": ("subject",),
    "SupplyDelivery": ("patient",),
    "SupplyRequest": ("deliverTo",),
    "VisionPrescription": ("patient",),
}

#: R5 (5.0.0). Appointment also reads `subject`, where R5 puts the patient its `patient`
#: parameter searches.
_R5: dict[str, tuple[str, ...]] = {
    "Account": ("subject",),
    "AdverseEvent": ("subject",),
    "AllergyIntolerance": ("patient", "participant.actor"),
    "Appointment": ("subject", "participant.actor"),
    "AppointmentResponse": ("actor",),
    "AuditEvent": ("patient",),
    "Basic": ("subject", "author"),
    "BiologicallyDerivedProductDispense": ("patient",),
    "BodyStructure": ("patient",),
    "CarePlan": ("subject",),
    "CareTeam": ("subject", "participant.member"),
    "ChargeItem": ("subject",),
    "Claim": ("patient", "payee.party"),
    "ClaimResponse": ("patient",),
    "ClinicalImpression": ("subject",),
    "Communication": ("subject", "sender", "recipient"),
    "CommunicationRequest": ("subject", "informationProvider", "recipient", "requester"),
    "Composition": ("subject", "author", "attester.party"),
    "Condition": ("subject", "participant.actor"),
    "Consent": ("subject",),
    "Contract": ("subject",),
    "Coverage": ("policyHolder", "subscriber", "beneficiary", "paymentBy.party"),
    "CoverageEligibilityRequest": ("patient",),
    "CoverageEligibilityResponse": ("patient",),
    "DetectedIssue": ("subject",),
    "DeviceAssociation": ("subject", "operation.operator"),
    "DeviceRequest": ("subject", "performer.reference"),  # a CodeableReference in R5
    "DeviceUsage": ("patient",),
    "DiagnosticReport": ("subject",),
    "DocumentReference": ("subject", "author"),
    "Encounter": ("subject",),
    "EncounterHistory": ("subject",),
    "EnrollmentRequest": ("candidate",),
    "EpisodeOfCare": ("patient",),
    "ExplanationOfBenefit": ("patient", "payee.party"),
    "FamilyMemberHistory": ("patient",),
    "Flag": ("subject",),
    "GenomicStudy": ("subject",),
    "Goal": ("subject",),
    "Group": ("member.entity",),
    "GuidanceResponse": ("subject",),
    "ImagingSelection": ("subject",),
    "ImagingStudy": ("subject",),
    "Immunization": ("patient",),
    "ImmunizationEvaluation": ("patient",),
    "ImmunizationRecommendation": ("patient",),
    "Invoice": ("subject", "recipient"),
    "List": ("subject", "source"),
    "MeasureReport": ("subject",),
    "MedicationAdministration": ("subject",),
    "MedicationDispense": ("subject", "receiver"),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "MolecularSequence": ("subject",),
    "NutritionIntake": ("subject", "reportedReference"),
    "NutritionOrder": ("subject",),
    "Observation": ("subject", "performer"),
    "Patient": ("link.other",),
    "Person": ("link.target",),
    "Procedure": ("subject", "performer.actor"),
    "Provenance": ("patient",),
    "QuestionnaireResponse": ("subject", "author"),
    "RelatedPerson": ("patient",),
    "RequestOrchestration": ("subject", "action.participant.actorReference"),
    "ResearchSubject": ("subject",),
    "RiskAssessment": ("subject",),
    "Schedule": ("actor",),
    "ServiceRequest": ("subject", "performer"),
    "Specimen": ("subject",),
    "SupplyDelivery": ("patient",),
    "SupplyRequest": ("deliverFor",),
    "Task": ("for", "focus"),
    "VisionPrescription": ("patient",),
}

COMPARTMENT: dict[FhirVersion, dict[str, tuple[str, ...]]] = {"R4": _R4, "R5": _R5}
_CLINICAL = frozenset(_R4) | frozenset(_R5)


def is_supporting(resource_type: str) -> bool:
    """True for a type FHIR never puts in a patient's compartment (Practitioner, Organization,
    Location, Medication, Device, Substance, HealthcareService, Endpoint...): stored as the
    hospital's, with no patient. False for Patient and every clinical type."""
    return resource_type not in _CLINICAL


@functools.lru_cache(maxsize=512)  # bounded: resource types come from the input
def patient_links(version: FhirVersion, resource_type: str) -> tuple[str, ...]:
    """The element paths that may name a clinical resource's patient, first one first.

    A type in the other version's compartment only borrows its paths that exist here.
    """
    own = COMPARTMENT[version].get(resource_type)
    if own is not None:
        return own
    other = COMPARTMENT["R5" if version == "R4" else "R4"].get(resource_type, ())
    model: Any = model_class(version, resource_type)
    if model is None:
        return ()
    return tuple(path for path in other if reference_path(model, path))


__all__ = ["COMPARTMENT", "is_supporting", "patient_links"]
