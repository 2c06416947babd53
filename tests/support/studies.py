"""A study over four hospitals, shared by the solo and CometBFT tests of study queries.

`Study` holds each hospital's node and vault (a sandbox's, or clients beside running
`node run` processes), registers a DPO and a researcher at each, loads synthetic patients
(most followed in two or three hospitals; some bundles carry what real lab feeds add: the
lab's Organization and biologist, an HbA1c reported in mmol/mol), registers the study, enrols
and withdraws patients on their hospital's portal, submits and approves queries. `truth_*`
compute what a query must answer straight from the bundles.
"""

from __future__ import annotations

import copy
import hashlib
import time
from fractions import Fraction
from typing import Any

import orjson

from medledger.contracts import queries
from medledger.interop.synth import bundle_label, generate
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.vault import Vault

A, B, C, D = "chu-lyon", "aphp-paris", "chu-bordeaux", "chu-lille"
ORGS = (A, B, C, D)
STUDY = "lyon-2026-007"
LOINC = "http://loinc.org"
EVIDENCE = hashlib.sha256(b"the patient's signed consent form").digest()
DECISION = hashlib.sha256(b"the ethics committee's decision, 2026-11-12").digest()
ETHICS_REF = "CPP-SUD-EST-2026-118"

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

_LAB = "urn:uuid:5f0c7d8e-0000-4000-8000-00000000aa0"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def with_lab_feed(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle plus what a hospital's lab feed carries: the lab's Organization and
    biologist, and an HbA1c reported in mmol/mol (IFCC) that a % criterion leaves out."""
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    organization = {
        "resourceType": "Organization",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "690781810"}],
        "name": "Laboratoire de biologie médicale",
    }
    biologist = {
        "resourceType": "Practitioner",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810002909371"}],
        "name": [{"family": "Martin", "given": ["Claire"]}],
    }
    ifcc = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": _OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}], "text": "HbA1c (IFCC)"},
        "subject": {"reference": patient["fullUrl"]},
        "performer": [{"reference": _LAB + "2"}, {"reference": _LAB + "1"}],
        "effectiveDateTime": "2026-02-10T08:00:00+01:00",
        "valueQuantity": {
            "value": 64,
            "unit": "mmol/mol",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/mol",
        },
    }
    extra = [
        {"fullUrl": _LAB + str(i), "resource": r, "request": {"method": "POST", "url": kind}}
        for i, r, kind in (
            (1, organization, "Organization"),
            (2, biologist, "Practitioner"),
            (3, ifcc, "Observation"),
        )
    ]
    return {**bundle, "entry": [*bundle["entry"], *extra]}


def has_ifcc(bundle: dict[str, Any]) -> bool:
    return any(
        e["resource"].get("valueQuantity", {}).get("unit") == "mmol/mol" for e in bundle["entry"]
    )


def truth_hba1c(bundles: list[dict[str, Any]]) -> tuple[str, int] | None:
    """A patient's last HbA1c in % within HBA1C_QUERY's ranges, over all their hospitals,
    computed directly (ties on the date: the larger value)."""
    found = []
    for bundle in bundles:
        for entry in bundle["entry"]:
            r = entry["resource"]
            if r["resourceType"] != "Observation":
                continue
            codes = {(c.get("system"), c.get("code")) for c in r["code"]["coding"]}
            quantity = r.get("valueQuantity") or {}
            units = (quantity.get("unit"), quantity.get("code"))
            if (LOINC, "4548-4") not in codes or "%" not in units:
                continue
            value = int(Fraction(str(quantity["value"])) * 1000)
            date = r["effectiveDateTime"][:10]
            if 3000 <= value <= 20000 and "2020-01-01" <= date <= "2026-12-31":
                found.append((date, value))
    return max(found) if found else None


class Study:
    """The four hospitals, their people, and the study's patients."""

    def __init__(self, nodes: dict[str, Node], vaults: dict[str, Vault]) -> None:
        self.nodes = nodes
        self.vaults = vaults
        self.engine = nodes[A].engine
        self.by_label: dict[str, list[dict[str, Any]]] = {}
        self.pid: dict[str, str] = {}
        self.holders: dict[str, list[str]] = {}
        for org, node in nodes.items():
            for name, roles in ((f"dpo-{org}", ["dpo"]), (f"res-{org}", ["researcher"])):
                key = SigningKey.generate()
                key.save(node.config.practitioner_key_path(name))
                node.wallet.send(
                    "identity.register",
                    {"practitioner": name, "key": key.public_key, "roles": roles},
                )

    def wallet(self, org: str, role: str) -> Any:
        return self.nodes[org].practitioner_wallet(f"{role}-{org}")

    def load(self, n: int, seed: int) -> None:
        """n synthetic patients over the four hospitals; every third of B's with a lab feed."""
        for org, bundles in generate(n, list(ORGS), seed=seed).items():
            ingestor = Ingestor(self.nodes[org], self.vaults[org])
            for i, bundle in enumerate(bundles):
                if org == B and i % 3 == 0:
                    bundle = with_lab_feed(bundle)
                result = ingestor.ingest_bytes(orjson.dumps(bundle), f"{org}-{i}.json")
                assert result.rejections == [], result.rejections
                (pid,) = result.pids
                label = bundle_label(bundle)
                assert self.pid.setdefault(label, pid) == pid
                self.by_label.setdefault(label, []).append(bundle)
                self.holders.setdefault(label, []).append(org)

    def register(self, categories: list[str], budget_milli: int | None = None) -> None:
        body: dict[str, Any] = {
            "study": STUDY,
            "protocol_hash": EVIDENCE,
            "ethics_ref": ETHICS_REF,
            "categories": categories,
            "min_cohort": 1,
        }
        if budget_milli is not None:
            body["privacy_budget_milli"] = budget_milli
        self.wallet(A, "res").send("research.register", body)

    def _choice(self, label: str) -> dict[str, Any]:
        """A patient's choice, taken on their hospital's portal."""
        pid = self.pid[label]
        return {"study": STUDY, "pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}

    def enrol(self, label: str) -> None:
        self.nodes[self.holders[label][-1]].wallet.send("research.enrol", self._choice(label))

    def withdraw(self, label: str) -> None:
        self.nodes[self.holders[label][0]].wallet.send("research.withdraw", self._choice(label))

    def submit(self, document: dict[str, Any]) -> str:
        committed = self.wallet(A, "res").send(
            "research.query_submit", {"study": STUDY, "query": document}
        )
        (event,) = [e for e in committed.result.events if e.type == "study.query_submitted"]
        return str(event.get("query"))

    def approve(self, query_id: str) -> None:
        """The sponsor's DPO for the ethics committee, then each member's DPO: it runs."""
        self.wallet(A, "dpo").send(
            "research.query_approve",
            {
                "query": query_id,
                "role": "ethics",
                "ethics_ref": ETHICS_REF,
                "decision_hash": DECISION,
            },
        )
        for org in ORGS[1:]:  # the sponsor A approved for the ethics committee
            record = queries.study_query(self.engine, query_id)
            if record is not None and record["status"] == "running":
                return
            self.wallet(org, "dpo").send(
                "research.query_approve",
                {"query": query_id, "role": "custodian", "decision_hash": DECISION},
            )

    def run(self, document: dict[str, Any]) -> str:
        query_id = self.submit(document)
        self.approve(query_id)
        return query_id

    def done(self, query_id: str, timeout: float = 60.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            record = queries.study_query(self.engine, query_id)
            return record if record is not None and record["status"] == "done" else None

        found: dict[str, Any] = wait_for(finished, timeout, what=f"{query_id} done")
        return found


def later_hba1c(
    bundle: dict[str, Any], lab_id: str, when: str, percent: float, entry_uuid: str
) -> dict[str, Any]:
    """A lab feed's later HbA1c of `bundle`'s patient, as a lab's system sends it: its own
    observation id (`lab_id`), the patient entry repeated, a transaction bundle."""
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:oid:1.2.250.1.999.lab", "value": lab_id}],
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
        "subject": {"reference": patient["fullUrl"]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": percent, "unit": "%", "system": "http://unitsofmeasure.org"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            copy.deepcopy(patient),
            {
                "fullUrl": f"urn:uuid:{entry_uuid}",
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
