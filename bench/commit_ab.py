"""`Store.commit` of another checkout against this one's, on the same blocks, in one process.

On a machine shared with other work, two runs of one code differ by ±30 %; here each block
(400 `identity.register` txs, executed once by this code's app) is committed into two fresh
stores, the other checkout's `Store` and this one's, in alternating order, and the thread
CPU of each commit is summed. It also checks that both stores hold the same last block row
and the same state.

    .venv/bin/python bench/commit_ab.py <other checkout>/src/medledger/ledger/store.py [txs]
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_txpath  # noqa: E402

from medledger.contracts import default_registry  # noqa: E402
from medledger.ledger import store as this_store  # noqa: E402
from medledger.ledger.app import Application  # noqa: E402
from medledger.ledger.keys import SigningKey  # noqa: E402
from medledger.ledger.results import BlockRecord  # noqa: E402

BLOCK = 400


def _other_store(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("other_store", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(other_path: str, txs: int = 16_000) -> dict[str, Any]:
    orgs = [SigningKey(bytes([7, i]) * 16) for i in range(bench_txpath.SIGNERS)]
    genesis = bench_txpath._genesis(orgs)
    registrations = bench_txpath._registrations(orgs, txs)
    spent = {"other": 0.0, "this": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        app = Application.open(folder / "app.db", genesis, default_registry())
        app.init_chain()
        stores = {
            "other": _other_store(other_path).Store(folder / "other.db", key_filter=True),
            "this": this_store.Store(folder / "this.db", key_filter=True),
        }
        for s in stores.values():
            s.commit({}, 0, b"genesis", None)
        height = 0
        for n, start in enumerate(range(0, txs, BLOCK)):
            height = app.height + 1
            app.finalize_block(registrations[start : start + BLOCK], height, 1000 * height)
            block = app._pending
            assert block is not None
            record = BlockRecord(
                block.header, block.header_bytes, b"", block.txs, block.results, block.events
            )
            for who in ("other", "this") if n % 2 == 0 else ("this", "other"):
                t = time.thread_time()
                stores[who].commit(dict(block.view.writes), height, block.app_hash, record)
                spent[who] += time.thread_time() - t
            app.commit()
        same = (
            stores["other"].raw_block(height) == stores["this"].raw_block(height)
            and stores["other"].state_digest() == stores["this"].state_digest()
        )
        for s in stores.values():
            s.close()
        app.close()
    return {
        "us_per_tx_commit": {k: round(v / txs * 1e6, 1) for k, v in spent.items()},
        "same_bytes": same,
        "txs": txs,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(sys.argv[1], *(int(a) for a in sys.argv[2:3]))))
