"""One validator's CPU per tx as its chain grows: does a tx cost more on a long chain?

Replays, in one process and without sockets, what a node's app does under CometBFT (as
`bench_txpath` does), from an empty chain on, in blocks of `block` txs: CheckTx of each tx
(its signature verified first, outside the timed part, as the ABCI server's threads do),
ProcessProposal (the block simulated), FinalizeBlock and Commit. The txs are those `medledger
bench cometbft` sends: `identity.register` by `streams` member organisations, each with its
own nonces. Thread CPU of each step, per tx, per block; the report gives the mean of each
window of `window` blocks, so the first rows are an empty chain's cost and the last a chain
of `txs` txs.

    medledger bench growth [--set txs=100000 --set block=1000 --set window=10 --set streams=64]

`settle=1` (the default) settles the heap as a node does once started (`node.heap`: start-up
frozen, full collections rare); `settle=0` keeps CPython's defaults. Each row also gives
the collector's thread CPU per tx (`gc`, part of the steps' figures) and the bytes the
process read and wrote per tx through system calls (SQLite's pages, the WAL, checkpoints).
`engine=1` attaches what a CometBFT node adds to its app (`CometEngine`: the record of
recent commits its clients wait on), never started.
`profile=N` also writes a cProfile of block N's four steps (as `growth-<N>.prof` in the
working directory), to compare an early block's functions with a late one's.
To compare with another checkout's code, run this file with that code on the path, in turn
with this one: `PYTHONPATH=<clone>/src .venv/bin/python bench/bench_growth.py`
(docs/benchmarks.md, "Session 14 (grow13)").
"""

from __future__ import annotations

import cProfile
import gc
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from medledger.contracts import default_registry, default_versions
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import sign_tx

CHAIN = "medledger-bench"
STEPS = ("check_tx", "process_proposal", "finalize_block", "commit")


class _GcClock:
    """Thread CPU spent in the cyclic collector's runs (all generations; part of the steps')."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.spent += time.thread_time() - self._start


def _io() -> tuple[int, int]:
    """This process's bytes read and written through system calls so far (Linux)."""
    try:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return 0, 0
    return int(fields["rchar"]), int(fields["wchar"])


def _genesis(keys: list[SigningKey]) -> Genesis:
    hospitals = [SigningKey(hashlib.sha256(f"h{i}".encode()).digest()) for i in range(4)]
    members = [GenesisMember(f"h{i}", f"H{i}", k.public_key) for i, k in enumerate(hospitals)]
    members += [GenesisMember(f"signer-{i}", f"S{i}", k.public_key) for i, k in enumerate(keys)]
    return Genesis(
        chain_id=CHAIN,
        time_ms=1_700_000_000_000,
        members=members,
        solo_key=SigningKey.generate().public_key,
        contracts=default_versions(),
    )


class _Txs:
    """`medledger bench cometbft`'s txs: signer `i % streams`, practitioner `p<nonce>`."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.nonces = [0] * len(keys)
        self.n = 0

    def next(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            s = self.n % len(self.keys)
            self.n += 1
            self.nonces[s] += 1
            nonce = self.nonces[s]
            body = {"practitioner": f"p{nonce}", "key": os.urandom(32), "roles": ["nurse"]}
            out.append(sign_tx(self.keys[s], CHAIN, "identity.register", body, nonce))
        return out


def run(
    txs: int = 100_000,
    block: int = 1000,
    window: int = 10,
    streams: int = 64,
    profile: int = 0,
    blocks_out: int = 0,
    settle: int = 1,
    engine: int = 0,
) -> Any:
    keys = [
        SigningKey(hashlib.sha256(f"bench-signer-{i}".encode()).digest()) for i in range(streams)
    ]
    genesis = _genesis(keys)
    source = _Txs(keys)
    rows: list[dict[str, float]] = []
    thresholds = gc.get_threshold()
    with tempfile.TemporaryDirectory() as tmp:
        app = Application.open(Path(tmp) / "growth.db", genesis, default_registry())
        try:
            app.init_chain()
            if engine:  # a CometBFT node's engine: its record of recent commits, its listener
                from medledger.consensus.cometbft.engine import CometEngine

                CometEngine(app, "tcp://127.0.0.1:1", "http://127.0.0.1:1")
            if settle:  # as a node does once started (`node.heap`)
                from medledger.node import heap

                heap.settle()
            gc_clock = _GcClock()
            gc.callbacks.append(gc_clock)
            time_ms = genesis.time_ms
            for n in range(1, txs // block + 1):
                chunk = source.next(block)
                for raw in chunk:
                    app.preverify(raw)
                profiler = cProfile.Profile() if n == profile else None
                spent = dict.fromkeys(STEPS, 0.0)
                gc_before = gc_clock.spent
                io_before = _io()
                if profiler is not None:
                    profiler.enable()
                t = time.thread_time()
                for raw in chunk:
                    if not app.check_tx(raw).ok:
                        raise RuntimeError("bench tx refused")
                spent["check_tx"] = time.thread_time() - t
                height, time_ms = app.height + 1, time_ms + 1000
                t = time.thread_time()
                app.simulate_block(chunk, height, time_ms)
                spent["process_proposal"] = time.thread_time() - t
                t = time.thread_time()
                app.finalize_block(chunk, height, time_ms)
                spent["finalize_block"] = time.thread_time() - t
                t = time.thread_time()
                app.commit()
                spent["commit"] = time.thread_time() - t
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(f"growth-{n}.prof")
                spent["gc"] = gc_clock.spent - gc_before
                row = {k: v / block * 1e6 for k, v in spent.items()}
                io_after = _io()
                row["read_bytes"] = (io_after[0] - io_before[0]) / block
                row["written_bytes"] = (io_after[1] - io_before[1]) / block
                rows.append(row)
            gc.callbacks.remove(gc_clock)
        finally:
            app.close()
            if settle:  # the caller's collector as it was (a test runs this in its process)
                gc.unfreeze()
                gc.set_threshold(*thresholds)
    return {
        "us_per_tx_one_node": _windows(rows, block, window),
        "blocks": [[round(r[k], 1) for k in (*STEPS, "gc")] for r in rows] if blocks_out else None,
        "txs": txs,
        "block": block,
        "streams": streams,
        "settled_heap": bool(settle),
        "engine": bool(engine),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _windows(rows: list[dict[str, float]], block: int, window: int) -> list[dict[str, Any]]:
    """Each window's mean per step, and the total; `chain_txs` is the chain's size at its end."""
    out = []
    for start in range(0, len(rows), window):
        part = rows[start : start + window]
        mean = {k: round(sum(r[k] for r in part) / len(part), 1) for k in (*STEPS, "gc")}
        for k in ("read_bytes", "written_bytes"):  # per tx, through system calls
            mean[k] = round(sum(r[k] for r in part) / len(part))
        total = round(sum(mean[k] for k in STEPS), 1)
        out.append({"chain_txs": (start + len(part)) * block, **mean, "total": total})
    return out


if __name__ == "__main__":
    import json
    import sys

    options = dict(arg.split("=", 1) for arg in sys.argv[1:])  # txs=100000 block=1000 ...
    print(json.dumps(run(**{k: int(v) for k, v in options.items()}), indent=1))
