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
    trace = bench.latency_trace([on_time, late], [log], [A, B], block_s=1.0)

    assert trace["all"]["missed"] == {"0": 1, "1": 1}
    slowest = trace["slowest_5pct"]
    assert slowest["txs"] == 1
    assert slowest["latency"] == [1.95, 1.95]
    assert slowest["check"] == [0.2, 0.2]
    assert slowest["missed_by"] == [0.05, 0.05]  # answered 50 ms before the proposal it missed
    assert slowest["missed_own_proposer"] == 0  # node 0 (A) proposed it, the tx was node 1's
    assert slowest["consensus"] == [0.3, 0.3]
    assert trace["proposal_interval_s"] == [1.35, 1.35]
    # node 0 proposed height 2: 50 ms after height 1's decision plus the block time
    assert trace["prepare_s"] == [0.05, 0.05]
    assert trace["executed_to_committed_s"] == [0.4, 0.4]


def test_no_trace_without_the_log(bench: ModuleType) -> None:
    tx = bench.TxTrace(sent=1.0, checked=1.1, node=0, height=5, seen=2.0)
    assert bench.latency_trace([tx], [bench.NodeLog.parse("")], [A], block_s=1.0) == {}
