"""The app's own work per tx at CheckTx and ProcessProposal, steady on a loaded machine.

`bench_txpath` times whole runs, which a shared machine's preemptions move by ±15–30 %. Here
the verified-tx cache is warmed first (decoding and Ed25519 are not timed: `bench_txpath`'s
`decode_alone` and `verify_alone` give them), then txs are checked and proposed in short
batches, and the **minimum** over the batches is kept: a batch a preemption hit is never the
minimum. Each batch is txs the state never saw (`identity.register`, as `medledger bench
cometbft` sends), checked on the mempool's view, then simulated as a block (ProcessProposal).
Also the minimum of `decode_tx` over the same batches.

`fresh=1` measures instead what a live node's CheckTx does (docs/benchmarks.md, "Session 15
(live15)"): txs never seen (decoded and verified inside CheckTx), the node's settled heap
(`node/heap.py`), batches of 20 as CometBFT's mempool connection brings them, and the **mean**
over the batches as well as the minimum: on a machine whose cores are shared, the minimum is
the batch that ran with warm caches, which a live node's average is not.

    medledger bench apptx [--set batch=200 --set batches=40]
    medledger bench apptx --set fresh=1 [--set batch=20 --set batches=200]

To compare with another checkout's code, alternate runs of this file with that code on the
path: `PYTHONPATH=<clone>/src .venv/bin/python bench/bench_apptx.py` (docs/benchmarks.md,
"Session 12 (check13)").
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medledger.contracts import default_registry
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import decode_tx
from medledger.node import heap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_txpath import SIGNERS, _genesis, _registrations  # noqa: E402


@contextlib.contextmanager
def _app_after_one_block(
    genesis: Genesis, first: list[bytes], preverify: Sequence[bytes] = ()
) -> Iterator[Application]:
    """A fresh app whose state holds `first` committed in block 1 (some practitioners to
    check against); the txs in `preverify` are verified beforehand, out of the timings."""
    with tempfile.TemporaryDirectory() as tmp:
        app = Application.open(Path(tmp) / "apptx.db", genesis, default_registry())
        try:
            app.init_chain()
            for raw in preverify:
                app.preverify(raw)
            for raw in first:
                app.check_tx(raw)
            app.finalize_block(first, 1, genesis.time_ms + 1000)
            app.commit()
            yield app
        finally:
            app.close()


def run(batch: int = 0, batches: int = 0, committed: int = 400, fresh: int = 0) -> Any:
    if fresh:
        return _fresh_check_tx(batch or 20, batches or 200, committed)
    batch, batches = batch or 200, batches or 40
    orgs = [SigningKey.generate() for _ in range(SIGNERS)]
    genesis = _genesis(orgs)
    txs = _registrations(orgs, committed + batch * batches)
    best = {"check_tx": float("inf"), "process_proposal": float("inf"), "decode": float("inf")}
    with _app_after_one_block(genesis, txs[:committed], preverify=txs) as app:
        for n in range(batches):
            chunk = txs[committed + n * batch : committed + (n + 1) * batch]
            t = time.thread_time()
            for raw in chunk:
                if not app.check_tx(raw).ok:
                    raise RuntimeError("bench tx refused")
            best["check_tx"] = min(best["check_tx"], time.thread_time() - t)
            t = time.thread_time()
            app.simulate_block(chunk, 2, genesis.time_ms + 2000)
            best["process_proposal"] = min(best["process_proposal"], time.thread_time() - t)
            t = time.thread_time()
            for raw in chunk:
                decode_tx(raw)
            best["decode"] = min(best["decode"], time.thread_time() - t)
    return {
        "us_per_tx_min_over_batches": {k: round(v / batch * 1e6, 2) for k, v in best.items()},
        "batch": batch,
        "batches": batches,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _fresh_check_tx(batch: int, batches: int, committed: int) -> Any:
    """CheckTx of txs this app never saw, as a live node runs it: thread CPU per tx of each
    batch, mean / median / minimum over the batches."""
    orgs = [SigningKey.generate() for _ in range(SIGNERS)]
    genesis = _genesis(orgs)
    txs = _registrations(orgs, committed + batch * batches)
    per_tx: list[float] = []
    thresholds = gc.get_threshold()  # the settled heap's settings are this run's only
    with _app_after_one_block(genesis, txs[:committed]) as app:
        try:
            heap.settle()
            for n in range(batches):
                chunk = txs[committed + n * batch : committed + (n + 1) * batch]
                t = time.thread_time()
                for raw in chunk:
                    if not app.check_tx(raw).ok:
                        raise RuntimeError("bench tx refused")
                per_tx.append((time.thread_time() - t) / batch * 1e6)
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
    return {
        "check_tx_fresh_us_per_tx": {
            "mean": round(statistics.mean(per_tx), 1),
            "median": round(statistics.median(per_tx), 1),
            "min": round(min(per_tx), 1),
        },
        "batch": batch,
        "batches": batches,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    import json

    options = dict(arg.split("=", 1) for arg in sys.argv[1:])  # batch=200 batches=40
    print(json.dumps(run(**{k: int(v) for k, v in options.items()}), indent=2))
