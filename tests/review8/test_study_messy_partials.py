"""Review of session 8's study queries (issue 18): what real lab feeds send must not stop a
query. A co-custodian's partial facts are checked by the receiver (`PatientFacts.from_obj`,
in `node.study_partials.check`); a refusal there refuses the sender's whole message, the
sender retries until the deadline, and the query ends incomplete for every hospital."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.contracts import study_query as sq
from medledger.contracts.study_query import PatientFacts
from medledger.research.evaluate import match

LOINC = "http://loinc.org"


def _lab(code: str, value: float, unit: str, when: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org"},
        **when,
    }


def _sent_and_received(q: sq.StudyQuery, resource: dict[str, Any]) -> PatientFacts:
    """The sender's facts of one record, through the wire form the receiver checks."""
    found = match(resource, q.cohort)
    assert found.ok
    facts = PatientFacts(matched={"cohort": True}, value=found.value)
    return PatientFacts.from_obj(facts.to_obj())


@pytest.mark.parametrize(
    "when",
    [
        {"effectiveDateTime": "2024-03"},  # FHIR dateTime: year and month only
        {"effectiveDateTime": "2024"},
        {"effectivePeriod": {"start": "2023-11"}},
        {"issued": "2024-03-05T09:12:00.000+01:00"},
    ],
)
def test_a_lab_result_dated_to_the_month_travels_to_the_answering_hospital(
    when: dict[str, Any],
) -> None:
    """Finding: the receiver took only YYYY-MM-DD as the value's date, so one result dated
    "2024-03" (valid FHIR, common in histories) refused its sender's whole message."""
    q = sq.parse(
        {
            "categories": ["labs"],
            "cohort": {"types": ["Observation"], "codes": [{"system": LOINC, "code": "4548-4"}]},
            "statistics": [{"kind": "count"}],
        }
    )
    received = _sent_and_received(q, _lab("4548-4", 7.1, "%", when))
    assert received.value is not None and received.value[1] == 7100
    # Its place in value_of's order: a month sorts before its days, a year before its months.
    assert sq.better_value(received.value, ("2024-03-06", 6500), "last") == ("2024-03-06", 6500)


def test_a_count_over_a_code_with_huge_values_is_not_refused_by_the_receiver() -> None:
    """Finding: a count-only query needs no value range, so a viral load of 3.2 million
    copies/mL was kept as the patient's value and the receiver refused it (over 10^6)."""
    q = sq.parse(
        {
            "categories": ["labs"],
            "cohort": {"types": ["Observation"], "codes": [{"system": LOINC, "code": "20447-9"}]},
            "statistics": [{"kind": "count"}],
        }
    )
    viral_load = _lab("20447-9", 3_200_000, "{copies}/mL", {"effectiveDateTime": "2025-02-11"})
    received = _sent_and_received(q, viral_load)
    assert received.matched == {"cohort": True}
    assert sq.tally(q, [received]) == [1]
