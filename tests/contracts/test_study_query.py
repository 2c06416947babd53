"""The study query model: the document, the answer vector, suppression, noise, statistics."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import statistics as pystats
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.contracts import study_query as sq
from medledger.contracts.study_query import PatientFacts
from medledger.ledger import codec
from medledger.ledger.errors import Code, TxError

# The spec's example, as `study query submit --file q.json` reads it (json: floats included).
EXAMPLE: dict[str, Any] = json.loads("""{
  "categories": ["labs"],
  "cohort": {
    "types": ["Observation"],
    "codes": [{"system": "http://loinc.org", "code": "4548-4"}],
    "value": {"min": 3, "max": 20, "unit": "%"},
    "date": {"from": "2020-01-01", "to": "2026-12-31"}
  },
  "age": {"min": 18, "max": 90},
  "sex": ["female", "male"],
  "age_on": "2026-01-01",
  "value_of": "last",
  "statistics": [
    {"kind": "count"},
    {"kind": "mean"}, {"kind": "stddev"},
    {"kind": "quantiles", "q": [0.25, 0.5, 0.75]},
    {"kind": "histogram", "edges": [3, 5, 6.5, 8, 10, 20]},
    {"kind": "table2x2",
     "rows": {"types": ["Condition"],
              "codes": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
     "columns": {"types": ["MedicationRequest"],
                 "codes": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "860975"}]}}
  ],
  "stratify": ["sex", "age_band"],
  "age_bands": [18, 40, 65, 91],
  "epsilon": 0.5
}""")


def _with(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(EXAMPLE)
    doc.update(over)
    return doc


def test_the_spec_example_parses_and_round_trips() -> None:
    q = sq.parse(EXAMPLE)
    assert q.cohort.value_min == 3000 and q.cohort.value_max == 20000 and q.cohort.unit == "%"
    assert q.histogram_edges == (3000, 5000, 6500, 8000, 10000, 20000)
    assert q.quantiles == (250, 500, 750)
    assert q.epsilon_milli == 500
    assert set(sq.criteria(q)) == {"cohort", "rows", "columns"}
    obj = sq.to_obj(q)
    assert sq.parse(obj) == q
    # Canonical: CBOR (no floats), and the hash is of those bytes.
    assert sq.query_hash(q) == hashlib.sha256(codec.encode(obj)).digest()
    assert obj["epsilon"] == "0.5" and obj["statistics"][4]["edges"][2] == "6.5"
    # The order a sender writes lists in does not change the query.
    shuffled = _with(statistics=list(reversed(EXAMPLE["statistics"])), categories=["labs"])
    assert sq.query_hash(sq.parse(shuffled)) == sq.query_hash(q)


def test_the_example_cells_are_per_stratum_then_unit_mismatch() -> None:
    q = sq.parse(EXAMPLE)
    names = sq.cells(q)
    assert sq.strata(q)[:2] == ["sex=female,age=18-40", "sex=female,age=40-65"]
    assert len(sq.strata(q)) == 2 * 3
    per = ["patients", "sum", "sumsq.hi", "sumsq.lo", *[f"bin{i}" for i in range(5)]]
    per += ["t:yy", "t:yn", "t:ny", "t:nn"]
    assert names[: len(per)] == [f"sex=female,age=18-40/{c}" for c in per]
    assert names[-1] == "unit_mismatch" and len(names) == 6 * len(per) + 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(colour="red"), "field colour:"),
        (lambda d: d["cohort"].update(types=["Patient"]), "field cohort.types[0]:"),
        (lambda d: d["cohort"].update(types=[]), "field cohort.types:"),
        (
            lambda d: d["cohort"]["codes"].append({"system": "s" * 201, "code": "x"}),
            "field cohort.codes[1].system:",
        ),
        (lambda d: d["cohort"]["codes"][0].update(display="Hb"), "field cohort.codes[0].display:"),
        (lambda d: d["cohort"]["value"].update(min=3.1234), "field cohort.value.min:"),
        (lambda d: d["cohort"]["value"].update(max=10**7), "field cohort.value.max:"),
        (lambda d: d["cohort"]["date"].update({"from": "2020-02-30"}), "field cohort.date.from:"),
        (lambda d: d.update(categories=["*"]), "field categories:"),
        (lambda d: d.update(categories=["genome"]), "field categories:"),
        (lambda d: d.update(sex=["woman"]), "field sex[0]:"),
        (lambda d: d.update(value_of="mean"), "field value_of:"),
        (lambda d: d.update(age={"min": 40, "max": 18}), "field age:"),
        (lambda d: d.update(epsilon=-1), "field epsilon:"),
        (lambda d: d.update(epsilon="0.0001"), "field epsilon:"),
        (lambda d: d.update(stratify=["ward"]), "field stratify[0]:"),
        (lambda d: d.update(age_bands=[18, 18, 65]), "field age_bands:"),
        (lambda d: d.update(stratify=["sex"]), "field age_bands:"),
        (lambda d: d["statistics"].append({"kind": "count"}), "field statistics:"),
        (lambda d: d["statistics"][3].update(q=[0.5, 1.0]), "field statistics[3].q:"),
        (lambda d: d["statistics"][4].update(edges=[3, 8, 5, 20]), "field statistics[4].edges:"),
        (lambda d: d["statistics"][4].update(edges=[4, 20]), "field statistics.histogram.edges:"),
        (lambda d: d["statistics"][5].pop("rows"), "field statistics[5].rows:"),
        (lambda d: d["statistics"][0].update(kind="median"), "field statistics[0].kind:"),
        (lambda d: d["cohort"]["value"].pop("max"), "field cohort.value:"),
        (lambda d: d["statistics"].pop(4), "field statistics:"),  # quantiles without histogram
        (
            lambda d: d["cohort"].update(
                codes=[{"system": "s", "code": str(i)} for i in range(65)]
            ),
            "field cohort.codes:",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(change: Any, field: str) -> None:
    doc = copy.deepcopy(EXAMPLE)
    change(doc)
    with pytest.raises(TxError) as refused:
        sq.parse(doc)
    assert refused.value.code == Code.INVALID_BODY
    assert refused.value.message.startswith(field), refused.value.message


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document: map values and list items, nested."""
    found = [path]
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, inner in items:
        found += _paths(inner, (*path, key))
    return found


