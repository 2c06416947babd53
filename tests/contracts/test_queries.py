"""The typed reads used outside the contracts, and who owns which state keys.

`contracts/queries.py` is how the node, the API, the pages, the exchange and the CLI read
committed state: each function calls a query path some contract registers, so it works the
same over the solo engine and over ABCI.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from medledger.contracts import all_contracts, queries
from medledger.node import Node

PID = "ab" * 32


class Recorder:
    """An engine that only records the queries asked of it."""

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answer = [] if answer is None else answer

    def query(self, path: str, data: Any = None) -> Any:
        self.calls.append((path, data))
        return self.answer


def test_every_typed_read_asks_a_path_a_contract_registers() -> None:
    engine = Recorder()
    queries.access_of_patient(engine, PID)
    queries.authorize_check(engine, {"actor": "h1", "pid": PID, "purpose": "treatment"})
    queries.consent_get(engine, 1)
    queries.consent_list(engine, PID)
    queries.consent_requests(engine, PID)
    queries.emergency_list(engine, org="h1", unreviewed=True)
    queries.erasure_status(engine, PID)
    queries.erasure_pending(engine, PID)
    queries.members(engine)
    queries.member_orgs(engine)
    queries.proposals(engine, "open")
    queries.practitioners(engine, "h1")
    queries.actor_of_key(engine, b"\x01" * 32)
    queries.patient_notices(engine, PID)
    queries.policy_list(engine)
    queries.policy_params(engine)
    queries.policy_schema(engine)
    queries.records_of_patient(engine, PID, "h1")
    queries.record_entry(engine, "r1")
    queries.record_versions(engine, "r1")
    queries.shredded(engine, "h1", PID)
    queries.custody_of(engine, "h1")
    queries.referral_status(engine, 3)
    queries.study(engine, "s1")
    queries.studies(engine)
    queries.study_releases(engine, "s1")
    queries.research_of_patient(engine, PID)
    queries.study_query(engine, "s1/q0001")
    queries.study_queries(engine, "s1")
    queries.study_budget(engine, "s1")

    registered = {path for c in all_contracts() for path in c.queries}
    asked = {path for path, _ in engine.calls}
    assert asked <= registered, asked - registered
    # the arguments are the ones the contracts' query handlers read
    assert ("records/of_patient", {"pid": PID, "custodian": "h1"}) in engine.calls
    assert ("emergency/list", {"unreviewed": True, "org": "h1"}) in engine.calls
    assert ("identity/practitioners", {"org": "h1"}) in engine.calls


def test_the_ledgers_own_reads_nonce_and_tx_location() -> None:
    ledger = Recorder(answer=7)
    assert queries.nonce(ledger, b"\x02" * 32) == 7
    queries.tx_location(ledger, b"\x03" * 32)
    assert ledger.calls == [
        ("ledger/nonce", {"signer": b"\x02" * 32}),
        ("ledger/tx", {"id": b"\x03" * 32}),
    ]


def test_typed_reads_over_a_solo_node(node: Node) -> None:
    orgs = queries.member_orgs(node.engine)
    assert node.config.org in orgs and len(orgs) == 3
    assert queries.records_of_patient(node.engine, PID) == []
    assert queries.erasure_status(node.engine, PID) is None
    assert queries.policy_params(node.engine)["on_behalf_delay_ms"] > 0


def test_access_and_records_import_one_way() -> None:
    """records logs its writes through access; access needs nothing of records."""
    probe = (
        "import sys, medledger.contracts.access; "
        "print('medledger.contracts.records' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
