"""Exchange latency: a cross-hospital record fetch, and a record written at A until readable at B.

    medledger bench exchange [--set fetches=200] [--set writes=30] [--set cometbft=1]

Fetch: hospital B reads one record of hospital A through A's gateway (mutual TLS, signed
request, evidence, authorize, access entry, commitment checked at B). The custodian serves only
once the access entry is committed, so each fetch contains a wait for a block; the figure that
matters for the exchange itself is the fetch *excluding that wait*, which A's gateway reports
(Server-Timing `commit`) and which is subtracted here. Both are reported.

Write at A to readable at B: a new record ingested at A (the clock starts before the ingest
call) until (1) B's own replica shows the entry and B's copy of A's metadata key opens it (the
real-time index: one block), and (2) the copy sits in B's vault, re-encrypted, fetched by B's
sync agent on its own (A's block, then A's access entry's block). Solo sandbox (50 ms block
cut) always; on CometBFT with 1 s and 250 ms blocks when CometBFT is installed (`cometbft=0`
skips it).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from medledger.exchange.client import Directory, ExchangeClient
from medledger.exchange.service import HospitalExchange
from medledger.exchange.sync import SyncStore
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.indexing import open_meta
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium
from medledger.vault import RecordNotFound, Vault

A, B = "chu-lyon", "aphp-paris"
EVIDENCE = hashlib.sha256(b"consent form").digest()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": _pct(values, 0.50),
        "p95": _pct(values, 0.95),
        "p99": _pct(values, 0.99),
        "mean": round(statistics.fmean(values), 2),
    }


def _commit_ms(server_timing: str) -> float:
    for part in server_timing.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "commit":
            return float(dur)
    return 0.0


def _observation(patient_rid: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": f"Patient/{patient_rid}"},
            "effectiveDateTime": f"2025-01-{1 + i % 28:02d}T08:30:00+01:00",
            "valueQuantity": {"value": 6 + (i % 30) / 10, "unit": "%"},
        }
    )


def _fetches(client: ExchangeClient, pid: str, rids: list[str], n: int) -> dict[str, Any]:
    total, excluding = [], []
    for i in range(n):
        rid = rids[i % len(rids)]
        start = time.perf_counter()
        answer, timing = client.post(A, "records", {"pid": pid, "rids": [rid]})
        fetched = client.check_records(A, pid, answer)
        elapsed = (time.perf_counter() - start) * 1000
        assert [r.rid for r in fetched.records] == [rid]
        total.append(elapsed)
        excluding.append(elapsed - _commit_ms(timing))
    return {"excluding_block_wait_ms": _summary(excluding), "total_ms": _summary(total)}


def _wait_copy(vault: Vault, rid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(RecordNotFound):
            vault.info(rid)
            return
        time.sleep(0.005)
    raise TimeoutError(f"record {rid} not at B after {timeout}s")


def _writes(
    node_a: Node,
    vault_a: Vault,
    node_b: Node,
    vault_b: Vault,
    key_b: Callable[[], dict[str, bytes] | None],
    pid: str,
    n: int,
    arrival_s: float,
) -> dict[str, Any]:
    """Write n records at A; time until B's index shows them, and until B's vault holds them.

    Writes arrive at random moments (a uniform pause of up to one block before each), as
    clinical writes do: a loop writing right after each block would always wait a full block.
    """
    ingestor = Ingestor(node_a, vault_a)
    patient = next(
        i.rid for i in vault_a.records_of(pid, include_copies=False) if i.resource_type == "Patient"
    )
    rng = random.Random(7)
    index_ms, copy_ms = [], []
    for i in range(n):
        time.sleep(rng.uniform(0, arrival_s))
        start = time.perf_counter()
        result = ingestor.ingest_bytes(_observation(patient, i), f"obs-{i}.json")
        if result.rejections:
            raise RuntimeError(result.rejections[0])
        rid = result.rids[0]
        _wait_index(node_b, key_b, rid)
        index_ms.append((time.perf_counter() - start) * 1000)
        _wait_copy(vault_b, rid)
        copy_ms.append((time.perf_counter() - start) * 1000)
    return {
        "visible_in_b_index_ms": _summary(index_ms),
        "copy_in_b_vault_ms": _summary(copy_ms),
    }


def _wait_index(
    node_b: Node, key_b: Callable[[], dict[str, bytes] | None], rid: str, timeout: float = 30.0
) -> None:
    """Until B's own replica has the entry and B's copy of the metadata key opens it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = node_b.engine.query("records/entry", {"rid": rid})
        key = key_b()
        if entry is not None and key is not None:
            open_meta(key, rid, entry["version"], entry["meta_ct"])
            return
        time.sleep(0.005)
    raise TimeoutError(f"record {rid} not in B's index after {timeout}s")


