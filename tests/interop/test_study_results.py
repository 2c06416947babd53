"""A query's published result as tables and charts: suppressed figures say so, never 0."""

from __future__ import annotations

import copy
import random
from fractions import Fraction
from typing import Any

from medledger.contracts import study_query as sq
from medledger.interop.study_results import CLAMPED, SUPPRESSED, charts, clamped, tables
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


# -- figures noise carried outside what the data can give (issue 18) ----------------------

#: HbA1c in [3, 20] %, by sex: count, mean, stddev, histogram; epsilon 0.5.
NOISED: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": "http://loinc.org", "code": "4548-4"}],
        "value": {"min": 3, "max": 20, "unit": "%"},
    },
    "sex": ["female", "male"],
    "statistics": [
        {"kind": "count"},
        {"kind": "mean"},
        {"kind": "stddev"},
        {"kind": "histogram", "edges": [3, 5, "6.5", 8, 10, 20]},
    ],
    "stratify": ["sex"],
    "epsilon": "0.5",
}


def noised_facts() -> list[sq.PatientFacts]:
    """The 120 patients of every noised run here (and of the CLI's noised query)."""
    rng = random.Random(18)
    return [
        sq.PatientFacts(
            sex="female" if i % 2 else "male",
            birth_date="1970-03-01",
            matched={"cohort": True},
            value=("2025-01-10", rng.randrange(4500, 11500, 100)),
        )
        for i in range(120)
    ]


def _noised_run(run: int) -> tuple[list[int], dict[str, Any]]:
    """A real noised result: 120 patients tallied, each of four answerers' noise drawn by
    `answer_noise` from its own seed, combined and finished as the contract does. Returns the
    combined (noised, unclamped) totals and the result."""
    q = sq.parse(NOISED)
    totals = sq.tally(q, noised_facts())
    for org in range(4):
        seed = sq.answer_noise_seed(f"answerer {org}, run {run}".encode())
        totals = [t + n for t, n in zip(totals, sq.answer_noise(q, seed), strict=True)]
    return totals, sq.finish(q, totals, 5)


def test_a_noised_figure_is_flagged_clamped_exactly_when_finish_clamped_it() -> None:
    """Forty noised runs: a mean or stddev is flagged when, and only when, the noised totals
    put it at or past the bound `finish` clamps to (computed here from the totals, apart
    from the result's text); both kinds are seen flagged and unflagged."""
    q = sq.parse(NOISED)
    names = sq.cells(q)
    spread = 17_000
    seen: dict[tuple[str, bool], int] = {}
    for run in range(40):
        totals, result = _noised_run(run)
        total = dict(zip(names, totals, strict=True))
        flagged = {(c.stratum, c.figure) for c in clamped(NOISED, result)}
        for row in result["strata"]:
            stratum = row["stratum"]
            count = total[f"{stratum}/patients"]
            if row["count"] is None:
                assert not {f for s, f in flagged if s == stratum}  # nothing shown, no flag
                continue
            mean = Fraction(total[f"{stratum}/sum"], count)
            at_bound = not 0 < round(mean) < spread
            assert ((stratum, "mean") in flagged) == at_bound, (run, stratum, row["mean"])
            seen[("mean", at_bound)] = seen.get(("mean", at_bound), 0) + 1
            square = (total[f"{stratum}/sumsq.hi"] << 32) + total[f"{stratum}/sumsq.lo"]
            centre = min(max(mean, Fraction(0)), Fraction(spread))
            variance = (square - count * centre * centre) / (count - 1)
            at_bound = variance <= 0 or variance >= spread * spread or row["stddev"] == "0.000"
            assert ((stratum, "stddev") in flagged) == at_bound, (run, stratum, row["stddev"])
            seen[("stddev", at_bound)] = seen.get(("stddev", at_bound), 0) + 1
    assert set(seen) == {("mean", True), ("mean", False), ("stddev", True), ("stddev", False)}


def test_a_clamped_figure_reads_clamped_in_every_table_and_an_unclamped_one_plainly() -> None:
    _, result = _noised_run(0)  # women: 12.498 and 14.245; men: 7.901 and a stddev at 0
    rows = {r["stratum"]: r for r in result["strata"]}
    women, men = rows["sex=female"], rows["sex=male"]
    assert men["stddev"] == "0.000" and men["count"] >= 5 and women["count"] >= 5
    by_name = {t.name: t for t in tables(NOISED, result)}
    summary = {row[0]: row for row in by_name["summary"].rows}
    assert summary["sex=female"] == (
        "sex=female", str(women["count"]), women["mean"], women["stddev"]
    )  # fmt: skip
    assert summary["sex=male"][2:] == (men["mean"], f"0.000 {CLAMPED}")
    (why,) = by_name["clamped"].rows
    assert why[:3] == ("sex=male", "stddev", "0.000") and "variance to 0 or below" in why[3]
    assert "0.000 (clamped)" in by_name["summary"].csv().decode()
    # Means at value.min and at value.max: the bound, marked, and the reason names it.
    for run, stratum, shown, bound in ((7, "sex=female", "3.000", "value.min"),
                                       (6, "sex=male", "20.000", "value.max")):  # fmt: skip
        _, result = _noised_run(run)
        marked = {(c.stratum, c.figure): c for c in clamped(NOISED, result)}
        assert marked[(stratum, "mean")].shown == shown
        assert bound in marked[(stratum, "mean")].why
        summary = {row[0]: row for row in tables(NOISED, result)[0].rows}
        assert summary[stratum][2] == f"{shown} {CLAMPED}"


def test_without_noise_a_figure_at_the_bound_is_the_data_and_is_not_flagged() -> None:
    doc = NOISED | {"epsilon": 0}
    facts = [
        sq.PatientFacts(sex="female", matched={"cohort": True}, value=("2025-01-10", 3000))
        for _ in range(6)
    ]
    q = sq.parse(doc)
    result = sq.finish(q, sq.tally(q, facts), 5)
    (women,) = [r for r in result["strata"] if r["stratum"] == "sex=female"]
    assert (women["mean"], women["stddev"]) == ("3.000", "0.000")  # every value at value.min
    assert clamped(doc, result) == []
    assert "clamped" not in {t.name for t in tables(doc, result)}


def test_a_count_or_bin_noise_carried_below_zero_is_suppressed_never_drawn_as_zero() -> None:
    """The other clamps of `finish` (at 0) land under k: such a figure is never shown."""
    q = sq.parse(NOISED)
    names = sq.cells(q)
    totals = [0] * len(names)
    for i, name in enumerate(names):
        stratum, _, cell = name.partition("/")
        if stratum == "sex=female":
            totals[i] = {"patients": 40, "sum": 40 * 3000, "sumsq.lo": 40 * 3000**2}.get(cell, 10)
    totals[names.index("sex=female/bin2")] = -3  # noise took a bin below 0
    result = sq.finish(q, totals, 5)
    (series, _) = charts(NOISED, result)
    assert series.title.endswith("sex=female")
    assert [b.value for b in series.bars] == [None] * 5  # suppressed: no bar reads 0