_JUNK: list[Any] = [
    None,
    [],
    {},
    [[]],
    {"kind": {}},
    -1,
    2**63,
    1e308,
    "",
    "x" * 300,
    True,
    b"\x00",
]


@pytest.mark.parametrize("junk", _JUNK, ids=repr)
def test_junk_anywhere_in_a_document_is_refused_naming_a_field_never_a_crash(junk: Any) -> None:
    for path in _paths(EXAMPLE)[1:]:
        doc = copy.deepcopy(EXAMPLE)
        parent = functools.reduce(lambda d, k: d[k], path[:-1], doc)
        parent[path[-1]] = junk
        try:
            q = sq.parse(doc)
        except TxError as refused:
            assert refused.code == Code.INVALID_BODY and refused.message.startswith("field ")
        else:
            assert sq.parse(sq.to_obj(q)) == q  # accepted (e.g. an empty list): canonical


# -- tally ---------------------------------------------------------------------------------

SMALL = {
    "categories": ["conditions", "labs", "medications"],
    "cohort": {"types": ["Observation"], "value": {"min": 3, "max": 20, "unit": "%"}},
    "sex": ["female", "male"],
    "statistics": [
        {"kind": "count"},
        {"kind": "stddev"},
        {"kind": "histogram", "edges": [3, 5, 10, 20]},
        {
            "kind": "table2x2",
            "rows": {"types": ["Condition"]},
            "columns": {"types": ["MedicationRequest"]},
        },
    ],
    "stratify": ["sex"],
}


def _facts(
    sex: str,
    value: int | None,
    *matched: str,
    birth: str = "",
    mismatch: int = 0,
    date: str = "2024-01-01",
) -> PatientFacts:
    return PatientFacts(
        sex=sex,
        birth_date=birth,
        matched={name: True for name in matched},
        value=None if value is None else (date, value),
        unit_mismatch=mismatch,
    )