def _setup_patient(node_a: Node, vault_a: Vault) -> tuple[str, list[str]]:
    bundle = generate(1, [A, B], seed=21)[A][0]
    result = Ingestor(node_a, vault_a).ingest_bytes(orjson.dumps(bundle), "patient.json")
    if result.rejections:
        raise RuntimeError(result.rejections[0])
    (pid,) = result.pids
    node_a.wallet.send(
        "consent.grant",
        {
            "pid": pid,
            "grantee": f"org:{B}",
            "categories": ["*"],
            "purpose": "treatment",
            "start_ms": 0,
            "evidence_hash": EVIDENCE,
            "channel": "portal",  # the patient asked on A's portal (A treats them)
        },
    )
    return pid, result.rids


def run_solo(fetches: int, writes: int, interval_ms: int = 50) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        homes = create_consortium(Path(tmp) / "net", 2, genesis_time_ms=int(time.time() * 1000))
        root = Node.open(homes[0], serve=True, interval=interval_ms / 1000)
        b = root.sibling(homes[1])
        va, vb = Vault.open(root.config.vault_config()), Vault.open(b.config.vault_config())
        directory = Directory()
        xa = HospitalExchange(root, va, directory=directory, port=0).start()
        xb = HospitalExchange(b, vb, directory=directory, port=0).start(sync=False)
        try:
            pid, rids = _setup_patient(root, va)
            fetch = _fetches(xb.client, pid, rids, fetches)
            xb.agent.start()
            xb.agent.wait_idle(60)
            write = _writes(
                root, va, b, vb, lambda: xb.store.keys(A, pid), pid, writes, interval_ms / 1000
            )
        finally:
            xb.stop()
            xa.stop()
            va.close()
            vb.close()
            root.close()
    return {"block_cut_ms": interval_ms, "fetch": fetch, "write_at_a_to_b": write}


@contextlib.contextmanager
def _cometbft(block_time_ms: int) -> Iterator[list[Path]]:
    from medledger.consensus.cometbft import processes

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "net"
        homes = create_consortium(
            directory,
            4,
            engine="cometbft",
            chain_id="medledger-bench",
            block_time_ms=block_time_ms,
            genesis_time_ms=int(time.time() * 1000),
        )
        processes.up(directory, timeout=60)
        try:
            yield homes
        finally:
            processes.down(directory)


def run_cometbft(block_time_ms: int, fetches: int, writes: int) -> dict[str, Any]:
    """Four hospitals, each its own `medledger node run` process; the bench acts as A and B's
    clients through their nodes' RPC and reads B's vault file to see the copies arrive."""
    with _cometbft(block_time_ms) as homes:
        node_a, node_b = Node.open(homes[0]), Node.open(homes[1])
        va, vb = Vault.open(node_a.config.vault_config()), Vault.open(node_b.config.vault_config())
        client = ExchangeClient(node_b)
        store_b = SyncStore(homes[1] / "exchange" / "sync.db", node_b.config.box_key())
        try:
            pid, rids = _setup_patient(node_a, va)
            deadline = time.monotonic() + 60
            while len(vb.records_of(pid)) < len(rids) and time.monotonic() < deadline:
                time.sleep(0.05)  # B's own agent prefetches after the consent
            fetch = _fetches(client, pid, rids, fetches)
            write = _writes(
                node_a,
                va,
                node_b,
                vb,
                lambda: store_b.keys(A, pid),
                pid,
                writes,
                block_time_ms / 1000,
            )
        finally:
            store_b.close()
            client.close()
            va.close()
            vb.close()
            node_a.close()
            node_b.close()
    return {"block_time_ms": block_time_ms, "fetch": fetch, "write_at_a_to_b": write}


def run(fetches: int = 200, writes: int = 30, cometbft: int = 1) -> dict[str, Any]:
    result: dict[str, Any] = {"solo": run_solo(fetches, writes)}
    if cometbft:
        from medledger.consensus.cometbft import testnet

        try:
            testnet.cometbft_binary()
        except testnet.TestnetError as exc:
            result["cometbft"] = f"skipped: {exc}"
            return result
        result["cometbft_1s"] = run_cometbft(1000, max(20, fetches // 4), writes)
        result["cometbft_250ms"] = run_cometbft(250, max(20, fetches // 4), writes)
    result["goals"] = {
        "fetch_excluding_block_wait_p50_ms": 20,
        "fetch_excluding_block_wait_p99_ms": 100,
        "write_to_readable_p95_ms_cometbft_1s": 2000,
    }
    return result


if __name__ == "__main__":
    print(orjson.dumps(run(), option=orjson.OPT_INDENT_2).decode())
