"""A FHIR record against a query's criterion, as hospitals' systems write them."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import pytest

from medledger.contracts.study_query import Code, Criterion
from medledger.research.evaluate import clinical_date, fixed, match

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"

HBA1C = Criterion(
    types=("Observation",),
    codes=(Code(LOINC, "4548-4"),),
    value_min=3000,
    value_max=20000,
    unit="%",
    date_from="2020-01-01",
    date_to="2026-12-31",
)


def hba1c(value: Any, unit: str = "%", code: str | None = "%", **more: Any) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value, "unit": unit, "system": UCUM}
    if code is not None:
        quantity["code"] = code
    return {
        "resourceType": "Observation",
        "id": "lab-778812",  # the sender's own id
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "urn:oid:1.2.250.1.213.2.12", "code": "A1C-LOCAL"},
                {"system": LOINC, "code": "4548-4", "display": "Hemoglobin A1c"},
            ]
        },
        "subject": {"reference": "Patient/ipp-0042"},
        "performer": [{"reference": "Practitioner/pr-99"}, {"reference": "Organization/lab-1"}],
        "effectiveDateTime": "2025-03-02T08:10:00+01:00",
        "issued": "2025-03-02T11:40:12.120+01:00",
        "valueQuantity": quantity,
        **more,
    }


def test_a_lab_result_in_range_matches_with_its_date_and_fixed_point_value() -> None:
    found = match(hba1c(6.9), HBA1C)
    assert found.ok and found.value == ("2025-03-02", 6900)


def test_the_unit_is_compared_with_the_ucum_code_or_the_printed_unit() -> None:
    assert match(hba1c(7.25, unit="percent", code="%"), HBA1C).value == ("2025-03-02", 7250)
    assert match(hba1c(7.25, unit="%", code=None), HBA1C).ok


def test_the_same_test_in_another_unit_does_not_match_and_says_why() -> None:
    found = match(hba1c(52, unit="mmol/mol", code="mmol/mol"), HBA1C)
    assert not found.ok and found.unit_mismatch


def test_values_and_dates_outside_the_ranges_do_not_match() -> None:
    assert not match(hba1c(25), HBA1C).ok
    assert not match(hba1c(2.5), HBA1C).ok
    assert not match(hba1c(6.1, effectiveDateTime="2019-12-31T23:00:00Z"), HBA1C).ok
    assert match(hba1c(20), HBA1C).ok  # bounds are inclusive
    assert not match(hba1c("6.1"), HBA1C).ok  # a string is no quantity
    assert not match(hba1c(True), HBA1C).ok


def test_another_code_or_type_does_not_match() -> None:
    glucose = hba1c(6.0)
    glucose["code"] = {"coding": [{"system": LOINC, "code": "2345-7"}]}
    assert not match(glucose, HBA1C).ok
    assert not match({**hba1c(6.0), "resourceType": "DiagnosticReport"}, HBA1C).ok


def test_a_condition_matches_on_any_of_its_codings_and_its_onset_period() -> None:
    diabetes = {
        "resourceType": "Condition",
        "code": {
            "coding": [
                {"system": ICD10, "code": "E11.9"},
                {"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"},
            ]
        },
        "subject": {"reference": "Patient/ipp-0042"},
        "onsetPeriod": {"start": "2018-05-01"},
        "recordedDate": "2021-01-04",
    }
    wanted = Criterion(types=("Condition",), codes=(Code(SNOMED, "44054006"),))
    assert match(diabetes, wanted).ok
    assert clinical_date(diabetes) == "2018-05-01"
    dated = Criterion(types=("Condition",), date_from="2020-01-01")
    assert not match(diabetes, dated).ok  # the onset comes first, not the recorded date


def test_a_medication_request_matches_on_its_rxnorm_coding() -> None:
    metformin = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {"system": ATC, "code": "A10BA02"},
                {"system": RXNORM, "code": "6809", "display": "metformin"},
            ]
        },
        "subject": {"reference": "Patient/ipp-0042"},
        "requester": {"reference": "Practitioner/pr-99"},
        "authoredOn": "2024-11-20",
    }
    assert match(
        metformin, Criterion(types=("MedicationRequest",), codes=(Code(RXNORM, "6809"),))
    ).ok
    assert not match(
        metformin, Criterion(types=("MedicationRequest",), codes=(Code(RXNORM, "1"),))
    ).ok
    assert match(metformin, Criterion(types=("MedicationRequest",))).ok  # no codes: any


def test_fixed_point_rounds_half_to_even() -> None:
    assert fixed(7.2345) == 7234 and fixed(7.2355) == 7236 and fixed(12) == 12000
    assert fixed(float("nan")) is None and fixed(None) is None


@pytest.mark.parametrize(
    "value",
    [7.4, -0.5, -0.0, 0.0005, 0.0015, 123456.789, 1e-7, 1e16, 1e22, 2.5e-3, -1.2345, 5, -5]
    + [10**17, 10**18, -(10**30), 4.55, 11.5, 98.6, 0.1 + 0.2, float("inf"), True],
)
def test_fixed_point_of_any_number_is_the_decimal_reading_of_its_text(value: object) -> None:
    # Short lab values skip Decimal: the result must be exactly what Decimal gives.
    try:
        exact = (Decimal(str(value)) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
        expected = int(exact) if exact.is_finite() and not isinstance(value, bool) else None
    except InvalidOperation:
        expected = None
    assert fixed(value) == expected
