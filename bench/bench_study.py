"""A stratified study query over `patients` patients spread over four CometBFT hospitals.

Four validating hospitals on loopback, each a `medledger node run` (block time
`block_time_ms`, 1 s by default, as `medledger init --engine cometbft` writes). The bench
loads light synthetic patients (a Patient with its INS, one to three HbA1c results in %, a
type 2 diabetes Condition for some; `shared` per cent of them followed in two hospitals),
enrols every one in a study on a hospital's portal, submits a stratified query (sex x three
age bands; count, mean, stddev, a histogram and its quartiles; epsilon 0.5) and approves it.
Then each node's study agent answers by itself.

The figure is the end-to-end time from the running event to the result: from the moment the
last approval's block is committed (the query runs) to the moment a client first sees the
query `done`, polled every 20 ms. Its breakdown: each node's own timing of its answer, read
from its log (read: the chain; evaluate: its vault; send: the partials out, audited; wait:
the partials in; tally: merge, noise, mask; commit: its answer tx to its block; and the
answering thread's CPU: evaluate_cpu, and cpu for the whole answer, the figures a loaded
machine does not inflate), and the blocks between the running one and the done one. The
approvals are excluded.

    medledger bench study                           # 10,000 patients, 1 s blocks
    medledger bench study --set patients=2000 --set block_time_ms=1000
"""

from __future__ import annotations

import hashlib
import random
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from medledger.consensus.cometbft import processes
from medledger.consensus.cometbft.rpc import RpcUnavailable
from medledger.contracts import queries
from medledger.interop.ins import make_ins
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.node.registrations import reconcile
from medledger.provisioning import create_consortium
from medledger.vault import Vault

STUDY = "bench-2026-001"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
EVIDENCE = hashlib.sha256(b"bench: the patient's signed consent form").digest()
DECISION = hashlib.sha256(b"bench: the ethics committee's decision").digest()
ETHICS_REF = "CPP-BENCH-2026"

QUERY: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": LOINC, "code": "4548-4"}],
        "value": {"min": 3, "max": 20, "unit": "%"},
        "date": {"from": "2020-01-01", "to": "2026-12-31"},
    },
    "age": {"min": 18, "max": 90},
    "value_of": "last",
    "statistics": [
        {"kind": "count"},
        {"kind": "mean"},
        {"kind": "stddev"},
        {"kind": "histogram", "edges": [3, 5, "6.5", 8, 10, 20]},
        {"kind": "quantiles", "q": ["0.25", "0.5", "0.75"]},
    ],
    "stratify": ["sex", "age_band"],
    "age_bands": [18, 40, 65, 91],
    "epsilon": "0.5",  # decimals as text: no float on the chain
}

#: Patients per ingested Bundle (about 3.5 resources each: under records.MAX_ENTRIES).
PER_BUNDLE = 100
_ANSWERED = re.compile(r"(\S+) answered (\S+) for (\d+) patients .* in (.*)$")


