"""Vault benchmark (SQLite): erase time for a small and a large patient, put/get throughput.

The issue's goal: erasing one patient takes the same time with 10 and with
10,000 records (within noise), at most 50 ms. erase() is timed alone (the
constant-time key destruction); purge_pending(), the deferred deletion of the
ciphertext rows, is timed separately to show the part that does grow.

Run: .venv/bin/python bench/bench_vault.py [records_small records_large]
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from medledger.vault import Vault, VaultConfig

HOSPITAL = "hosp-bench"


def _resource(i: int) -> bytes:
    """A ~1 KB FHIR Observation, the typical size of an ingested resource."""
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": f"obs-{i}",
            "status": "final",
            "category": [{"coding": [{"system": "http://hl7.org/fhir", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": "Patient/p"},
            "effectiveDateTime": "2024-03-01T08:30:00+01:00",
            "valueQuantity": {
                "value": 7.1 + i % 10,
                "unit": "%",
                "system": "http://unitsofmeasure.org",
            },
            "note": [{"text": "x" * 700}],
        }
    )


def _pid(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _fill(vault: Vault, pid: str, n: int, batch: int = 500) -> None:
    body = _resource(0)
    for start in range(0, n, batch):
        with vault.batch():
            for i in range(start, min(n, start + batch)):
                vault.put(
                    pid, f"{pid[:12]}-{i}", 1, body, resource_type="Observation", custodian=HOSPITAL
                )


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _erase_runs(vault: Vault, n: int, runs: int, tag: str) -> dict[str, Any]:
    erase_s: list[float] = []
    purge_s: list[float] = []
    for run in range(runs):
        pid = _pid(f"{tag}-{n}-{run}")
        _fill(vault, pid, n)
        vault.purge_pending()  # steady state: WAL checkpointed before the measured erase
        t0 = time.perf_counter()
        receipt = vault.erase(pid)
        t1 = time.perf_counter()
        report = vault.purge_pending()
        t2 = time.perf_counter()
        assert receipt.records_shredded == n and report.rows_deleted == n
        erase_s.append(t1 - t0)
        purge_s.append(t2 - t1)
    return {
        "records": n,
        "runs": runs,
        "erase_ms_median": _ms(statistics.median(erase_s)),
        "erase_ms_min": _ms(min(erase_s)),
        "erase_ms_max": _ms(max(erase_s)),
        "purge_ms_median": _ms(statistics.median(purge_s)),
    }


def _throughput(vault: Vault, n: int) -> dict[str, float]:
    body = _resource(1)
    pid = _pid("throughput")
    t0 = time.perf_counter()
    for i in range(n):
        vault.put(pid, f"single-{i}", 1, body, resource_type="Observation", custodian=HOSPITAL)
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    with vault.batch():
        for i in range(n):
            vault.put(pid, f"batch-{i}", 1, body, resource_type="Observation", custodian=HOSPITAL)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        vault.get(f"batch-{i}")
    got = time.perf_counter() - t0
    return {
        "put_per_s_one_tx_each": round(n / single),
        "put_per_s_in_one_batch": round(n / batched),
        "get_per_s": round(n / got),
    }


def run(records_small: int = 10, records_large: int = 10000, runs: int = 5) -> dict[str, Any]:
    """Measure the SQLite vault in a temporary folder; returns a JSON-able dict of figures."""
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "backend": "sqlite (WAL, synchronous=FULL, secure_delete=ON)",
    }
    with tempfile.TemporaryDirectory(prefix="medledger-bench-") as tmp:
        config = VaultConfig(HOSPITAL, path=Path(tmp) / "vault.db", kek=secrets.token_bytes(32))
        with Vault.open(config) as vault:
            # Background: other patients, so the database is not trivially small.
            for k in range(20):
                _fill(vault, _pid(f"background-{k}"), 100)
            small = _erase_runs(vault, records_small, runs, "small")
            large = _erase_runs(vault, records_large, runs, "large")
            results["erase_small"] = small
            results["erase_large"] = large
            results["erase_ratio_large_over_small"] = round(
                large["erase_ms_median"] / max(small["erase_ms_median"], 1e-6), 2
            )
            results["throughput"] = _throughput(vault, 2000)
    return results


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(orjson.dumps(run(*args), option=orjson.OPT_INDENT_2).decode())
