"""Four hospitals answer a study query by themselves (solo sandbox, gateways on loopback).

Synthetic chronic patients, most followed in two or three of the four hospitals, each hospital
holding its own record of them (its Patient, labs, conditions, prescriptions), plus what real
feeds carry around them (the lab's Practitioner and Organization, a result in another unit).
Some patients are enrolled in the study, some not, one withdraws. The published count and mean
(epsilon 0) must equal the truth computed directly from the bundles, each patient once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from medledger.contracts import queries
from medledger.interop.synth import bundle_label, generate
from medledger.ledger.keys import SigningKey
from medledger.provisioning import create_consortium
from medledger.research.agent import StudyAgent, attach
from tests.exchange.conftest import EVIDENCE, Sandbox, close_sandbox, open_sandbox, wait_for

A, B, C, D = "chu-lyon", "aphp-paris", "chu-bordeaux", "chu-lille"
ORGS = (A, B, C, D)
STUDY = "lyon-2026-007"
LOINC = "http://loinc.org"
DECISION = hashlib.sha256(b"the ethics committee's decision, 2026-11-12").digest()

HBA1C_QUERY: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": LOINC, "code": "4548-4"}],
        "value": {"min": 3, "max": 20, "unit": "%"},
        "date": {"from": "2020-01-01", "to": "2026-12-31"},
    },
    "value_of": "last",
    "statistics": [{"kind": "count"}, {"kind": "mean"}],
}


def _extras(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a hospital's lab feed carries besides the synthetic history: the lab's Organization
    and biologist, and an HbA1c reported in mmol/mol (IFCC) that a % criterion leaves out."""
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    extra = [
        {
            "fullUrl": "urn:uuid:5f0c7d8e-0000-4000-8000-00000000aa01",
            "resource": {
                "resourceType": "Organization",
                "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "690781810"}],
                "name": "Laboratoire de biologie médicale",
            },
            "request": {"method": "POST", "url": "Organization"},
        },
        {
            "fullUrl": "urn:uuid:5f0c7d8e-0000-4000-8000-00000000aa02",
            "resource": {
                "resourceType": "Practitioner",
                "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810002909371"}],
                "name": [{"family": "Martin", "given": ["Claire"]}],
            },
            "request": {"method": "POST", "url": "Practitioner"},
        },
        {
            "fullUrl": "urn:uuid:5f0c7d8e-0000-4000-8000-00000000aa03",
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
                "code": {"coding": [{"system": LOINC, "code": "4548-4"}], "text": "HbA1c (IFCC)"},
                "subject": {"reference": patient["fullUrl"]},
                "performer": [
                    {"reference": "urn:uuid:5f0c7d8e-0000-4000-8000-00000000aa02"},
                    {"reference": "urn:uuid:5f0c7d8e-0000-4000-8000-00000000aa01"},
                ],
                "effectiveDateTime": "2026-02-10T08:00:00+01:00",
                "valueQuantity": {
                    "value": 64,
                    "unit": "mmol/mol",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/mol",
                },
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    ]
    return {**bundle, "entry": [*bundle["entry"], *extra]}


def _hba1c_truth(bundles: list[dict[str, Any]]) -> tuple[str, int] | None:
    """A patient's last HbA1c in % within the query's ranges, over all their hospitals."""
    found = []
    for bundle in bundles:
        for entry in bundle["entry"]:
            r = entry["resource"]
            if r["resourceType"] != "Observation":
                continue
            if {"system": LOINC, "code": "4548-4"} not in [
                {"system": c.get("system"), "code": c.get("code")} for c in r["code"]["coding"]
            ]:
                continue
            q = r.get("valueQuantity") or {}
            if "%" not in (q.get("unit"), q.get("code")):
                continue
            value = int(Fraction(str(q["value"])) * 1000)
            date = r["effectiveDateTime"][:10]
            if 3000 <= value <= 20000 and "2020-01-01" <= date <= "2026-12-31":
                found.append((date, value))
    return max(found) if found else None