def test_tally_of_hand_made_facts_equals_the_hand_computed_cells() -> None:
    q = sq.parse(SMALL)
    patients = [
        _facts("female", 7250, "cohort", "rows"),  # bin 1, t:yn
        _facts("female", 25000, "cohort", "rows", "columns"),  # clamped to 20: last bin, t:yy
        _facts("male", 5000, "cohort", "columns"),  # 5 opens bin 1, t:ny
        _facts("female", 4000, mismatch=2),  # not in the cohort; its mismatch counts once
        _facts("other", 4000, "cohort"),  # not a sex the query asks
        _facts("", 4000, "cohort"),  # no gender: unknown, not asked
        _facts("male", None, "cohort"),  # no value: out of a value query's cohort
    ]
    got = dict(zip(sq.cells(q), sq.tally(q, patients), strict=True))
    f, m = "sex=female/", "sex=male/"
    d1, d2, d3 = 7250 - 3000, 20000 - 3000, 5000 - 3000
    assert got == {
        f + "patients": 2,
        f + "sum": d1 + d2,
        f + "sumsq.hi": (d1 * d1 >> 32) + (d2 * d2 >> 32),
        f + "sumsq.lo": (d1 * d1 & 0xFFFFFFFF) + (d2 * d2 & 0xFFFFFFFF),
        f + "bin0": 0,
        f + "bin1": 1,
        f + "bin2": 1,
        f + "t:yy": 1,
        f + "t:yn": 1,
        f + "t:ny": 0,
        f + "t:nn": 0,
        m + "patients": 1,
        m + "sum": d3,
        m + "sumsq.hi": 0,
        m + "sumsq.lo": d3 * d3,
        m + "bin0": 0,
        m + "bin1": 1,
        m + "bin2": 0,
        m + "t:yy": 0,
        m + "t:yn": 0,
        m + "t:ny": 1,
        m + "t:nn": 0,
        "unit_mismatch": 1,
    }


def test_age_filter_and_bands_use_the_fixed_date_and_partial_birth_dates() -> None:
    doc = {
        "categories": ["labs"],
        "cohort": {"types": ["Observation"]},
        "age": {"min": 18},
        "statistics": [{"kind": "count"}],
        "stratify": ["age_band"],
        "age_bands": [18, 40, 65],
    }
    q = sq.parse(doc)
    with pytest.raises(ValueError, match="age_on"):
        sq.tally(q, [_facts("female", None, "cohort", birth="1990-01-01")])
    q = q.with_age_on("2026-01-01")
    patients = [
        _facts("female", None, "cohort", birth="2008-01-01"),  # 18 that day: 18-40
        _facts("female", None, "cohort", birth="2008-01-02"),  # 17: under the filter
        _facts("male", None, "cohort", birth="1986-06"),  # taken as 1986-06-15: 39
        _facts("male", None, "cohort", birth="1961"),  # taken as 1961-07-01: 64
        _facts("male", None, "cohort", birth="1950-01-01"),  # 76: outside every band
        _facts("male", None, "cohort"),  # no birth date: unknown age, not counted
        _facts("male", None, "cohort", birth=sq.CONFLICT),  # hospitals disagree: unknown
    ]
    assert sq.tally(q, patients) == [2, 1]


# -- suppression, noise, derived statistics ------------------------------------------------


def test_a_stratum_under_k_is_withheld_whole() -> None:
    q = sq.parse(SMALL | {"statistics": [{"kind": "count"}], "cohort": {"types": ["Condition"]}})
    result = sq.finish(q, [7, 4], k=5)
    assert [row["count"] for row in result["strata"]] == [7, None]
    assert result["suppressed"] == ["sex=male: fewer than k patients"]
    assert result["noise"] == "none"


def test_a_partition_with_a_small_cell_is_withheld_whole_so_nothing_subtracts() -> None:
    q = sq.parse(SMALL)
    names = sq.cells(q)
    plain = dict.fromkeys(names, 0)
    plain.update(
        {
            "sex=female/patients": 12,
            "sex=female/bin0": 1,
            "sex=female/bin1": 6,
            "sex=female/bin2": 5,
            "sex=female/t:yy": 5,
            "sex=female/t:yn": 2,
            "sex=female/t:ny": 0,
            "sex=female/t:nn": 5,
            "sex=male/patients": 15,
            "sex=male/bin0": 5,
            "sex=male/bin1": 5,
            "sex=male/bin2": 5,
            "sex=male/t:yy": 5,
            "sex=male/t:yn": 5,
            "sex=male/t:ny": 0,
            "sex=male/t:nn": 5,
            "unit_mismatch": 3,
        }
    )
    result = sq.finish(q, [plain[n] for n in names], k=5)
    female, male = result["strata"]
    # The count stays: the histogram and 2x2 are not published, so nothing subtracts from it.
    assert female["count"] == 12 and female["histogram"] is None and female["table2x2"] is None
    assert male["histogram"] == [5, 5, 5]
    assert male["table2x2"] is None  # an empty cell is under k too
    assert result["unit_mismatch"] is None
    assert result["suppressed"] == [
        "sex=female/histogram: a bin under k",
        "sex=female/table2x2: a cell under k",
        "sex=male/table2x2: a cell under k",
        "unit_mismatch: under k",
    ]


