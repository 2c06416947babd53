"""Solo engine throughput: signed practitioner registrations, submitted to committed.

Also measures, in the same run, the raw Ed25519 verify rate of this machine (pynacl), since
the ledger verifies every signature once: the ratio of the two says how much of the machine's
signature budget the rest of the state machine leaves.

    medledger bench ledger [--txs 20000]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from medledger.consensus.solo import SoloEngine
from medledger.contracts import default_registry, default_versions
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey, verify
from medledger.ledger.tx import sign_tx

CHAIN = "medledger-bench"


def verify_rate(seconds: float = 2.0) -> float:
    key = SigningKey.generate()
    msg = os.urandom(200)
    sig = key.sign(msg)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            verify(key.public_key, msg, sig)
        n += 500
    return n / (time.perf_counter() - start)


def run(
    txs: int = 20_000, hospitals: int = 4, interval_ms: int = 50, batch: int = 500
) -> dict[str, Any]:
    orgs = [SigningKey.generate() for _ in range(hospitals)]
    solo = SigningKey.generate()
    genesis = Genesis(
        chain_id=CHAIN,
        time_ms=int(time.time() * 1000),
        members=[GenesisMember(f"h{i}", f"H{i}", k.public_key) for i, k in enumerate(orgs)],
        solo_key=solo.public_key,
        contracts=default_versions(),
    )
    signed = []
    for i in range(txs):
        org = orgs[i % hospitals]
        body = {
            "practitioner": f"practitioner-{i:07d}",
            "key": SigningKey.generate().public_key,
            "roles": ["physician", "emergency"],
        }
        signed.append(sign_tx(org, CHAIN, "identity.register", body, i // hospitals + 1))
    size = sum(len(t) for t in signed) / len(signed)
    with tempfile.TemporaryDirectory() as tmp:
        app = Application.open(Path(tmp) / "ledger.db", genesis, default_registry())
        engine = SoloEngine(app, solo, interval=interval_ms / 1000)
        start = time.perf_counter()
        last = None
        for i in range(0, len(signed), batch):
            for submitted in engine.submit_many(signed[i : i + batch]):
                if not submitted.accepted:
                    raise RuntimeError(f"bench tx refused: {submitted.check.log}")
                last = submitted.tx_id
        assert last is not None
        engine.wait_for_commit(last, timeout=600)
        elapsed = time.perf_counter() - start
        height = engine.height()
        engine.close()
        app.close()
    committed_rate = txs / elapsed
    vrate = verify_rate()
    return {
        "txs": txs,
        "submitted_in_batches_of": batch,
        "tx_bytes_avg": round(size),
        "blocks": height,
        "seconds": round(elapsed, 3),
        "committed_tx_per_s": round(committed_rate),
        "ed25519_verify_per_s": round(vrate),
        "ratio": round(committed_rate / vrate, 3),
    }


if __name__ == "__main__":
    print(run())