class Study:
    """The four hospitals, their people, and the study's patients."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.by_label: dict[str, list[dict[str, Any]]] = {}
        self.pid: dict[str, str] = {}
        self.holders: dict[str, list[str]] = {}
        for org in ORGS:
            node = sandbox.h[org].node
            for name, roles in ((f"dpo-{org}", ["dpo"]), (f"res-{org}", ["researcher"])):
                key = SigningKey.generate()
                key.save(node.config.practitioner_key_path(name))
                node.wallet.send(
                    "identity.register",
                    {"practitioner": name, "key": key.public_key, "roles": roles},
                )

    def wallet(self, org: str, role: str) -> Any:
        return self.sb.h[org].node.practitioner_wallet(f"{role}-{org}")

    def load(self, n: int, seed: int) -> None:
        for org, bundles in generate(n, list(ORGS), seed=seed).items():
            for i, bundle in enumerate(bundles):
                if org == B and i % 3 == 0:
                    bundle = _extras(bundle)
                label = bundle_label(bundle)
                pid, _ = self.sb.ingest(org, bundle)
                assert self.pid.setdefault(label, pid) == pid
                self.by_label.setdefault(label, []).append(bundle)
                self.holders.setdefault(label, []).append(org)

    def register(self, categories: list[str], budget_milli: int | None = None) -> None:
        body: dict[str, Any] = {
            "study": STUDY,
            "protocol_hash": EVIDENCE,
            "ethics_ref": "CPP-SUD-EST-2026-118",
            "categories": categories,
            "min_cohort": 1,
        }
        if budget_milli is not None:
            body["privacy_budget_milli"] = budget_milli
        self.wallet(A, "res").send("research.register", body)

    def _choice(self, label: str) -> dict[str, Any]:
        """A patient's choice, taken on their hospital's portal."""
        return {
            "study": STUDY,
            "pid": self.pid[label],
            "evidence_hash": EVIDENCE,
            "channel": "portal",
        }

    def enrol(self, label: str) -> None:
        org = self.holders[label][-1]  # the patient asked at one of their hospitals
        self.sb.h[org].node.wallet.send(
            "research.enrol",
            {
                "study": STUDY,
                "pid": self.pid[label],
                "evidence_hash": EVIDENCE,
                "channel": "portal",
            },
        )

    def withdraw(self, label: str) -> None:
        org = self.holders[label][0]
        self.sb.h[org].node.wallet.send(
            "research.withdraw",
            {
                "study": STUDY,
                "pid": self.pid[label],
                "evidence_hash": EVIDENCE,
                "channel": "portal",
            },
        )

    def run(self, document: dict[str, Any]) -> str:
        """Submit, then every approval it needs: the query runs."""
        committed = self.wallet(A, "res").send(
            "research.query_submit", {"study": STUDY, "query": document}
        )
        (event,) = [e for e in committed.result.events if e.type == "study.query_submitted"]
        query_id = str(event.get("query"))
        self.wallet(A, "dpo").send(
            "research.query_approve",
            {
                "query": query_id,
                "role": "ethics",
                "ethics_ref": "CPP-SUD-EST-2026-118",
                "decision_hash": DECISION,
            },
        )
        for org in ORGS:
            record = queries.study_query(self.sb.root.engine, query_id)
            if record is not None and record["status"] == "running":
                break
            self.wallet(org, "dpo").send(
                "research.query_approve",
                {"query": query_id, "role": "custodian", "decision_hash": DECISION},
            )
        return query_id

    def done(self, query_id: str, timeout: float = 60.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            record = queries.study_query(self.sb.root.engine, query_id)
            return record if record is not None and record["status"] == "done" else None

        found: dict[str, Any] = wait_for(finished, timeout, what=f"{query_id} done")
        return found


@pytest.fixture
def study(tmp_path: Path) -> Iterator[Study]:
    directory = tmp_path / "net"
    homes = create_consortium(directory, 4, genesis_time_ms=int(time.time() * 1000))
    sandbox = open_sandbox(directory, homes)
    agents: list[StudyAgent] = []
    try:
        for org in ORGS:
            sandbox.start(org, sync=False)
            agents.append(attach(sandbox.x(org), sandbox.h[org].vault, poll=0.1).start())
        yield Study(sandbox)
    finally:
        for agent in agents:
            agent.stop()
        close_sandbox(sandbox)


def test_four_hospitals_count_each_enrolled_patient_once_and_the_mean_is_the_truth(
    study: Study,
) -> None:
    study.load(24, seed=11)
    shared = [label for label, holders in study.holders.items() if len(holders) >= 2]
    assert len(shared) >= 10  # most patients are followed in two or three hospitals
    study.register(["labs", "conditions", "medications"], budget_milli=5000)
    labels = sorted(study.pid)
    enrolled = labels[:-4]  # four patients never enrol
    for label in enrolled:
        study.enrol(label)
    withdrawn = enrolled[0]
    study.withdraw(withdrawn)
    counted = [label for label in enrolled if label != withdrawn]

    decrypted: dict[str, list[str]] = {org: [] for org in ORGS}
    for org in ORGS:  # what each hospital's vault opens for the query
        vault = study.sb.h[org].vault
        real = vault.get_many

        def spy(versions: list[tuple[str, int]], real: Any = real, org: str = org) -> list[bytes]:
            opened = real(versions)
            decrypted[org] += [orjson_type(b) for b in opened]
            return opened

        vault.get_many = spy  # type: ignore[method-assign]

    query_id = study.run(HBA1C_QUERY)
    record = study.done(query_id)

    truth = {label: _hba1c_truth(study.by_label[label]) for label in counted}
    values = [v[1] for v in truth.values() if v is not None]
    assert len(values) >= 5
    (row,) = record["result"]["strata"]
    assert row["count"] == len(values)
    assert Fraction(row["mean"]) == round(Fraction(sum(values), len(values))) / 1000
    # Each enrolled patient with records here was answered for by exactly one hospital.
    answered = record["answers"]
    assert sum(a["patients"] for a in answered.values()) == len(counted)
    assert sorted(answered) == sorted(ORGS)
    # The mmol/mol results were left out and counted as such (a patient each).
    mismatched = sum(
        1 for label in counted if any(b is not None and _has_ifcc(b) for b in study.by_label[label])
    )
    assert record["result"]["unit_mismatch"] == (mismatched if mismatched >= 5 else None)
    # Only labs were read: no condition, prescription or encounter was even decrypted.
    opened = {t for types in decrypted.values() for t in types}
    assert opened <= {"Observation", "DiagnosticReport"}, opened
    assert "Observation" in opened


def orjson_type(data: bytes) -> str:
    import orjson

    return str(orjson.loads(data).get("resourceType"))


def _has_ifcc(bundle: dict[str, Any]) -> bool:
    return any(
        e["resource"].get("valueQuantity", {}).get("unit") == "mmol/mol" for e in bundle["entry"]
    )


def _record(study: Study, query_id: str) -> dict[str, Any]:
    """A running query's record as the contract keeps it (what the receiver checks against)."""
    now = int(time.time() * 1000)
    return {
        "id": query_id,
        "study": STUDY,
        "status": "running",
        "answerers": sorted(ORGS),
        "running_ms": now,
        "deadline_ms": now + 60_000,
    }


