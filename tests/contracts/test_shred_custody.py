"""`records` v2 (session 11): only a hospital whose custody of a patient runs or ran may state
that it shredded them (`records.shredded`).

Under v1 any member could, and that statement is what access v4's receiver rule reads as
custody "ended by the receiver's own shredding" (`held_custody`): a hospital that never held
anything of a patient made itself an eligible receiver of their data by its own visible act.
A holder of copies states its shredding only under the patient's erasure request, and that
statement ends no custody. A v1 chain replays unchanged; a vote moves it to v2."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from medledger.contracts.access import log_body
from medledger.contracts.records import custodies, ever_custodian, held_custody
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from tests.support import world as world_module
from tests.support.ledger import Net, make_net
from tests.support.world import World

RECEIPT = hashlib.sha256(b"vault erasure receipt").digest()


def _shred(w: World, who: str, records: int = 0, copies: int = 0) -> TxResult:
    body = {"pid": w.pid, "digest": RECEIPT, "records": records, "copies": copies}
    return w.send(who, "records.shredded", body)


def _export_to(w: World, to: str) -> TxResult:
    """h0 (alice's custodian) writes on her trail that it sent a study partial to `to`."""
    entry = {
        "actor": "org:h0",
        "actor_org": "h0",
        "pid": w.pid,
        "action": "export",
        "purpose": "research",
        "outcome": "granted",
        "basis": "enrolment:s1",
        "rids": [],
        "to": to,
    }
    return w.send("h0", "access.log", log_body([entry], 4))


def _world_on_records_v1(monkeypatch: pytest.MonkeyPatch) -> World:
    def v1_net(n: int = 3, seed: int = 1) -> Net:
        net = make_net(n, seed)
        contracts = {**net.genesis.contracts, "records": 1}
        return dataclasses.replace(
            net, genesis=dataclasses.replace(net.genesis, contracts=contracts)
        )

    monkeypatch.setattr(world_module, "make_net", v1_net)
    w = World()
    assert w.q("governance/contracts", {})["records"] == 1
    return w


def test_a_member_that_never_held_the_patient_cannot_shred_its_way_into_receiving() -> None:
    w = World()
    assert w.q("governance/contracts", {})["records"] >= 2  # a new consortium starts on v2+
    refused = _shred(w, "h2", records=1)
    assert refused.code == Code.UNAUTHORIZED
    assert refused.log.startswith("field pid: h2 never held custody of this patient")
    assert w.q("records/shredded", {"holder": "h2", "pid": w.pid}) is None  # nothing written
    assert not held_custody(w.state, w.pid, "h2")
    # So h0 still cannot name h2 the receiver of alice's data.
    assert _export_to(w, "h2").code == Code.UNAUTHORIZED
    # Nor may h2's practitioners, whatever their role, nor a patient's key.
    for who in ("h2/dr-c", "patient:alice"):
        assert _shred(w, who).code == Code.UNAUTHORIZED


def test_a_custodian_shreds_and_a_resent_statement_is_taken_again() -> None:
    """The DPO's `vault erase` of a custodian, then a retry as a real node sends one (the
    wallet resends with a fresh nonce when the first looked lost)."""
    w = World()
    w.records("h1", w.pid, ["r-h1-labs"])
    assert _shred(w, "h1", records=1).ok
    assert "h1" not in custodies(w.state, w.pid)
    assert ever_custodian(w.state, w.pid, "h1") and held_custody(w.state, w.pid, "h1")
    assert _shred(w, "h1", records=1).ok  # custody ended: its own shredding still counts
    assert _export_to(w, "h1").ok  # access v4: ended by its own shredding, as before


def test_a_custodian_that_came_back_and_shreds_again_is_taken() -> None:
    w = World()
    w.records("h1", w.pid, ["r-h1-1"])
    assert _shred(w, "h1", records=1).ok
    w.records("h1", w.pid, ["r-h1-2"])  # the patient returned: a new custody
    again = _shred(w, "h1", records=1)
    assert again.ok and [e.type for e in again.events] == ["record.shredded"]


def test_a_holder_of_copies_shreds_under_the_erasure_request_and_ends_no_custody() -> None:
    """h1 holds copies of alice's labs by her consent, never a record of its own. Before her
    erasure request its statement is refused; under it, h1 states its shredding (the sync
    agent's whole-patient erasure, which lets its replica peers purge the wrapped key) and
    attests with it, but that statement makes h1 no former custodian: still no receiver."""
    w = World()
    w.grant("org:h1")
    assert _shred(w, "h1", copies=1).code == Code.UNAUTHORIZED
    w.ok("patient:alice", "erasure.request", {"pid": w.pid, "evidence_hash": RECEIPT})
    request = w.q("erasure/status", {"pid": w.pid})["id"]
    assert _shred(w, "h2").code == Code.UNAUTHORIZED  # h2 holds nothing: not a holder
    assert _shred(w, "h1", copies=1).ok
    assert w.q("records/shredded", {"holder": "h1", "pid": w.pid})["copies_only"] is True
    assert not held_custody(w.state, w.pid, "h1") and not ever_custodian(w.state, w.pid, "h1")
    assert w.send("h1", "erasure.attest", {"request": request, "records": 1}).ok  # by reference
    status = w.q("erasure/status", {"id": request})
    assert [o["status"] for o in status["obligations"] if o["holder"] == "h1"] == ["attested"]
    assert _export_to(w, "h1").code == Code.UNAUTHORIZED


def test_a_v1_chain_replays_a_non_custodians_shredding_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on_records_v1(monkeypatch)
    assert _shred(w, "h2").ok
    assert held_custody(w.state, w.pid, "h2")


def test_a_vote_moves_a_v1_consortium_to_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _world_on_records_v1(monkeypatch)
    activate = {"action": "activate_contract", "args": {"name": "records", "version": 2}}
    w.ok("h0", "governance.propose", activate)
    w.ok("h1", "governance.vote", {"proposal": 1, "approve": True})
    assert w.q("governance/contracts", {})["records"] == 2
    assert _shred(w, "h2").code == Code.UNAUTHORIZED
    w.records("h2", w.pid, ["r-h2"])  # a care record of its own: custody, so it may
    assert _shred(w, "h2", records=1).ok


def test_statements_made_under_v1_count_under_v2_only_from_a_former_custodian(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under v1, h1 (alice's custodian) and h2 (never held her) both state a shredding. Once
    v2 is voted in, h1's still ends a custody (it receives, it may resend); h2's counts for
    nothing: no receiver, and no ground to state it again (review 11a, finding 3)."""
    w = _world_on_records_v1(monkeypatch)
    w.records("h1", w.pid, ["r-h1-labs"])
    assert _shred(w, "h1", records=1).ok and _shred(w, "h2").ok
    assert held_custody(w.state, w.pid, "h2")  # v1's reading, replayed as it was
    activate = {"action": "activate_contract", "args": {"name": "records", "version": 2}}
    w.ok("h0", "governance.propose", activate)
    w.ok("h1", "governance.vote", {"proposal": 1, "approve": True})

    assert held_custody(w.state, w.pid, "h1") and _export_to(w, "h1").ok
    assert _shred(w, "h1", records=1).ok  # a resent statement of a former custodian
    assert not held_custody(w.state, w.pid, "h2") and not ever_custodian(w.state, w.pid, "h2")
    assert _export_to(w, "h2").code == Code.UNAUTHORIZED
    restated = _shred(w, "h2")
    assert restated.code == Code.UNAUTHORIZED
    assert restated.log.startswith("field pid: h2 never held custody of this patient")
