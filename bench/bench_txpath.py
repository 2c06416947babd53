"""One validator's CPU per tx, step by step: the path every CometBFT node runs for each tx.

Replays, in one process and without sockets, what a node's app does under CometBFT: CheckTx
of every tx (decode, Ed25519 verify, the handler on the mempool's state), then per block
ProcessProposal (the block simulated: the handler again, signatures from the verified-tx
cache), FinalizeBlock (which reuses that simulation) and Commit. Thread CPU time of each
step, per tx (`identity.register`, as `medledger bench cometbft` sends) and per audit entry
(`access.log` txs of `entries` entries, as the audit journal sends when driven hard). Beside
them, the pure parts measured alone on the same txs (decode, verify) and the cost of looking
up a key the state lacks, with and without the store's key filter.

    medledger bench txpath [--set txs=6000 --set block=400 --set entries=487 --set waiting=0]

`waiting` keeps that many txs checked ahead of the blocks, as a loaded mempool does: each
block takes the oldest, and Commit carries the others over to the new state.

To compare with another checkout's code, run this file with that code on the path, in
turn with this one: `PYTHONPATH=<clone>/src .venv/bin/python bench/bench_txpath.py`. The
figures are one node's; a network of four pays each four times (docs/benchmarks.md,
"Session 6").
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medledger.contracts import default_registry, default_versions
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey
from medledger.ledger.store import Store
from medledger.ledger.tx import decode_tx, sign_tx, verify_signature

CHAIN = "medledger-bench"
SIGNERS = 16


def _genesis(orgs: list[SigningKey], access: int | None = None) -> Genesis:
    contracts = default_versions()
    if access is not None:
        contracts["access"] = access
    return Genesis(
        chain_id=CHAIN,
        time_ms=1_700_000_000_000,
        members=[GenesisMember(f"h{i}", f"H{i}", k.public_key) for i, k in enumerate(orgs)],
        solo_key=SigningKey.generate().public_key,
        contracts=contracts,
    )


def _registrations(orgs: list[SigningKey], n: int) -> list[bytes]:
    return [
        sign_tx(
            orgs[i % len(orgs)],
            CHAIN,
            "identity.register",
            {"practitioner": f"p-{i:07d}", "key": os.urandom(32), "roles": ["nurse"]},
            i // len(orgs) + 1,
        )
        for i in range(n)
    ]


def _audit_logs(org: SigningKey, txs: int, entries: int, version: int = 1) -> list[bytes]:
    """As the journal sends them: v1 entries carry an `id`, v2 entries a `seq`."""
    seqs = iter(range(1, txs * entries + 1))

    def entry(j: int) -> dict[str, Any]:
        ref: dict[str, Any] = {"id": os.urandom(16).hex()} if version < 2 else {"seq": next(seqs)}
        return {
            "actor": "org:h0",
            "actor_org": "h0",
            "pid": os.urandom(32).hex(),
            "action": "read",
            "purpose": "treatment",
            "outcome": "granted",
            "basis": "custodian",
            "reason": "",
            "rids": [f"obs-{j}", f"enc-{j}"],
            **ref,
        }

    return [
        sign_tx(
            org, CHAIN, "access.log", _log_body([entry(j) for j in range(entries)], version), n + 1
        )
        for n in range(txs)
    ]


def _log_body(entries: list[dict[str, Any]], version: int) -> dict[str, Any]:
    try:
        from medledger.contracts.access import log_body
    except ImportError:  # the code measured predates access v2
        return {"entries": entries}
    return log_body(entries, version)


def _replay(
    app: Application, txs: list[bytes], block: int, per: int, waiting: int = 0
) -> dict[str, float]:
    """CometBFT's flow on one node; µs of thread CPU per unit (`per` units in all).

    With `waiting`, that many more txs are checked than each block takes, as in a mempool
    under load: each block holds the oldest ones, and Commit carries the rest over."""
    spent = {"check_tx": 0.0, "process_proposal": 0.0, "finalize_block": 0.0, "commit": 0.0}
    time_ms = app.genesis.time_ms
    checked = 0
    for start in range(0, len(txs), block):
        chunk = txs[start : start + block]
        t = time.thread_time()
        for raw in txs[checked : start + block + waiting]:
            result = app.check_tx(raw)
            if not result.ok:
                raise RuntimeError(f"bench tx refused: {result.log}")
        spent["check_tx"] += time.thread_time() - t
        checked = max(checked, min(len(txs), start + block + waiting))
        height, time_ms = app.height + 1, time_ms + 1000
        t = time.thread_time()
        app.simulate_block(chunk, height, time_ms)
        spent["process_proposal"] += time.thread_time() - t
        t = time.thread_time()
        app.finalize_block(chunk, height, time_ms)
        spent["finalize_block"] += time.thread_time() - t
        t = time.thread_time()
        app.commit()
        spent["commit"] += time.thread_time() - t
    out = {k: round(v / per * 1e6, 1) for k, v in spent.items()}
    out["total"] = round(sum(spent.values()) / per * 1e6, 1)
    return out


def _each(items: list[bytes], fn: Callable[[bytes], object]) -> float:
    t = time.thread_time()
    for item in items:
        fn(item)
    return round((time.thread_time() - t) / max(1, len(items)) * 1e6, 1)


def _absent_lookups(directory: Path, n: int) -> dict[str, float]:
    """µs to look up a key the state lacks (a new practitioner's), in a store of 20,000 keys."""
    out = {}
    for name, key_filter in (("sqlite", False), ("key_filter", True)):
        try:
            store = Store(directory / f"{name}.db", key_filter=key_filter)
        except TypeError:  # the code measured predates the key filter
            continue
        try:
            writes: dict[bytes, bytes | None] = {
                f"id/prac/h{i % 4}/p-{i:07d}".encode(): b"\x01" for i in range(20_000)
            }
            store.commit(writes, 1, b"h", None)
            fresh = [f"id/prac/h{i % 4}/q-{i:07d}".encode() for i in range(n)]
            out[name] = _each(fresh, store.get_raw)
        finally:
            store.close()
    return out


def run(
    txs: int = 6000, block: int = 400, entries: int = 487, audit_txs: int = 20, waiting: int = 0
) -> Any:
    orgs = [SigningKey.generate() for _ in range(SIGNERS)]
    genesis = _genesis(orgs)
    registrations = _registrations(orgs, txs)
    versions = default_registry().versions("access")
    audit = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lookups = _absent_lookups(folder, min(txs, 5000))
        app = Application.open(folder / "register.db", genesis, default_registry())
        app.init_chain()
        register = _replay(app, registrations, block, txs, waiting)
        app.close()
        for version in versions:  # every version of `access` this code knows, same run
            logs = _audit_logs(orgs[0], audit_txs, entries, version)
            app = Application.open(
                folder / f"audit{version}.db", _genesis(orgs, version), default_registry()
            )
            app.init_chain()
            audit[f"v{version}"] = _replay(app, logs, 2, audit_txs * entries)
            app.close()
    decoded = [decode_tx(raw) for raw in registrations]
    return {
        "us_per_tx_one_node": {
            "identity.register": register,
            "decode_alone": _each(registrations, decode_tx),
            "verify_alone": _verify_each(decoded),
        },
        "us_per_audit_entry_one_node": audit,  # by version of the `access` contract
        "us_per_absent_key_lookup": lookups,
        "txs": txs,
        "block": block,
        "waiting": waiting,
        "audit": {"txs": audit_txs, "entries_per_tx": entries},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _verify_each(decoded: list[Any]) -> float:
    t = time.thread_time()
    for tx in decoded:
        verify_signature(tx)
    return round((time.thread_time() - t) / max(1, len(decoded)) * 1e6, 1)


if __name__ == "__main__":
    import json
    import sys

    options = dict(arg.split("=", 1) for arg in sys.argv[1:])  # txs=6000 block=400 ...
    print(json.dumps(run(**{k: int(v) for k, v in options.items()}), indent=2))