def test_a_receiver_takes_partials_only_for_its_own_enrolled_shared_patients(
    study: Study,
) -> None:
    from medledger.contracts.study_query import PatientFacts
    from medledger.node.study_partials import PartialsRefused, answering, check, custodians

    study.load(12, seed=5)
    study.register(["labs"])
    labels = sorted(study.pid)
    for label in labels[:-1]:
        study.enrol(label)
    query_id = f"{STUDY}/q0001"
    record = _record(study, query_id)
    facts = PatientFacts(matched={"cohort": True}, value=("2025-01-02", 7100)).to_obj()
    engine = study.sb.root.engine
    with engine.read_view() as state:
        shared = next(
            label
            for label in labels[:-1]
            if len(custodians(state, study.pid[label], record)) in (2, 3)
        )
        pid = study.pid[shared]
        held_by = custodians(state, pid, record)
        receiver = answering(query_id, held_by)
        sender = next(org for org in held_by if org != receiver)
        stranger = next(org for org in ORGS if org not in held_by)
        now = int(time.time() * 1000)

        def ask(sender: str, receiver: str, pids: list[str], rec: Any = record) -> Any:
            body = {"query": query_id, "patients": [[p, facts] for p in pids]}
            return check(state, rec, sender, receiver, body, now)

        assert ask(sender, receiver, [pid])[1][pid].value == ("2025-01-02", 7100)
        assert ask(sender, receiver, [])[1] == {}  # an empty message says "nothing for you"
        refusals = {
            "not its answering hospital": lambda: ask(sender, sender, [pid]),
            "not a custodian": lambda: ask(stranger, receiver, [pid]),
            "not an answerer": lambda: ask("chu-nantes", receiver, [pid]),
            "not running": lambda: ask(sender, receiver, [pid], {**record, "deadline_ms": now}),
        }
        for why, attempt in refusals.items():
            with pytest.raises(PartialsRefused) as refused:
                attempt()
            assert why in refused.value.reason, (why, refused.value.reason)
        # A patient not enrolled (or withdrawn since the sender looked) is dropped, not counted.
        outsider = study.pid[labels[-1]]
        out_by = custodians(state, outsider, record)
        if sender in out_by and answering(query_id, out_by) == receiver:
            assert outsider not in ask(sender, receiver, [outsider])[1]
