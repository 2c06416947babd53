"""The demo's federated query publishes figures (issue 18): its study has enough enrolled
patients, with an HbA1c, at more than one hospital, that the counts, means and a histogram
pass k, while one histogram stays suppressed. The demo's story is played on its own
consortium (solo engine), as the browser tests play it, without a browser."""

from __future__ import annotations

from pathlib import Path

from medledger.cli._runtime import Sandbox
from medledger.cli._scenario import STUDY_COHORT, Hospital, play
from medledger.cli.demo import demo_consortium
from medledger.contracts import queries
from medledger.interop import study_results


def test_the_demo_query_publishes_figures_from_several_hospitals_and_suppresses_one(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    homes = demo_consortium(tmp_path / "demo-net", "solo")
    with Sandbox(homes) as sandbox:
        hospitals = [Hospital(r.node, r.vault) for r in sandbox.runtimes]
        story = play(hospitals, said.append, patients=6)
        record = queries.study_query(hospitals[3].node.engine, story.study_query)
    assert record is not None and record["status"] == "done", record
    answered = {org: a["patients"] for org, a in record["answers"].items()}
    assert sum(1 for n in answered.values() if n > 0) >= 3  # Lyon, Paris, Bordeaux
    assert sum(answered.values()) >= STUDY_COHORT
    result = record["result"]
    assert result["noise"] == "none" and result["k"] == 5
    rows = {r["stratum"]: r for r in result["strata"]}
    assert sorted(rows) == ["sex=female", "sex=male"]
    women, men = rows["sex=female"], rows["sex=male"]
    # Published figures: counts over k, means and stddevs within the query's range.
    for row in (women, men):
        assert row["count"] >= result["k"]
        assert 3 <= float(row["mean"]) <= 20 and 0 < float(row["stddev"]) < 17
    assert women["histogram"] is not None and min(women["histogram"]) >= result["k"]
    # The men's histogram has a bin under k: suppressed, and said so.
    assert men["histogram"] is None
    assert "sex=male/histogram: a bin under k" in result["suppressed"]
    # What the narration and the tables say: the figures, and "suppressed", never 0.
    (told,) = [s for s in said if "Published (k = 5, no noise)" in s]
    assert f"sex=female: {women['count']} patients, mean {women['mean']} %" in told
    assert "sex=male" in told and "histogram suppressed (a bin under k)" in told
    histogram = next(
        t for t in study_results.tables(record["doc"], result) if t.name == "histogram"
    )
    assert [r[2] for r in histogram.rows if r[0] == "sex=male"] == ["suppressed"] * 2
    assert [r[2] for r in histogram.rows if r[0] == "sex=female"] == [
        str(n) for n in women["histogram"]
    ]
    assert any("The study grows: 30 more patients" in s for s in said)
