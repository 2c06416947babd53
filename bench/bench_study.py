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
from its log (read: the chain; evaluate: its vault; warm: its connections to the
co-answerers, opened beside the evaluation; send: the partials out, audited; wait:
the partials in; tally: merge, noise, mask; submit: its answer tx to CheckTx; commit: from
there to the agent seeing it in a block; and the answering thread's CPU: read_cpu,
evaluate_cpu, tally_cpu, and cpu for the whole answer up to its submission, the figures a
loaded machine does not inflate), and the blocks between the running one and the done one.
The approvals are excluded.

    medledger bench study                           # 10,000 patients, 1 s blocks
    medledger bench study --set patients=2000 --set block_time_ms=1000
    medledger bench study --set peer=1              # and the fair peer, side by side

`--set peer=1` measures, in the same run right after medledger's query, on the same network
and the same enrolled patients, the fair peer the project's rule asks for (issue 18): an
i2b2/SHRINE-style federated count. Each hospital holds a **clear** SQLite table of facts
(i2b2's observation_fact: pid, type, code system, code, value, unit, date; and its patients'
sex and birth date), built here from the same synthetic records at loading time (not timed):
no vault, no decryption, no exchange between hospitals. Each patient is counted where the
bench put its primary record, from that hospital's own facts only (a shared patient's second
hospital's results are not merged in: counts agree with medledger's, means and histograms
may not). At the running event (the first block committed after medledger's query is done)
every hospital, in its own thread, selects its cohort in SQL, keeps each patient's value per
`value_of`, tallies the same strata and statistics with the contract's own `tally` and its
own noise for medledger's query (the same committed query and noise seed: equal facts give
equal noised cells), and signs one tx; the result is `study_query.finish` over the summed
cells once the last tx is committed and seen.

The peer's tx is signed by a key of its own, which no node process uses (its practitioner
`peer-<org>`, a researcher registered at loading time with a study `peer-<org>` it sponsors):
signed with the organisation key, as medledger's answer is, it lost its nonce to the node's
own txs (audit journal, reconciliation) and was resent 3 s later. The tx is
`research.query_submit` of medledger's committed query document to that study, its
`note_hash` the SHA-256 of the hospital's cells, not `research.query_answer` (an organisation
key's, and the nodes' study agents would race the peer for a second query's answers): the
same contract and checks of the same kind (the signer's role, the study, the query document
parsed, the budget), half the bytes, and somewhat dearer for the apps (docs/benchmarks.md,
"Session 10 (sqpeerkey)"). The cells are summed and finished by the bench, not by the contract
(microseconds either way). One thread waits for the four txs' commits: it reads node 0's
replica (its block records, read-only, no RPC) every 20 ms, the period at which the bench's
client polls for medledger's result. The clear table lives only in this bench.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from medledger.consensus.cometbft import processes
from medledger.consensus.cometbft.client import RpcEngine
from medledger.consensus.cometbft.rpc import RpcUnavailable
from medledger.contracts import queries
from medledger.contracts.research_queries import parsed_query
from medledger.contracts.study_query import (
    PatientFacts,
    StudyQuery,
    answer_noise,
    answer_noise_seed,
    better_value,
    finish,
    noise_message,
    tally,
)
from medledger.interop.pseudonym import patient_pid
from medledger.interop.synth import HBA1C_LOINC, LOINC, SNOMED, hba1c_patient
from medledger.ledger import codec
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import TxResult
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.node.registrations import reconcile
from medledger.node.wallet import Wallet
from medledger.provisioning import create_consortium
from medledger.research.evaluate import clinical_date, fixed
from medledger.vault import Vault

STUDY = "bench-2026-001"
EVIDENCE = hashlib.sha256(b"bench: the patient's signed consent form").digest()
DECISION = hashlib.sha256(b"bench: the ethics committee's decision").digest()
ETHICS_REF = "CPP-BENCH-2026"

