"""Ingest rate: FHIR resources per second, validated, encrypted, stored and registered on the
chain through the solo engine, for transaction Bundles and for IPS-shaped `document` Bundles
(a Composition, the author Practitioner, the custodian Organization, Medications: what other
systems send); erasure time for a patient with few and many records; and the replication lag
to the replica peers while `replicated` patients are ingested with the gateways and
replicators running (bench_replicas.py).

    medledger bench ingest [--set patients=40 --set documents=40 --set replicated=40]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from medledger.interop.synth import as_document, generate
from medledger.node import Node, heap
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium
from medledger.vault import Vault


def run(
    patients: int = 40,
    erase_small: int = 10,
    erase_large: int = 10_000,
    workers: int = 2,
    documents: int = 40,
    replicated: int = 40,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        homes = create_consortium(Path(tmp) / "net", 3, genesis_time_ms=int(time.time() * 1000))
        org = "chu-lyon"
        bundles = generate(patients, [org, "aphp-paris", "chu-bordeaux"], seed=11)[org]
        payloads = [orjson.dumps(b) for b in bundles]
        resources = sum(len(b["entry"]) for b in bundles)
        with Node.open(homes[0]) as node, Vault.open(node.config.vault_config()) as vault:
            ingestor = Ingestor(node, vault)
            heap.settle()  # as `medledger ingest` and a node do once started
            start, cpu = time.perf_counter(), time.process_time()
            inputs = [(data, f"bundle-{i}.json") for i, data in enumerate(payloads)]
            for result in ingestor.ingest_many(inputs, workers=workers):
                if result.rejections:
                    raise RuntimeError(result.rejections[0])
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            docs = _documents(ingestor, documents, workers)
            small, large = _erase_times(vault, erase_small, erase_large)
    replication = _replication(replicated, workers) if replicated else None
    return {
        "bundles": len(payloads),
        "validation_workers": workers,
        "resources": resources,
        "seconds": round(elapsed, 3),
        "resources_per_s": round(resources / elapsed),
        # The storing process's CPU (the validation workers' apart): load-robust, and the
        # bound of the rate where workers have cores of their own.
        "storing_cpu_ms_per_resource": round(cpu / resources * 1000, 3),
        "documents": docs,
        f"erase_ms_{erase_small}_records": small,
        f"erase_ms_{erase_large}_records": large,
        "replication": replication,
    }


def _replication(patients: int, workers: int) -> dict[str, Any]:
    """Lag of each change to each replica peer while ingesting (bench_replicas.py)."""
    import importlib.util

    path = Path(__file__).with_name("bench_replicas.py")
    spec = importlib.util.spec_from_file_location("bench_replicas", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: dict[str, Any] = module.lag_under_ingest(patients, workers)
    return found


def _documents(ingestor: Ingestor, count: int, workers: int) -> dict[str, Any]:
    """Ingest rate of IPS-shaped document Bundles (other patients than the transactions').

    A refused document is counted and its first reason reported, not raised: the rate is over
    the documents that went in."""
    org = ingestor.org
    made = generate(count, [org, "aphp-paris", "chu-bordeaux"], seed=12)[org][:count]
    payloads = [orjson.dumps(as_document(b)) for b in made]
    inputs = [(data, f"document-{i}.json") for i, data in enumerate(payloads)]
    accepted = refused = 0
    first_refusal = ""
    start, cpu = time.perf_counter(), time.process_time()
    for result in ingestor.ingest_many(inputs, workers=workers):
        if result.rejections:
            refused += 1
            first = result.rejections[0]
            first_refusal = first_refusal or f"{first.source} {first.where}: {first.reason}"
        else:
            accepted += result.accepted
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "documents": len(payloads),
        "refused": refused,
        "first_refusal": first_refusal,
        "resources_stored": accepted,
        "seconds": round(elapsed, 3),
        "resources_per_s": round(accepted / elapsed) if accepted else None,
        "storing_cpu_ms_per_resource": round(cpu / accepted * 1000, 3) if accepted else None,
    }


def _erase_times(vault: Vault, small: int, large: int, runs: int = 5) -> tuple[float, float]:
    """Median erase() time for patients holding `small` and `large` records (vault only)."""
    import hashlib

    doc = orjson.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    medians = []
    for label, n in enumerate((small, large)):
        times = []
        for r in range(runs):
            pid = hashlib.sha256(f"bench-{label}-{n}-{r}".encode()).hexdigest()
            with vault.batch():
                for i in range(n):
                    vault.put(
                        pid,
                        f"b{label}-{n}-{r}-{i}",
                        1,
                        doc,
                        resource_type="Observation",
                        custodian=vault.hospital_id,
                    )
            t = time.perf_counter()
            vault.erase(pid)
            times.append((time.perf_counter() - t) * 1000)
        vault.purge_pending()
        medians.append(round(statistics.median(times), 3))
    return medians[0], medians[1]


if __name__ == "__main__":
    print(run())
