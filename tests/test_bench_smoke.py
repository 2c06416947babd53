"""Every benchmark still runs, at a tiny size: a rule change must not leave `medledger bench`
broken unnoticed (the figures themselves live in docs/benchmarks.md, never in a test)."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, cast

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

TINY: dict[str, dict[str, Any]] = {
    "ledger": {"txs": 200, "hospitals": 2, "batch": 100},
    "vault": {"records_small": 3, "records_large": 30, "runs": 1},
    "ingest": {"patients": 3, "erase_small": 3, "erase_large": 30, "documents": 2, "replicated": 2},
    "replicas": {"patients": 3},
    "authorize": {"patients": 50, "consents": 200, "queries": 50, "hospitals": 3},
    "api": {"resources": 30, "rounds": 2},  # with $summary
    "exchange": {"fetches": 3, "writes": 2, "cometbft": 0},
    "audit": {"seconds": 1, "readers": 2, "direct": 200, "cometbft": 0, "pairs": 2},
    "txpath": {"txs": 40, "block": 20, "entries": 5, "audit_txs": 2, "waiting": 10},
    "apptx": {"batch": 5, "batches": 2, "committed": 5},
    "growth": {"txs": 40, "block": 20, "window": 1, "streams": 4},
    # four CometBFT nodes, a one-block query, then the fair peer's (every stratum over k=5)
    "study": {"patients": 60, "shared": 30, "peer": 1, "epsilon_milli": 0},
}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"bench_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(TINY))
def test_the_benchmark_runs_at_a_tiny_size(name: str) -> None:
    result = _load(name).run(**TINY[name])
    assert isinstance(result, dict) and result, result
    if name == "study":  # the peer counts what medledger counts: every enrolled patient, once
        counts = [row["count"] for row in result["result"]["strata"]]
        assert [row["count"] for row in result["peer"]["result"]["strata"]] == counts
        # each hospital answered for the patients it holds first, under its own signer's tx
        assert sum(a["patients"] for a in result["peer"]["answers"].values()) == 60
        # female and male in three age bands, each over k; "other" and "unknown" withheld
        assert sum(c for c in counts if c is not None) == result["enrolled"] == 60, result
        assert counts.count(None) == 6, counts
    if name == "audit":  # two pairs of runs (off then on, on then off): a ratio each
        solo = result["solo"]
        assert len(solo["reads_ratio_pairs"]) == 2, solo
        # the ratio pools both pairs' reads: it lies between the two pairs' own ratios
        low, high = sorted(solo["reads_ratio_pairs"])
        assert low - 0.001 <= solo["reads_ratio_on_vs_off"] <= high + 0.001, solo
        # every "on" run's entries were committed before the next run, and counted
        assert solo["audit_on"]["audit"]["entries"] > 0, solo
        assert solo["audit_on"]["audit"]["ids_unique"], solo
        assert solo["audit_on"]["audit"]["reads_without_entry"] == 0, solo


def test_every_benchmark_but_the_cometbft_network_is_smoke_tested() -> None:
    """bench_cometbft starts four CometBFT nodes per app: the network tests cover its harness.
    bench_hapi needs HAPI FHIR's jar, which `make hapi` builds and `make test` does not:
    tests/test_bench_hapi.py covers its harness."""
    found = {p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py")}
    assert found - set(TINY) == {"cometbft", "hapi"}


class _Inbox:
    def forget(self, query_id: str) -> None:
        self.forgotten = query_id


def test_the_study_bench_reads_the_line_a_node_logs_when_its_answer_lands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`bench study` takes each hospital's figures from the line `Answerer.landed` logs: a
    change of that line must not leave the bench's per-node figures silently empty."""
    from medledger.research.answer import Answered, Answerer

    answerer = Answerer.__new__(Answerer)  # landed() needs its org, inbox and node's journal
    answerer.org, answerer.inbox = "chu-lyon", cast(Any, _Inbox())
    # ... and the query's reads ahead, which it drops (session 13, study2s)
    answerer._prepared_lock, answerer._reads = threading.Lock(), {}
    answerer.node = cast(Any, SimpleNamespace(audit=SimpleNamespace(quiet=lambda s: None)))
    timing = {"read": 0.25, "evaluate_cpu": 0.5, "cpu": 1.0}
    with caplog.at_level("INFO", logger="medledger.research.answer"):
        answerer.landed(Answered("s1/q0001", 12, {"aphp-paris": 3}, b"", timing, 2))
    (tmp_path / "logs").mkdir()
    line = f"2026-11-30 18:00:00 INFO medledger.research.answer {caplog.records[-1].getMessage()}"
    (tmp_path / "logs" / "chu-lyon.app.log").write_text(line + "\n")
    found = _load("study")._answers(tmp_path, "s1/q0001")
    assert found == {"chu-lyon": {"patients": 12, **timing}}
    # ... and its gateway's line for each partials message it took (exchange/gateway.py).
    took = (
        "2026-11-30 18:00:00 INFO medledger.exchange.gateway chu-lyon took partials of "
        "s1/q0001 from {}: 3 kept, 0 dropped; check {}s, kept 0.004s, in {}s"
    )
    # a check on the query's reads ahead says so before "; check" (study2s)
    ahead = took.replace("dropped;", "dropped (checked on the reads ahead);")
    lines = [line, took.format("aphp-paris", "0.020", "0.050"), ahead.format("x", "0.010", "0.090")]
    (tmp_path / "logs" / "chu-lyon.app.log").write_text("\n".join(lines) + "\n")
    found = _load("study")._answers(tmp_path, "s1/q0001")
    assert found == {"chu-lyon": {"patients": 12, **timing, "took_check": 0.03, "took": 0.09}}


def test_the_audit_bench_peer_logs_a_line_per_read() -> None:
    """`journal_only=3`: the fair peer's mode records every read it serves (one JSON line per
    read in its log, fsync'd before the answer), alongside off, journal and on in each round."""
    bench = _load("audit")
    fsyncs = bench.PEER["fsyncs"]
    result = bench.run(**{**TINY["audit"], "journal_only": 3})["solo"]
    split = result["by_mode"]
    assert set(split["modes"]) == {"off", "peer", "journal", "on"}, split
    assert all(set(order) == set(split["modes"]) for order in split["orders"]), split
    assert len(split["peer_reads_lines"]) == 2, split
    for reads, lines in split["peer_reads_lines"]:
        assert 0 < reads <= lines, split  # every read served has its line
    assert bench.PEER["fsyncs"] - fsyncs >= sum(n for n, _ in split["peer_reads_lines"]), split
    assert bench.PEER["fds"] == {}  # the switch undone: its logs closed