QUERY: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": LOINC, "code": HBA1C_LOINC}],
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
_ANSWERED = re.compile(r"(\S+) answered (\S+) for (\d+) patients\b.* in (.*)$")
#: The gateway's line for each partials message it takes (exchange/gateway.py).
_TOOK = re.compile(r"(\S+) took partials of (\S+) from \S+: .*; check ([\d.]+)s, .* in ([\d.]+)s")


def _bundle(n: int, org: str, rng: random.Random) -> dict[str, Any]:
    """Patient n as hospital `org` holds them: Patient, HbA1c results, maybe the diagnosis."""
    sex = "female" if n % 2 else "male"
    birth = dt.date(1940 + n % 60, 1 + n % 12, 1 + n % 28)
    results = [
        (f"{2021 + i}-{1 + rng.randrange(12):02d}-10", round(rng.uniform(4.5, 11.5), 1))
        for i in range(rng.randint(1, 3))
    ]
    patient_url = f"urn:uuid:{hashlib.md5(f'{n}/{org}'.encode()).hexdigest()}"  # noqa: S324
    entries = hba1c_patient(
        n,
        sex,
        birth,
        results,
        url=patient_url,
        family=f"PATIENT{n}",
        department="75",
        hospital=org,
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
    nodes: dict[str, Node],
    vaults: dict[str, Vault],
    patients: int,
    shared: int,
    keep: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, dict[str, str]]:
    """Ingest at the four hospitals at once; returns {org: {pid: org}} of who holds whom.
    `keep`, when given, gets each hospital's Bundle entries as sent (the peer's tables)."""
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
            if keep is not None:
                keep[org].extend(entries)
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
                if attempt and "already enrolled" in submitted.check.log:
                    continue  # the attempt whose RPC timed out reached the chain
                raise RuntimeError(f"enrol refused: {submitted.check.log}")
            tx = submitted.tx_id
        if tx is not None:
            last.append((org, tx))
    for org, tx in last:
        nodes[org].engine.wait_for_commit(tx, timeout=600)
    return len(seen)


def _versus(measured: dict[str, Any]) -> dict[str, Any]:
    """Medledger's figures over the peer's: end to end, blocks, the answers' CPU (max)."""
    peer = measured["peer"]
    ours = max((a.get("cpu", 0.0) for a in measured["answers"].values()), default=0.0)
    theirs = max(a["cpu"] for a in peer["answers"].values())
    return {
        "end_to_end": round(measured["end_to_end_s"] / max(peer["end_to_end_s"], 1e-3), 2),
        "blocks": f"{measured['blocks']} vs {peer['blocks']}",
        "answer_cpu_max_s": f"{ours:.3f} vs {theirs:.3f}",
    }


