"""A sender's status outside FHIR R4's required value set (`"status": "bogus"`, an R5 code
sent as R4, an upper-case code): refused at the door, naming the field and the codes FHIR
allows, never stored to be missed by every `status=` search afterwards. Valid codes of each
indexed type pass."""

from __future__ import annotations

import orjson
import pytest

from medledger.interop.validate import validate_resource
from tests.api.conftest import Api

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _observation(patient: str, status: str) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2016-03-28",
        "valueQuantity": {"value": 85, "unit": "kg", "system": "http://unitsofmeasure.org"},
    }


@pytest.mark.parametrize("status", ["bogus", "FINAL", "discharged"])
def test_an_observation_with_a_status_fhir_does_not_know_is_refused(api: Api, status: str) -> None:
    headers = {**api.token("Practitioner/dr-martin", "user/*.cruds"), **FHIR_JSON}
    response = api.client.post(
        "/fhir/Observation",
        content=orjson.dumps(_observation(api.patient_rid, status)),
        headers=headers,
    )
    assert response.status_code == 422
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "field status" in diagnostics and "entered-in-error" in diagnostics
    assert status not in diagnostics.replace("entered-in-error", "")  # the value is not echoed

    kept = api.client.post(
        "/fhir/Observation",
        content=orjson.dumps(_observation(api.patient_rid, "final")),
        headers=headers,
    )
    assert kept.status_code == 201


@pytest.mark.parametrize(
    ("resource", "field"),
    [
        ({"resourceType": "Patient", "gender": "M"}, "gender"),
        (
            {
                "resourceType": "Encounter",
                "status": "discharged",  # R5's, not R4's
                "class": {"code": "IMP"},
            },
            "status",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "prescription",
                "medicationCodeableConcept": {"text": "x"},
                "subject": {"reference": "Patient/p"},
            },
            "intent",
        ),
        (
            {
                "resourceType": "DocumentReference",
                "status": "final",
                "content": [{"attachment": {"url": "http://x/doc"}}],
            },
            "status",
        ),
    ],
)
def test_each_indexed_type_names_its_field(resource: dict[str, object], field: str) -> None:
    problems, _ = validate_resource(resource, "R4")
    assert [p.field for p in problems] == [field]
    r5_fields = [p.field for p in validate_resource(resource, "R5")[0]]
    # `discharged` is an R5 Encounter status (tried as R5 when R4 refuses); the others no
    assert (field in r5_fields) == (resource["resourceType"] != "Encounter")