def _bundle(n: int, org: str, rng: random.Random) -> dict[str, Any]:
    """Patient n as hospital `org` holds them: Patient, HbA1c results, maybe the diagnosis."""
    sex = "female" if n % 2 else "male"
    year, month = 1940 + n % 60, 1 + n % 12
    number13 = ("2" if sex == "female" else "1") + f"{year % 100:02d}{month:02d}75" + f"{n:06d}"
    patient_url = f"urn:uuid:{hashlib.md5(f'{n}/{org}'.encode()).hexdigest()}"  # noqa: S324
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": [
                    {
                        "use": "official",
                        "system": "urn:oid:1.2.250.1.213.1.4.10",
                        "value": make_ins(number13).value,
                    },
                    {"use": "usual", "system": f"urn:medledger:{org}:ipp", "value": f"{n:08d}"},
                ],
                "name": [{"family": f"PATIENT{n}", "given": ["Test"]}],
                "gender": sex,
                "birthDate": f"{year}-{month:02d}-{1 + n % 28:02d}",
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(rng.randint(1, 3)):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{hashlib.md5(f'{n}/{org}/{i}'.encode()).hexdigest()}",  # noqa: S324
                "resource": {
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
                    "code": {"coding": [{"system": LOINC, "code": "4548-4"}], "text": "HbA1c"},
                    "subject": {"reference": patient_url},
                    "effectiveDateTime": f"{2021 + i}-{1 + rng.randrange(12):02d}-10",
                    "valueQuantity": {
                        "value": round(rng.uniform(4.5, 11.5), 1),
                        "unit": "%",
                        "system": "http://unitsofmeasure.org",
                        "code": "%",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    if n % 5 < 2:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{hashlib.md5(f'{n}/{org}/c'.encode()).hexdigest()}",  # noqa: S324
                "resource": {
                    "resourceType": "Condition",
                    "code": {"coding": [{"system": SNOMED, "code": "44054006"}]},
                    "subject": {"reference": patient_url},
                    "onsetDateTime": "2019-05-01",
                },
                "request": {"method": "POST", "url": "Condition"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _load(
    nodes: dict[str, Node], vaults: dict[str, Vault], patients: int, shared: int
) -> dict[str, dict[str, str]]:
    """Ingest at the four hospitals at once; returns {org: {pid: org}} of who holds whom."""
    orgs = sorted(nodes)
    rng = random.Random(7)
    plan: dict[str, list[int]] = {org: [] for org in orgs}
    for n in range(patients):
        first = orgs[n % len(orgs)]
        plan[first].append(n)
        if rng.randrange(100) < shared:
            plan[orgs[(n + 1 + rng.randrange(len(orgs) - 1)) % len(orgs)]].append(n)
    held: dict[str, dict[str, str]] = {org: {} for org in orgs}
    errors: list[str] = []

    def ingest(org: str) -> None:
        # Many patients per transaction Bundle: one unit, one records.register tx each (a
        # hospital registers one unit per block, so one patient per unit would take hours).
        ingestor = Ingestor(nodes[org], vaults[org])
        local = random.Random(org)
        numbers = plan[org]
        inputs = []
        for start in range(0, len(numbers), PER_BUNDLE):
            entries = [
                e
                for n in numbers[start : start + PER_BUNDLE]
                for e in _bundle(n, org, local)["entry"]
            ]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            inputs.append((orjson.dumps(bundle), f"{org}-{start}.json"))
        for result in ingestor.ingest_many(inputs, workers=1):
            # A registration still pending (a loaded machine: its tx was not seen committed
            # in 30 s) is settled below; any other refusal stops the bench.
            errors.extend(
                str(r) for r in result.rejections if "registration pending" not in r.reason
            )
        while vaults[org].provisional():
            reconcile(nodes[org].engine, vaults[org], min_age_s=0, wait_s=30)
        held[org] = dict.fromkeys(queries.custody_of(nodes[org].engine, org), org)

    threads = [threading.Thread(target=ingest, args=(org,)) for org in orgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} bundles refused, the first: {errors[0]}")
    return held


def _people(nodes: dict[str, Node]) -> None:
    for org, node in nodes.items():
        for name, roles in ((f"dpo-{org}", ["dpo"]), (f"res-{org}", ["researcher"])):
            key = SigningKey.generate()
            key.save(node.config.practitioner_key_path(name))
            node.wallet.send(
                "identity.register", {"practitioner": name, "key": key.public_key, "roles": roles}
            )


def _enrol(nodes: dict[str, Node], held: dict[str, dict[str, str]]) -> int:
    """Every patient enrolled on the portal of one hospital that holds them (txs pipelined)."""
    seen: set[str] = set()
    last: list[Any] = []
    for org in sorted(held):
        wallet = nodes[org].wallet
        tx = None
        for pid in sorted(held[org]):
            if pid in seen:
                continue
            seen.add(pid)
            body = {"study": STUDY, "pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}
            for attempt in range(5):  # a loaded machine's RPC may time out: ask again
                try:
                    submitted = wallet.submit("research.enrol", body)
                    break
                except RpcUnavailable:
                    if attempt == 4:
                        raise
                    time.sleep(2.0)
            if not submitted.accepted:
                raise RuntimeError(f"enrol refused: {submitted.check.log}")
            tx = submitted.tx_id
        if tx is not None:
            last.append((org, tx))
    for org, tx in last:
        nodes[org].engine.wait_for_commit(tx, timeout=600)
    return len(seen)


def _answers(directory: Path, query_id: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for log in (directory / "logs").glob("*.app.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = _ANSWERED.search(line)
            if m and m.group(2) == query_id:
                timing = {
                    k: float(v.rstrip("s"))
                    for k, v in (part.split(" ") for part in m.group(4).split(", "))
                }
                found[m.group(1)] = {"patients": int(m.group(3)), **timing}
    return found


def run(patients: int = 10_000, shared: int = 30, block_time_ms: int = 1000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "net"
        homes = create_consortium(
            directory,
            4,
            engine="cometbft",
            chain_id="medledger-bench-study",
            block_time_ms=block_time_ms,
            genesis_time_ms=int(time.time() * 1000),
        )
        processes.up(directory, timeout=120)
        nodes: dict[str, Node] = {}
        vaults: dict[str, Vault] = {}
        try:
            for home in homes:
                node = Node.open(home)
                nodes[node.config.org] = node
                vaults[node.config.org] = Vault.open(node.config.vault_config())
            sponsor = sorted(nodes)[0]
            started = time.perf_counter()
            held = _load(nodes, vaults, patients, shared)
            load_s = time.perf_counter() - started
            _people(nodes)
            nodes[sponsor].practitioner_wallet(f"res-{sponsor}").send(
                "research.register",
                {
                    "study": STUDY,
                    "protocol_hash": EVIDENCE,
                    "ethics_ref": ETHICS_REF,
                    "categories": ["labs", "conditions"],
                    "min_cohort": 1,
                    "privacy_budget_milli": 5000,
                },
            )
            started = time.perf_counter()
            enrolled = _enrol(nodes, held)
            enrol_s = time.perf_counter() - started
            return _measure(directory, nodes, sponsor) | {
                "patients": patients,
                "enrolled": enrolled,
                "held_by": {org: len(pids) for org, pids in held.items()},
                "block_time_ms": block_time_ms,
                "load_s": round(load_s, 1),
                "enrol_s": round(enrol_s, 1),
            }
        finally:
            for vault in vaults.values():
                vault.close()
            for node in nodes.values():
                node.close()
            processes.down(directory)


def _measure(directory: Path, nodes: dict[str, Node], sponsor: str) -> dict[str, Any]:
    engine = nodes[sponsor].engine
    committed = (
        nodes[sponsor]
        .practitioner_wallet(f"res-{sponsor}")
        .send("research.query_submit", {"study": STUDY, "query": QUERY})
    )
    (event,) = [e for e in committed.result.events if e.type == "study.query_submitted"]
    query_id = str(event.get("query"))
    nodes[sponsor].practitioner_wallet(f"dpo-{sponsor}").send(
        "research.query_approve",
        {"query": query_id, "role": "ethics", "ethics_ref": ETHICS_REF, "decision_hash": DECISION},
    )
    running_at = 0.0
    running_height = 0
    for org in sorted(o for o in nodes if o != sponsor):  # the sponsor approved for ethics
        committed = (
            nodes[org]
            .practitioner_wallet(f"dpo-{org}")
            .send(
                "research.query_approve",
                {"query": query_id, "role": "custodian", "decision_hash": DECISION},
            )
        )
        running_at, running_height = time.perf_counter(), committed.height
        record = queries.study_query(engine, query_id)
        if record is not None and record["status"] == "running":
            break
    record = None
    while record is None or record["status"] != "done":
        if time.perf_counter() - running_at > 600:
            raise RuntimeError(f"{query_id} not done after 600 s: {record}")
        time.sleep(0.02)
        record = queries.study_query(engine, query_id)
    end_to_end = time.perf_counter() - running_at
    done_height = engine.height()
    return {
        "query": query_id,
        "end_to_end_s": round(end_to_end, 3),
        "blocks": done_height - running_height,
        "answers": _answers(directory, query_id),
        "result": record.get("result"),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(*(int(a) for a in sys.argv[1:])), indent=2))