def _answers(directory: Path, query_id: str) -> dict[str, dict[str, Any]]:
    """Each node's answer line, and what its gateway spent taking the others' partials
    (`took_check`: the checks' wall time summed; `took`: the longest message's)."""
    found: dict[str, dict[str, Any]] = {}
    took: dict[str, list[tuple[float, float]]] = {}
    for log in (directory / "logs").glob("*.app.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = _ANSWERED.search(line)
            if m and m.group(2) == query_id:
                timing = {
                    k: float(v.rstrip("s"))
                    for k, v in (part.split(" ") for part in m.group(4).split(", "))
                }
                found[m.group(1)] = {"patients": int(m.group(3)), **timing}
            t = _TOOK.search(line)
            if t and t.group(2) == query_id:
                took.setdefault(t.group(1), []).append((float(t.group(3)), float(t.group(4))))
    for org, times in took.items():
        found.setdefault(org, {}).update(
            took_check=round(sum(c for c, _ in times), 3), took=max(w for _, w in times)
        )
    return found


def run(
    patients: int = 10_000,
    shared: int = 30,
    block_time_ms: int = 1000,
    peer: int = 0,
    epsilon_milli: int = 500,
) -> dict[str, Any]:
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
            kept: dict[str, list[dict[str, Any]]] | None = (
                {org: [] for org in nodes} if peer else None
            )
            started = time.perf_counter()
            held = _load(nodes, vaults, patients, shared, kept)
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
            tables = {} if kept is None else _peer_tables(nodes, kept)
            if tables:
                _peer_signers(nodes)
            enrolled_pids = sorted({pid for pids in held.values() for pid in pids})
            for db in tables.values():
                db.executemany("INSERT INTO enrolled VALUES (?)", [(p,) for p in enrolled_pids])
                db.commit()
            query = QUERY | {"epsilon": f"{epsilon_milli // 1000}.{epsilon_milli % 1000:03d}"}
            measured = _measure(directory, nodes, sponsor, query)
            if tables:
                measured["peer"] = _peer(nodes, tables, measured["query"])
                # the nodes' log lines, complete by now (one may come after the client saw done)
                measured["answers"] = _answers(directory, measured["query"])
                measured["medledger_vs_peer"] = _versus(measured)
            return measured | {
                "patients": patients,
                "enrolled": enrolled,
                "held_by": {org: len(pids) for org, pids in held.items()},
                "block_time_ms": block_time_ms,
                "epsilon_milli": epsilon_milli,
                "load_s": round(load_s, 1),
                "enrol_s": round(enrol_s, 1),
            }
        finally:
            for vault in vaults.values():
                vault.close()
            for node in nodes.values():
                node.close()
            processes.down(directory)


def _measure(
    directory: Path, nodes: dict[str, Node], sponsor: str, query: dict[str, Any]
) -> dict[str, Any]:
    engine = nodes[sponsor].engine
    committed = (
        nodes[sponsor]
        .practitioner_wallet(f"res-{sponsor}")
        .send("research.query_submit", {"study": STUDY, "query": query})
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


# -- the fair peer (`--set peer=1`): an i2b2-style federated count over clear tables ---------

_SCHEMA = """
CREATE TABLE patient (pid TEXT PRIMARY KEY, sex TEXT, birth_date TEXT, primary_here INTEGER);
CREATE TABLE fact (pid TEXT, type TEXT, system TEXT, code TEXT, value INTEGER, unit TEXT,
                   date TEXT);
CREATE INDEX fact_code ON fact (system, code, pid);
CREATE TABLE enrolled (pid TEXT PRIMARY KEY);
"""

_COHORT = """
SELECT p.pid, p.sex, p.birth_date, f.date, f.value
FROM fact f JOIN patient p ON p.pid = f.pid JOIN enrolled e ON e.pid = f.pid
WHERE p.primary_here = 1 AND f.type IN ({types}) AND f.system = ? AND f.code = ?
  AND f.unit = ? AND f.value BETWEEN ? AND ? AND f.date BETWEEN ? AND ?
"""


def _peer_tables(
    nodes: dict[str, Node], kept: dict[str, list[dict[str, Any]]]
) -> dict[str, sqlite3.Connection]:
    """Each hospital's clear table of facts, from the Bundle entries it ingested (not timed).
    A patient's primary hospital is where `_load` put it first: orgs[n % 4]."""
    orgs = sorted(nodes)
    tables: dict[str, sqlite3.Connection] = {}
    for org in orgs:
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(_SCHEMA)
        key = nodes[org].config.pseudonym_key()
        pid_of: dict[str, str] = {}
        for entry in kept[org]:
            r = entry["resource"]
            if r["resourceType"] == "Patient":
                pid = pid_of[entry["fullUrl"]] = patient_pid(key, r)
                n = int(next(i["value"] for i in r["identifier"] if i["use"] == "usual"))
                db.execute(
                    "INSERT INTO patient VALUES (?, ?, ?, ?)",
                    (pid, r["gender"], r["birthDate"], int(orgs[n % len(orgs)] == org)),
                )
            elif "valueQuantity" in r:
                (coding,) = r["code"]["coding"]
                db.execute(
                    "INSERT INTO fact VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        pid_of[r["subject"]["reference"]],
                        r["resourceType"],
                        coding["system"],
                        coding["code"],
                        fixed(r["valueQuantity"]["value"]),
                        r["valueQuantity"]["unit"],
                        clinical_date(r),
                    ),
                )
        db.commit()
        tables[org] = db
    return tables


def _peer_signers(nodes: dict[str, Node]) -> None:
    """Each hospital's peer signer, at loading time (not timed): a researcher `peer-<org>`
    whose key no node process holds, and the study `peer-<org>` it sponsors."""

    errors: list[BaseException] = []

    def one(node: Node) -> None:
        try:
            register(node)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def register(node: Node) -> None:
        org, key = node.config.org, SigningKey.generate()
        key.save(node.config.practitioner_key_path(f"peer-{org}"))
        node.wallet.send(
            "identity.register",
            {"practitioner": f"peer-{org}", "key": key.public_key, "roles": ["researcher"]},
        )
        node.practitioner_wallet(f"peer-{org}").send(
            "research.register",
            {
                "study": f"peer-{org}",
                "protocol_hash": EVIDENCE,
                "ethics_ref": ETHICS_REF,
                "categories": ["labs"],
                "min_cohort": 1,
                "privacy_budget_milli": 5000,
            },
        )

    threads = [threading.Thread(target=one, args=(node,)) for node in nodes.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class _Commits:
    """The peer's one wait for its commits, shared by the four hospitals: a thread reads node
    0's replica (its block records, read-only: no RPC, nothing asked of the app) every
    `poll` s and wakes whoever waits for a tx of a new block or for the next block."""

    def __init__(self, node: Node, poll: float = 0.02) -> None:
        self._replica = RpcEngine.for_home(node.config)
        self._height = self._replica.height()
        self._seen: dict[int, float] = {}  # height -> when this thread saw it
        self._txs: dict[bytes, tuple[int, TxResult]] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._poll = poll
        self.cpu = 0.0  # this thread's CPU, s: the peer's four waits together
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        cpu = time.thread_time()
        while not self._stop.is_set():
            record = self._replica.block(self._height + 1)
            if record is None:
                self._stop.wait(self._poll)
                continue
            with self._changed:
                for tx, result in zip(record.txs, record.results, strict=True):
                    self._txs[codec.sha256(tx)] = (record.height, result)
                self._height = record.height
                self._seen[record.height] = time.perf_counter()
                self._changed.notify_all()
        self.cpu = time.thread_time() - cpu

    def next_block(self, timeout: float = 30.0) -> tuple[int, float]:
        """The next block's height and when it was seen committed."""
        with self._changed:
            height = self._height
            if not self._changed.wait_for(lambda: self._height > height, timeout):
                raise TimeoutError(f"no block after {height} in {timeout} s")
            return height + 1, self._seen[height + 1]

    def wait(self, tx_id: bytes, timeout: float = 30.0) -> tuple[int, TxResult, float]:
        """The tx's height, result, and when its block was seen committed."""
        with self._changed:
            if not self._changed.wait_for(lambda: tx_id in self._txs, timeout):
                raise TimeoutError(f"tx {tx_id.hex()[:16]} not committed in {timeout} s")
            height, result = self._txs[tx_id]
            return height, result, self._seen[height]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._replica.close()


def _peer_answer(
    node: Node,
    wallet: Wallet,
    db: sqlite3.Connection,
    q: StudyQuery,
    record: dict[str, Any],
    commits: _Commits,
) -> tuple[list[int], dict[str, Any]]:
    """One hospital's peer answer: cohort in SQL, tally and noise, one signed tx committed."""
    started, cpu = time.perf_counter(), time.thread_time()
    c = q.cohort
    (code,) = c.codes
    rows = db.execute(
        _COHORT.format(types=",".join("?" * len(c.types))),
        (*c.types, code.system, code.code, c.unit, c.value_min, c.value_max)
        + (c.date_from or "0000", c.date_to or "9999"),
    ).fetchall()
    facts: dict[str, PatientFacts] = {}
    for pid, sex, birth, date, value in rows:
        f = facts.get(pid)
        if f is None:
            facts[pid] = PatientFacts(sex, birth, {"cohort": True}, (date, value))
        else:
            f.value = better_value(f.value or (date, value), (date, value), q.value_of)
    sql = time.perf_counter() - started
    t = time.perf_counter()
    noise_seed = bytes(record.get("noise_seed") or b"")
    seed = answer_noise_seed(node.org_key.sign(noise_message(record["id"], noise_seed)))
    cells = [a + b for a, b in zip(tally(q, facts.values()), answer_noise(q, seed), strict=True)]
    tallied = time.perf_counter() - t
    t = time.perf_counter()
    org = node.config.org
    body = {
        "study": f"peer-{org}",
        "query": record["doc"],
        "note_hash": codec.sha256(codec.encode(cells)),
    }
    submitted = wallet.submit("research.query_submit", body)
    if not submitted.accepted:
        raise RuntimeError(f"{org}: the peer's tx refused: {submitted.check.log}")
    height, result, seen_at = commits.wait(submitted.tx_id)
    if not result.ok:
        raise RuntimeError(f"{org}: the peer's tx refused in its block: {result.log}")
    timing = {
        "patients": len(facts),
        "sql": round(sql, 3),
        "tally": round(tallied, 3),
        "commit": round(seen_at - t, 3),
        "cpu": round(time.thread_time() - cpu, 3),
        "height": height,
        "done_at": seen_at,
    }
    return cells, timing


def _quiet(engine: Any, keys: list[bytes], blocks: int = 2, timeout: float = 20.0) -> None:
    """Until no hospital key signed a tx for `blocks` blocks: medledger's query leaves its
    agents' audit entries (the partials' exports) on their way to the chain, and they would
    share the peer's blocks; medledger's query too started on a quiet chain (the approvals
    only). The peer signs with keys of its own, so these txs cannot take its nonces. Bounded:
    a node's own senders (its audit journal, reconciliation) may keep signing; then the peer
    starts after `timeout` anyway."""
    deadline = time.monotonic() + timeout
    nonces = [queries.nonce(engine, k) for k in keys]
    height, still = engine.height(), 0
    while still < blocks and time.monotonic() < deadline:
        time.sleep(0.05)
        if engine.height() == height:
            continue
        height, now = engine.height(), [queries.nonce(engine, k) for k in keys]
        still = still + 1 if now == nonces else 0
        nonces = now


def _peer(nodes: dict[str, Node], tables: dict[str, sqlite3.Connection], query_id: str) -> Any:
    """The peer's run of medledger's (done) query: from the next block's commit to the last
    hospital's tx committed and seen."""
    engine = nodes[sorted(nodes)[0]].engine
    record = queries.study_query(engine, query_id)
    assert record is not None
    q = parsed_query(record)
    _quiet(engine, [n.org_key.public_key for n in nodes.values()])
    wallets = {org: node.practitioner_wallet(f"peer-{org}") for org, node in nodes.items()}
    commits = _Commits(nodes[sorted(nodes)[0]])
    try:
        # the running event: a block's commit, as medledger's
        running_height, running_at = commits.next_block()
        out: dict[str, tuple[list[int], dict[str, Any]]] = {}
        errors: list[BaseException] = []

        def one(org: str) -> None:
            try:
                out[org] = _peer_answer(nodes[org], wallets[org], tables[org], q, record, commits)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(org,)) for org in sorted(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        commits.close()
    if errors:
        raise errors[0]
    done_at = max(timing.pop("done_at") for _, timing in out.values())
    totals = [sum(column) for column in zip(*(cells for cells, _ in out.values()), strict=True)]
    return {
        "end_to_end_s": round(done_at - running_at, 3),
        "blocks": max(timing.pop("height") for _, timing in out.values()) - running_height,
        "answers": {org: timing for org, (_, timing) in sorted(out.items())},
        "wait_cpu": round(commits.cpu, 3),
        "result": finish(q, totals, int(record["k"])),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(*(int(a) for a in sys.argv[1:])), indent=2))
