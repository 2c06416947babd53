"""Encrypted replicas at peers (issue 15): replication lag while a hospital ingests, what its
replicas cost its peers in storage, and how fast a lost vault is restored from two peers and
checked against the chain.

Three hospitals of a solo sandbox in this process, gateways on loopback; chu-lyon ingests
synthetic patients while its replicator sends the changes to its two replica peers.

    medledger bench replicas [--set patients=500]    (500 patients: about 10,000 records)
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from medledger.exchange.client import Directory, ExchangeClient
from medledger.exchange.service import HospitalExchange
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.node.replicas import ensure_backup_key, replica_peers, restore_vault
from medledger.provisioning import create_consortium
from medledger.vault import Vault
from medledger.vault.keys import load_kek

ORGS = ["chu-lyon", "aphp-paris", "chu-bordeaux"]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@contextlib.contextmanager
def sandbox(tmp: Path) -> Iterator[tuple[list[Node], list[Vault], list[HospitalExchange]]]:
    """Three hospitals with their gateways, sync agents and replicators running."""
    homes = create_consortium(tmp / "net", 3, genesis_time_ms=int(time.time() * 1000))
    root = Node.open(homes[0], serve=True, interval=0.05)
    nodes = [root, *(root.sibling(h) for h in homes[1:])]
    vaults = [Vault.open(n.config.vault_config()) for n in nodes]
    directory = Directory()
    exchanges = [
        HospitalExchange(n, v, directory=directory, port=0)
        for n, v in zip(nodes, vaults, strict=True)
    ]
    try:
        for x in exchanges:
            x.start()
        yield nodes, vaults, exchanges
    finally:
        for x in exchanges:
            x.stop()
        for v in vaults:
            v.close()
        root.close()


def replicated(node: Node, vault: Vault) -> bool:
    head, acked = vault.journal_head(), vault.replica_peers()
    return all(
        p in acked and acked[p][0] >= head for p in replica_peers(node.engine, node.config.org)
    )


def lag_under_ingest(patients: int, workers: int = 2) -> dict[str, Any]:
    """Ingest `patients` bundles at one hospital with its replicas on; the lag of each change
    (vault commit to a peer's acknowledgement), per change and peer."""
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as (nodes, vaults, xs):
        result = _ingest(nodes[0], vaults[0], patients, workers)
        _wait(nodes[0], vaults[0])
        lags = list(xs[0].replicator.lags)
    return {**result, **_lag_figures(lags)}


def _ingest(node: Node, vault: Vault, patients: int, workers: int) -> dict[str, Any]:
    bundles = generate(patients, ORGS, seed=21)[node.config.org]
    inputs = [(orjson.dumps(b), f"bundle-{i}.json") for i, b in enumerate(bundles)]
    start = time.perf_counter()
    for result in Ingestor(node, vault).ingest_many(inputs, workers=workers):
        if result.rejections:
            raise RuntimeError(result.rejections[0])
    elapsed = time.perf_counter() - start
    resources = sum(len(b["entry"]) for b in bundles)
    return {
        "resources": resources,
        "ingest_resources_per_s": round(resources / elapsed),
    }


def _wait(node: Node, vault: Vault, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not replicated(node, vault):
        if time.monotonic() > deadline:
            raise TimeoutError("the replicas did not catch up")
        time.sleep(0.05)


def _lag_figures(lags: list[float]) -> dict[str, Any]:
    return {
        "changes_acknowledged": len(lags),
        "lag_p50_s": round(_pct(lags, 0.5), 3),
        "lag_p95_s": round(_pct(lags, 0.95), 3),
        "lag_max_s": round(max(lags), 3) if lags else 0.0,
    }


def run(patients: int = 500, workers: int = 2) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as (nodes, vaults, xs):
        node, vault = nodes[0], vaults[0]
        ingested = _ingest(node, vault, patients, workers)
        _wait(node, vault)
        lags = list(xs[0].replicator.lags)
        org = node.config.org
        peers = replica_peers(node.engine, org)
        records = sum(len(vault.records_of(pid)) for pid in vault.patients())
        held = {p: xs[ORGS.index(p)].custody.usage(org) for p in peers}
        vault_file = Path(node.config.vault_config().path or "")
        vault_bytes = vault_file.stat().st_size

        # The vault is lost; the keys are not: restore from the two peers.
        xs[0].stop()
        vault.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(vault_file) + suffix).unlink(missing_ok=True)
        home = node.config.home
        client = ExchangeClient(node, directory=xs[1].directory)
        cpu = time.process_time()  # this process: the restore and both peers' gateways
        try:
            report = restore_vault(
                home, ensure_backup_key(home), load_kek(home / "keys" / "vault.kek"), client, peers
            )
        finally:
            client.close()
        cpu = time.process_time() - cpu
        vaults[0] = Vault.open(node.config.vault_config())
        xs[0] = HospitalExchange(node, vaults[0], directory=xs[1].directory, port=0)
    per_peer = statistics.mean(u.bytes for u in held.values())
    return {
        "patients": patients,
        **ingested,
        **_lag_figures(lags),
        "record_versions": records,
        "vault_file_bytes_per_record": round(vault_bytes / records),
        "peer_items_per_record": round(
            statistics.mean(u.items for u in held.values()) / records, 2
        ),
        "peer_bytes_per_record": round(per_peer / records),
        # what the peers keep in the trash (replaced or dropped versions, custody_grace_days)
        # after this ingestion, per record: counted in custody_quota_mb with the live items
        "peer_trash_bytes_per_record": round(
            statistics.mean(u.trash_bytes for u in held.values()) / records
        ),
        "peer_quota_bytes_per_record": round(
            statistics.mean(u.counted for u in held.values()) / records
        ),
        "restore": {
            "records": report.records,
            "checked": report.checked,
            "complete": report.complete,
            "seconds": round(report.seconds, 2),
            "records_per_s": round(report.rate),
            # CPU seconds, which the machine's load does not change: of the restoring thread,
            # and of the whole process (the restore and both peers' gateways serving it)
            "restore_cpu_seconds": round(report.cpu_seconds, 2),
            "records_per_restore_cpu_s": round(report.records / report.cpu_seconds)
            if report.cpu_seconds
            else None,
            "process_cpu_seconds": round(cpu, 2),
            "records_per_process_cpu_s": round(report.records / cpu) if cpu else None,
        },
    }


if __name__ == "__main__":
    print(run())