def test_noise_is_identical_for_the_same_seed_and_differs_for_another() -> None:
    counts = {"statistics": [{"kind": "count"}], "cohort": {"types": ["Condition"]}}
    q = sq.parse(SMALL | counts | {"epsilon": "0.1"})  # one release, scale 1/0.1 = 10
    seed = sq.answer_noise_seed(b"an Ed25519 signature over noise_message")
    first = sq.answer_noise(q, seed)
    assert first == sq.answer_noise(q, seed)  # a re-run draws the same
    assert first != sq.answer_noise(q, sq.answer_noise_seed(b"another signature"))
    assert len(first) == len(sq.cells(q)) and first != [0, 0]
    assert sq.noise_commitment(seed) != sq.noise_commitment(b"x" * 32)
    # No noise without epsilon.
    assert sq.answer_noise(sq.parse(SMALL | counts), seed) == [0, 0]


def test_each_cell_is_noised_at_its_sensitivity() -> None:
    doc = SMALL | {"statistics": [{"kind": "mean"}, {"kind": "stddev"}], "epsilon": "1"}
    q = sq.parse(doc)  # releases: count, sum, sumsq, unit_mismatch = 4; spread 17 (17000)
    assert sq.releases_per_patient(q) == 4
    draws = [sq.answer_noise(q, bytes([i]) * 32) for i in range(200)]
    at = {name: i for i, name in enumerate(sq.cells(q))}

    def spread_of(cell: str) -> float:
        return sum(abs(d[at[cell]]) for d in draws) / len(draws)

    # E|Lap(b)| is about b: 4 for a count, 4 x 17000 for the sum, 4 x 17000^2 for squares.
    assert 2 < spread_of("sex=female/patients") < 8
    assert 2 * 17000 < spread_of("sex=female/sum") < 8 * 17000
    assert 2 * 17000**2 < spread_of("sex=female/sumsq.lo") < 8 * 17000**2
    assert spread_of("sex=female/sumsq.hi") == 0


def test_discrete_laplace_has_its_distribution() -> None:
    # P(0) = (1 - e^-1/s) / (1 + e^-1/s) = 0.4621 at scale 1; symmetric around 0.
    draws = [sq.noise(b"seed", f"cell{i}", Fraction(1)) for i in range(3000)]
    zeros = draws.count(0) / len(draws)
    assert 0.43 < zeros < 0.50
    assert abs(sum(draws) / len(draws)) < 0.1
    assert draws.count(1) > 0 and draws.count(-1) > 0
    wide = [sq.noise(b"seed", f"cell{i}", Fraction(20)) for i in range(1000)]
    assert max(map(abs, wide)) > 20  # a wider scale draws wider


def test_mean_stddev_quantiles_without_noise_equal_a_direct_computation() -> None:
    doc = SMALL | {
        "statistics": [
            {"kind": "mean"},
            {"kind": "stddev"},
            {"kind": "quantiles", "q": [0.25, 0.5, 0.9]},
            {"kind": "histogram", "edges": [3, 5, 10, 20]},
        ],
        "stratify": [],
    }
    q = sq.parse(doc)
    values = [3500, 4200, 4800, 6000, 7250, 7300, 9100, 12000, 15500, 19999, 4100, 8800]
    totals = sq.tally(q, [_facts("female", v, "cohort") for v in values])
    (row,) = sq.finish(q, totals, k=3)["strata"]
    exact = [Fraction(v, 1000) for v in values]
    assert row["mean"] == f"{float(pystats.mean(exact)):.3f}"
    assert abs(Fraction(row["stddev"]) - Fraction(pystats.stdev(exact))) <= Fraction(1, 2000)
    assert row["histogram"] == [4, 5, 3]
    # Linear inside the bins: the 0.25-quantile is 3 of 12, inside [3, 5) holding 4: 3 + 2*3/4.
    assert row["quantiles"][0] == "4.500"
    # median: 6 of 12 -> 2 into [5, 10) holding 5: 5 + 5*2/5 = 7
    assert row["quantiles"][1] == "7.000"
    # 0.9: 10.8 of 12 -> 1.8 into [10, 20] holding 3: 10 + 10*1.8/3 = 16
    assert row["quantiles"][2] == "16.000"


def test_noised_statistics_stay_in_their_bounds() -> None:
    q = sq.parse(SMALL | {"statistics": [{"kind": "mean"}, {"kind": "stddev"}], "epsilon": "0.01"})
    plain = sq.tally(q, [_facts("male", 19000, "cohort") for _ in range(60)])
    for i in range(20):
        noise = sq.answer_noise(q, bytes([i]) * 32)
        result = sq.finish(q, [a + b for a, b in zip(plain, noise, strict=True)], k=5)
        for row in result["strata"]:
            if row["mean"] is not None:
                assert Fraction(3) <= Fraction(row["mean"]) <= Fraction(20)
                assert Fraction(0) <= Fraction(row["stddev"]) <= Fraction(17)


