"""API latency: a read, `Patient/$everything`, `Patient/$summary` (the IPS document) and a
filtered search (and its page link) for a
patient with ~500 resources held by three hospitals (the local ones plus the copies the sync
agent prefetched under the patient's consents), on a solo sandbox in this process, over HTTP
on loopback.

    medledger bench api [--set resources=500 --set rounds=50]
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from medledger.api.services import issuer_key
from medledger.api.tokens import mint
from medledger.cli._runtime import Sandbox
from medledger.interop.synth import generate
from medledger.node import heap
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium


def _grow(bundle: dict[str, Any], target: int) -> dict[str, Any]:
    """The same patient's bundle with more observations (fresh ids), up to `target` entries."""
    grown = copy.deepcopy(bundle)
    observations = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    i = 0
    while len(grown["entry"]) < target and observations:
        entry = copy.deepcopy(observations[i % len(observations)])
        entry["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
        entry["resource"].pop("id", None)
        grown["entry"].append(entry)
        i += 1
    return grown


def _pcts(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


def run(resources: int = 500, rounds: int = 50) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        homes = create_consortium(Path(tmp) / "net", 3, genesis_time_ms=int(time.time() * 1000))
        sandbox = Sandbox(homes)
        heap.settle()  # as a node does once started (cli/node.py): no full collections of
        # the imported libraries in the middle of a request
        runtimes = sandbox.runtimes
        try:
            orgs = [r.org for r in runtimes]
            data = generate(1, orgs, seed=3)
            pid = ""
            now = int(time.time() * 1000)
            for rt in runtimes:
                bundles = data.get(rt.org) or []
                base = bundles[0] if bundles else next(b for bs in data.values() for b in bs)
                grown = _grow(base, resources // 3)
                result = Ingestor(rt.node, rt.vault).ingest_bytes(orjson.dumps(grown), "b.json")
                if result.rejections:
                    raise RuntimeError(result.rejections[0])
                (pid,) = result.pids
                if rt is not runtimes[0]:
                    rt.node.wallet.send(
                        "consent.grant",
                        {
                            "pid": pid,
                            "grantee": f"org:{orgs[0]}",
                            "categories": ["*"],
                            "purpose": "treatment",
                            "start_ms": now - 1000,
                            "end_ms": 0,
                            "evidence_hash": b"\x02" * 32,
                            "channel": "portal",  # the patient asked on its portal
                        },
                    )
            lyon = runtimes[0]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                held = lyon.vault.records_of(pid)
                if len({i.rid for i in held}) >= 3 * (resources // 3) - 3:
                    break
                time.sleep(0.2)
            held_count = len({i.rid for i in lyon.vault.records_of(pid)})
            patient_rid = next(
                i.rid
                for i in lyon.vault.records_of(pid, include_copies=False)
                if i.resource_type == "Patient"
            )
            obs_rid = next(
                i.rid
                for i in lyon.vault.records_of(pid, include_copies=False)
                if i.resource_type == "Observation"
            )
            key = lyon.node.config.practitioner_key_path("dr-bench")
            from medledger.ledger.keys import SigningKey

            k = SigningKey.generate()
            k.save(key)
            lyon.node.wallet.send(
                "identity.register",
                {"practitioner": "dr-bench", "key": k.public_key, "roles": ["physician"]},
            )
            t = int(time.time())
            token = mint(
                issuer_key(lyon.node.config.home),
                {
                    "iss": f"urn:medledger:{orgs[0]}:issuer",
                    "aud": f"urn:medledger:{orgs[0]}:fhir",
                    "sub": "Practitioner/dr-bench",
                    "scope": "user/*.rs",
                    "iat": t,
                    "exp": t + 3600,
                },
            )
            headers = {"Authorization": f"Bearer {token}"}
            reads, everything, summaries = [], [], []
            with httpx.Client(base_url=lyon.api_url, headers=headers, timeout=30) as client:
                for _ in range(rounds):
                    s = time.perf_counter()
                    r = client.get(f"/fhir/Observation/{obs_rid}")
                    reads.append(time.perf_counter() - s)
                    assert r.status_code == 200, r.text
                    s = time.perf_counter()
                    r = client.get(
                        f"/fhir/Patient/{patient_rid}/$everything", params={"_count": 1000}
                    )
                    everything.append(time.perf_counter() - s)
                    assert r.status_code == 200, r.text
                    served = len(r.json()["entry"])
                    s = time.perf_counter()
                    r = client.get(f"/fhir/Patient/{patient_rid}/$summary")
                    summaries.append(time.perf_counter() - s)
                    assert r.status_code == 200, r.text
                summary_entries = len(r.json()["entry"])
                # A filtered search over the same records (each decrypted and matched), and
                # the page link it gives (the frozen result: no matching again).
                search = {
                    "patient": patient_rid,
                    "category": "vital-signs,laboratory",
                    "date": "ge2000",
                    "_sort": "-date",
                    "_count": max(1, min(50, resources // 10)),  # two pages at least
                }
                searches, pages = [], []
                for _ in range(rounds):
                    s = time.perf_counter()
                    r = client.get("/fhir/Observation", params=search)
                    searches.append(time.perf_counter() - s)
                    assert r.status_code == 200, r.text
                    nxt = next(x["url"] for x in r.json()["link"] if x["relation"] == "next")
                    s = time.perf_counter()
                    r = client.get(nxt)
                    pages.append(time.perf_counter() - s)
                    assert r.status_code == 200, r.text
                matched = r.json()["total"]
        finally:
            sandbox.close()
    return {
        "resources_held_for_patient": held_count,
        "everything_entries": served,
        "rounds": rounds,
        "read": _pcts(reads),
        "everything": _pcts(everything),
        "search_matches": matched,
        "search_first_page": _pcts(searches),
        "search_next_page": _pcts(pages),
        "summary_entries": summary_entries,
        "summary": _pcts(summaries),
    }


if __name__ == "__main__":
    print(run())
