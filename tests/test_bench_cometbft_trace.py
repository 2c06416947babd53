"""`bench cometbft`'s latency trace: where a tx waited, read from the nodes' CometBFT logs.

The network run itself is not smoke tested (four CometBFT nodes per app); these pin the trace's
log reading and its arithmetic on lines shaped like CometBFT v0.38's own."""

from __future__ import annotations

import datetime
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_cometbft.py"
A, B = "6D2E689AD81C8A3AB3E931CB1E19C2F332F80FAE", "EA6A455F9A749ABCD562F231251686EF329BC580"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cometbft_trace", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _at(clock: str) -> float:
    return datetime.datetime.strptime(f"2026-11-30|{clock}", "%Y-%m-%d|%H:%M:%S.%f").timestamp()


def _line(clock: str, text: str) -> str:
    return f"I[2026-11-30|{clock}] {text}"


def _proposal(clock: str, height: int, proposer: str) -> str:
    return _line(
        clock,
        f'received proposal                            module=consensus proposal="Proposal'
        f"{{{height}/0 (EA6A455F9A74:1:A3BFA7F0B6A2, -1) 5F128A630695 @ 2026-11-30T06:04:29Z}}"
        f'" proposer={proposer}',
    )


LOG = "\n".join(
    [
        _line("10:00:00.000", "finalizing commit of block   module=consensus height=1 hash=AA"),
        _line("10:00:00.010", "executed block               module=state height=1 app_hash=BB"),
        _line("10:00:00.110", "committed state              module=state height=1 app_hash=CC"),
        _proposal("10:00:01.050", 2, A),
        _line("10:00:01.050", "received complete proposal block module=consensus height=2"),
        _line("10:00:01.300", "finalizing commit of block   module=consensus height=2 hash=DD"),
        _line("10:00:01.310", "executed block               module=state height=2 app_hash=EE"),
        _line("10:00:01.710", "committed state              module=state height=2 app_hash=FF"),
        _proposal("10:00:02.400", 3, B),
        _line("10:00:02.700", "finalizing commit of block   module=consensus height=3 hash=GG"),
        "E[2026-11-30|10:00:02.800] a line at another level, height=3 finalizing commit of block",
    ]
)


def test_a_node_log_gives_each_heights_events_and_proposer(bench: ModuleType) -> None:
    log = bench.NodeLog.parse(LOG)
    assert log.times["proposed"] == {2: _at("10:00:01.050"), 3: _at("10:00:02.400")}
    assert log.times["deciding"] == {
        1: _at("10:00:00.000"),
        2: _at("10:00:01.300"),
        3: _at("10:00:02.700"),
    }
    assert log.times["committed"][2] - log.times["executed"][2] == pytest.approx(0.4)
    assert log.proposers == {2: A, 3: B}


def test_the_trace_says_which_txs_missed_a_proposal_and_whose(bench: ModuleType) -> None:
    log = bench.NodeLog.parse(LOG)
    on_time = bench.TxTrace(
        sent=_at("10:00:00.500"),
        checked=_at("10:00:00.520"),
        node=0,
        height=2,
        seen=_at("10:00:01.320"),
    )
    # answered at node 1 before height 2's proposal, yet only in height 3's block
    late = bench.TxTrace(
        sent=_at("10:00:00.800"),
        checked=_at("10:00:01.000"),
        node=1,
        height=3,
        seen=_at("10:00:02.750"),
    )
    trace = bench.latency_trace([on_time, late], [log], [A, B], timeout_commit_s=1.0)

    assert trace["all"]["missed"] == {"0": 1, "1": 1}
    slowest = trace["slowest_5pct"]
    assert slowest["txs"] == 1
    assert slowest["latency"] == [1.95, 1.95]
    assert slowest["check"] == [0.2, 0.2]
    assert slowest["missed_by"] == [0.05, 0.05]  # answered 50 ms before the proposal it missed
    assert slowest["missed_own_proposer"] == 0  # node 0 (A) proposed it, the tx was node 1's
    assert slowest["consensus"] == [0.3, 0.3]
    assert trace["proposal_interval_s"] == [1.35, 1.35]
    # node 0 proposed height 2: 50 ms after height 1's decision plus timeout_commit
    assert trace["prepare_s"] == [0.05, 0.05]
    assert trace["block_interval_mean_s"] == 1.35  # decisions of heights 1 to 3
    assert trace["executed_to_committed_s"] == [0.4, 0.4]


# Node 1 (B) decided each height a little after node 0: its own clock starts its round.
LOG_B = "\n".join(
    [
        _line("10:00:00.020", "finalizing commit of block   module=consensus height=1 hash=AA"),
        _line("10:00:01.310", "finalizing commit of block   module=consensus height=2 hash=DD"),
    ]
)


def test_a_missed_reap_is_counted_at_the_proposers_own_reap(bench: ModuleType) -> None:
    logs = [bench.NodeLog.parse(LOG), bench.NodeLog.parse(LOG_B)]
    # answered at node 1 100 ms before node 0 (A) reaped height 2, yet only in height 3
    gossiped = bench.TxTrace(
        sent=_at("10:00:00.850"), checked=_at("10:00:00.900"), node=1, height=3, seen=2.8
    )
    # answered just as A reaped height 2: `missed` counts it (before node 0's receipt of the
    # proposal), but it could not have been in that block
    after_reap = bench.TxTrace(
        sent=_at("10:00:00.990"), checked=_at("10:00:01.020"), node=1, height=3, seen=2.9
    )
    trace = bench.latency_trace([gossiped, after_reap], logs, [A, B], timeout_commit_s=1.0)

    assert trace["all"]["missed"] == {"1": 2}
    assert trace["all"]["missed_reap"] == 1
    assert trace["all"]["missed_reap_by"] == [0.1, 0.1]
    # A committed height 1 at 00.110: the tx was answered after its mempool lock had ended
    assert trace["all"]["missed_in_proposers_lock"] == 0
    assert trace["commit_to_reap_s"] == [0.89, 0.89]  # height 2 only: B's log has no commit
    # height 2: A reaped at 01.000, node 0 had the proposal at 01.050; height 3: B reaped at
    # 02.310 (its own decision of height 2 plus timeout_commit), node 0 had it at 02.400
    # (p50 and p95 of two values are the larger one)
    assert trace["reap_to_proposal_s"] == [0.09, 0.09]


def test_no_trace_without_the_log(bench: ModuleType) -> None:
    tx = bench.TxTrace(sent=1.0, checked=1.1, node=0, height=5, seen=2.0)
    assert bench.latency_trace([tx], [bench.NodeLog.parse("")], [A], timeout_commit_s=1.0) == {}
