"""The app's own work per tx at CheckTx and ProcessProposal, steady on a loaded machine.

`bench_txpath` times whole runs, which a shared machine's preemptions move by ±15–30 %. Here
the verified-tx cache is warmed first (decoding and Ed25519 are not timed: `bench_txpath`'s
`decode_alone` and `verify_alone` give them), then txs are checked and proposed in short
batches, and the **minimum** over the batches is kept: a batch a preemption hit is never the
minimum. Each batch is txs the state never saw (`identity.register`, as `medledger bench
cometbft` sends), checked on the mempool's view, then simulated as a block (ProcessProposal).
Also the minimum of `decode_tx` over the same batches.

    medledger bench apptx [--set batch=200 --set batches=40]

To compare with another checkout's code, alternate runs of this file with that code on the
path: `PYTHONPATH=<clone>/src .venv/bin/python bench/bench_apptx.py` (docs/benchmarks.md,
"Session 12 (check13)").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medledger.contracts import default_registry
from medledger.ledger.app import Application
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import decode_tx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_txpath import SIGNERS, _genesis, _registrations  # noqa: E402


def run(batch: int = 200, batches: int = 40, committed: int = 400) -> Any:
    orgs = [SigningKey.generate() for _ in range(SIGNERS)]
    genesis = _genesis(orgs)
    txs = _registrations(orgs, committed + batch * batches)
    best = {"check_tx": float("inf"), "process_proposal": float("inf"), "decode": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        app = Application.open(Path(tmp) / "apptx.db", genesis, default_registry())
        try:
            app.init_chain()
            for raw in txs:
                app.preverify(raw)
            first = txs[:committed]  # a state with some practitioners in it
            for raw in first:
                app.check_tx(raw)
            app.finalize_block(first, 1, genesis.time_ms + 1000)
            app.commit()
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
        finally:
            app.close()
    return {
        "us_per_tx_min_over_batches": {k: round(v / batch * 1e6, 2) for k, v in best.items()},
        "batch": batch,
        "batches": batches,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    import json

    options = dict(arg.split("=", 1) for arg in sys.argv[1:])  # batch=200 batches=40
    print(json.dumps(run(**{k: int(v) for k, v in options.items()}), indent=2))
