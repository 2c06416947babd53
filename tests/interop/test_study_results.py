"""A query's published result as tables and charts: suppressed figures say so, never 0."""

from __future__ import annotations

import copy
from typing import Any

from medledger.contracts import study_query as sq
from medledger.interop.study_results import SUPPRESSED, charts, tables
from tests.contracts.test_study_query import EXAMPLE


def _result(doc: dict[str, Any], facts: list[sq.PatientFacts], k: int = 5) -> dict[str, Any]:
    q = sq.parse(doc)
    return sq.finish(q, sq.tally(q, facts), k)


def _woman(i: int, *, diabetic: bool) -> sq.PatientFacts:
    """A woman of 30 with an HbA1c of 5.1..6.2 %, diabetic or not, never on metformin."""
    return sq.PatientFacts(
        sex="female",
        birth_date="1995-06-01",
        matched={"cohort": True, "rows": diabetic, "columns": False},
        value=("2025-01-10", 5100 + 100 * i),
    )


def test_tables_show_a_large_stratum_and_mark_every_small_one_suppressed() -> None:
    doc = copy.deepcopy(EXAMPLE) | {"epsilon": 0}
    facts = [_woman(i, diabetic=i % 2 == 0) for i in range(12)]
    facts.append(sq.PatientFacts("male", "1990-01-01", {"cohort": True}, ("2025-01-01", 7000)))
    result = _result(doc, facts)
    by_name = {t.name: t for t in tables(doc, result)}
    assert list(by_name) == ["summary", "histogram", "quantiles", "table2x2", "global"]
    summary = {row[0]: row for row in by_name["summary"].rows}
    assert summary["sex=female,age=18-40"] == ("sex=female,age=18-40", "12", "5.650", "0.361")
    # The lone man is in a stratum under k: every figure of it says suppressed, none says 0.
    assert summary["sex=male,age=18-40"][1:] == (SUPPRESSED, SUPPRESSED, SUPPRESSED)
    assert summary["sex=male,age=40-65"][1:] == (SUPPRESSED, SUPPRESSED, SUPPRESSED)
    # Twelve values between 5.1 and 6.2 in bins [3, 5) [5, 6.5) ...: a bin under k withholds
    # the whole histogram, its quantiles and the 2x2 table (6 diabetic, 0 on metformin).
    histogram = [r for r in by_name["histogram"].rows if r[0] == "sex=female,age=18-40"]
    assert [r[1] for r in histogram] == ["[3, 5)", "[5, 6.5)", "[6.5, 8)", "[8, 10)", "[10, 20]"]
    assert {r[2] for r in histogram} == {SUPPRESSED}
    quantiles = [r for r in by_name["quantiles"].rows if r[0] == "sex=female,age=18-40"]
    assert [r[1] for r in quantiles] == ["0.25", "0.5", "0.75"]
    assert all(r[3] == SUPPRESSED for r in by_name["table2x2"].rows)
    assert by_name["global"].rows[0][1] == SUPPRESSED  # no unit mismatch: 0 < k
    csv = by_name["summary"].csv().decode().splitlines()
    assert csv[0] == "stratum,patients,mean,stddev"
    assert '"sex=male,age=18-40",suppressed,suppressed,suppressed' in csv


def test_a_histogram_with_every_bin_over_k_is_charted_bar_by_bar() -> None:
    doc = {
        "categories": ["labs"],
        "cohort": {"types": ["Observation"], "value": {"min": 0, "max": 10}},
        "statistics": [{"kind": "count"}, {"kind": "histogram", "edges": [0, 5, 10]}],
    }
    low = [sq.PatientFacts(matched={"cohort": True}, value=("", 2000)) for _ in range(6)]
    high = [sq.PatientFacts(matched={"cohort": True}, value=("", 8000)) for _ in range(7)]
    result = _result(doc, low + high)
    (series,) = charts(doc, result)
    assert [(b.label, b.value) for b in series.bars] == [("[0, 5)", 6), ("[5, 10]", 7)]
    assert series.title == "Value distribution, all"
    (table,) = [t for t in tables(doc, result) if t.name == "histogram"]
    assert table.rows == (("all", "[0, 5)", "6"), ("all", "[5, 10]", "7"))


def test_counts_alone_chart_patients_per_stratum_with_suppressed_bars() -> None:
    doc = {
        "categories": ["labs"],
        "cohort": {"types": ["Observation"]},
        "statistics": [{"kind": "count"}],
        "stratify": ["sex"],
    }
    women = [sq.PatientFacts(sex="female", matched={"cohort": True}) for _ in range(8)]
    result = _result(doc, women + [sq.PatientFacts(sex="male", matched={"cohort": True})])
    (series,) = charts(doc, result)
    bars = {b.label: b.value for b in series.bars}
    assert bars == {"sex=female": 8, "sex=male": None, "sex=other": None, "sex=unknown": None}