# -- PatientFacts --------------------------------------------------------------------------


def test_facts_round_trip_and_refuse_what_a_sender_should_not_send() -> None:
    facts = _facts("female", 7250, "cohort", "rows", birth="1980-05", mismatch=1)
    assert PatientFacts.from_obj(facts.to_obj()) == facts
    assert codec.decode(codec.encode(facts.to_obj())) == facts.to_obj()
    refused: list[tuple[dict[str, Any], str]] = [
        ({"sex": "f"}, "facts.sex"),
        ({"birth": "80-05-01"}, "facts.birth"),
        ({"matched": ["cohort", "diagnosis"]}, "facts.matched"),
        ({"value": ["2024-13-01", 5]}, "facts.value[0]"),
        ({"value": ["", 10**12]}, "facts.value[1]"),
        ({"pid": "a" * 64}, "facts.pid"),
    ]
    for bad, field in refused:
        with pytest.raises(TxError, match=re.escape(f"field {field}:")):
            PatientFacts.from_obj(facts.to_obj() | bad)


def test_merging_what_two_hospitals_saw() -> None:
    here = _facts("female", 7000, "cohort", birth="1980", date="2024-03-01")
    there = _facts("", 9000, "rows", birth="1980-05-02", date="2025-01-01", mismatch=2)
    merged = here.merge(there, "last")
    assert merged.sex == "female" and merged.birth_date == "1980-05-02"
    assert merged.matched == {"cohort": True, "rows": True}
    assert merged.value == ("2025-01-01", 9000) and merged.unit_mismatch == 2
    assert here.merge(there, "first").value == ("2024-03-01", 7000)
    assert here.merge(there, "max").value == ("2025-01-01", 9000)
    disagree = here.merge(_facts("male", None, birth="1981-01-01"), "last")
    assert disagree.sex == "unknown" and disagree.birth_date == sq.CONFLICT


_dates = st.sampled_from(["", "2023-01-01", "2024-06-30", "2025-12-31"])
_facts_st = st.builds(
    PatientFacts,
    sex=st.sampled_from(["", "female", "male", "unknown"]),
    birth_date=st.sampled_from(["", "1980", "1980-05", "1980-05-02", "1980-06", "1981"]),
    matched=st.dictionaries(st.sampled_from(sq.CRITERIA), st.booleans(), max_size=3),
    value=st.none() | st.tuples(_dates, st.integers(-5, 5)),
    unit_mismatch=st.integers(0, 3),
)


@given(st.lists(_facts_st, min_size=1, max_size=5), st.sampled_from(sq.VALUE_OF), st.randoms())
def test_merge_is_order_independent(parts: list[PatientFacts], value_of: str, rnd: Any) -> None:
    def merge(items: list[PatientFacts]) -> PatientFacts:
        return functools.reduce(lambda a, b: a.merge(b, value_of), items)

    shuffled = list(parts)
    rnd.shuffle(shuffled)
    left = merge(parts)
    assert merge(shuffled).to_obj() == left.to_obj()
    # Grouped differently (one hospital merging first) gives the same too.
    half = len(parts) // 2
    if half:
        assert merge([merge(parts[:half]), merge(parts[half:])]).to_obj() == left.to_obj()


def test_criterion_types_are_clinical_types_ingestion_files_under_a_patient() -> None:
    from medledger.interop.compartment import is_supporting

    assert not any(is_supporting(t) for t in sq.CLINICAL_TYPES)
    assert "Patient" not in sq.CLINICAL_TYPES and "Practitioner" not in sq.CLINICAL_TYPES


@given(st.lists(_facts_st, max_size=12), st.integers(0, 12))
def test_tallies_add_up_across_hospitals(patients: list[PatientFacts], cut: int) -> None:
    # What makes the federated sum right: each hospital tallies the patients it counts.
    q = sq.parse(SMALL | {"statistics": [*SMALL["statistics"], {"kind": "mean"}]})
    for facts in patients:
        if facts.value is not None:
            facts.value = (facts.value[0], 3000 + 1000 * abs(facts.value[1]))
    here, there = sq.tally(q, patients[:cut]), sq.tally(q, patients[cut:])
    assert [a + b for a, b in zip(here, there, strict=True)] == sq.tally(q, patients)
