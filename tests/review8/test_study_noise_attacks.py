"""Review of session 8's study queries (issue 18): the noise each answerer adds. The masked
answers are on the chain and their sum is every cell's total (noise included): whatever a
cell's noise does not cover, any member reads exactly, suppressed or not."""

from __future__ import annotations

import hashlib
from typing import Any

from medledger.contracts import study_query as sq
from medledger.contracts.study_query import PatientFacts

#: A cholesterol-like range (mg/dL): wide enough that a square's high 32 bits are not zero.
WIDE: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": "http://loinc.org", "code": "2093-3"}],
        "value": {"min": 0, "max": 1000, "unit": "mg/dL"},
    },
    "statistics": [{"kind": "count"}, {"kind": "mean"}, {"kind": "stddev"}],
    "age_on": "2026-01-01",
    "epsilon": "1",
}


def _patient(value: int) -> PatientFacts:
    return PatientFacts(sex="female", matched={"cohort": True}, value=("2025-06-01", value))


def _on_chain(q: sq.StudyQuery, patients: list[PatientFacts], seeds: list[bytes]) -> list[int]:
    """What any member sums from the public answers: every answerer's tally plus its noise
    (the masks cancel). Here one answerer holds everybody; the others add their noise."""
    totals = sq.tally(q, patients)
    for seed in seeds:
        totals = [t + n for t, n in zip(totals, sq.answer_noise(q, seed), strict=True)]
    return totals


def test_two_noised_queries_one_patient_apart_do_not_give_that_patients_square_exactly() -> None:
    """Finding: `sumsq.hi` (the high 32 bits of each square) had sensitivity 0, hence no noise.
    A sponsor runs the same noised query twice, the second one's date range leaving out one
    patient, sums each query's answers on the chain and subtracts: the high cell's difference
    was exactly that patient's (value - min)^2 >> 32, i.e. the value to a few mg/dL."""
    q = sq.parse(WIDE)
    others = [_patient(v) for v in (180_000, 210_500, 250_000, 199_000, 305_000, 150_000)]
    target = _patient(512_000)  # 512 mg/dL
    hi = sq.cells(q).index("all/sumsq.hi")
    first = _on_chain(
        q, [*others, target], [hashlib.sha256(b"q1" + o).digest() for o in (b"a", b"b", b"c")]
    )
    second = _on_chain(q, others, [hashlib.sha256(b"q2" + o).digest() for o in (b"a", b"b", b"c")])
    exact = (target.value[1] ** 2) >> 32  # type: ignore[index]
    assert exact > 0
    assert first[hi] - second[hi] != exact


def test_the_high_square_cell_is_noised_when_a_square_can_reach_it() -> None:
    q = sq.parse(WIDE)
    hi = sq.cells(q).index("all/sumsq.hi")
    draws = [sq.answer_noise(q, hashlib.sha256(bytes([i])).digest())[hi] for i in range(8)]
    assert any(draws)
    # A narrow range (HbA1c %, squares under 2^32) leaves it 0 for everybody: nothing to hide.
    narrow = sq.parse({**WIDE, "cohort": {**WIDE["cohort"], "value": {"min": 3, "max": 20}}})
    at = sq.cells(narrow).index("all/sumsq.hi")
    assert not any(
        sq.answer_noise(narrow, hashlib.sha256(bytes([i])).digest())[at] for i in range(8)
    )


def _moved(q: sq.StudyQuery, patient: PatientFacts) -> int:
    """How many published cells one patient moves (each one a release of the epsilon)."""
    return sum(1 for x in sq.tally(q, [patient]) if x)


def test_epsilon_is_split_over_every_cell_one_patient_moves() -> None:
    """Finding: a query asking only a histogram (or only a 2x2 table) still publishes each
    stratum's `patients` cell, noised with the full epsilon but not counted among the
    releases: the query cost twice the epsilon the budget was charged."""
    table = {
        "kind": "table2x2",
        "rows": {"types": ["Condition"]},
        "columns": {"types": ["MedicationRequest"]},
    }
    histogram = {"kind": "histogram", "edges": [0, 200, 240, 1000]}
    patient = PatientFacts(
        sex="female",
        matched={"cohort": True, "rows": True},
        value=("2025-06-01", 999_000),
        unit_mismatch=1,  # and a result in mmol/L: the global unit_mismatch cell too
    )
    for statistics in (
        [histogram],
        [table],
        [histogram, table],
        [{"kind": "count"}, histogram],
        [{"kind": "stddev"}],
        [{"kind": "mean"}, {"kind": "stddev"}, histogram, table],
    ):
        q = sq.parse({**WIDE, "statistics": statistics})
        assert sq.releases_per_patient(q) == _moved(q, patient), statistics
