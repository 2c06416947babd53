"""Who may sign each act (session 14, trust14): the hospital's node's own statements need
its organisation key, and a clinician's act the role that fits.

- `records` v3: `records.shredded` (the vault erased a patient: ends custody, and gives
  `erasure` the digest it takes as the attestation) only from the organisation key; a
  practitioner who signs `records.register` or `records.amend` needs a care role.
- `erasure` v2: `erasure.attest` only from the organisation key (v1: its DPO's too).
- `referral` v2: `referral.deliver` and `referral.confirm` (what the exchange sent and
  received) only from the organisation key.

Each: a practitioner key refused (UNAUTHORIZED, naming the signer, nothing written), the
organisation key accepted, and the earlier version's behaviour kept for replay, until a vote.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from medledger.contracts.common import DAY_MS
from medledger.contracts.records import META_CT_SIZES, custodies
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from tests.support import world as world_module
from tests.support.ledger import Net, make_net
from tests.support.world import World, pid_of

RECEIPT = hashlib.sha256(b"vault erasure receipt").digest()


def _world_on(monkeypatch: pytest.MonkeyPatch, **versions: int) -> World:
    """A World whose genesis runs these contract versions (the others: the newest)."""

    def net_at(n: int = 3, seed: int = 1) -> Net:
        net = make_net(n, seed)
        contracts = {**net.genesis.contracts, **versions}
        return dataclasses.replace(
            net, genesis=dataclasses.replace(net.genesis, contracts=contracts)
        )

    monkeypatch.setattr(world_module, "make_net", net_at)
    w = World()
    running = w.q("governance/contracts", {})
    assert all(running[name] == v for name, v in versions.items())
    return w


def _activate(w: World, name: str, version: int) -> None:
    activate = {"action": "activate_contract", "args": {"name": name, "version": version}}
    w.ok("h0", "governance.propose", activate)
    w.ok("h1", "governance.vote", {"proposal": 1, "approve": True})
    assert w.q("governance/contracts", {})[name] == version


def _shred(w: World, who: str) -> TxResult:
    body = {"pid": w.pid, "digest": RECEIPT, "records": 3, "copies": 0}
    return w.send(who, "records.shredded", body)


def _entry(rid: str, pid: str) -> dict[str, Any]:
    commitment = hashlib.sha256(rid.encode()).digest()
    return {"rid": rid, "pid": pid, "commitment": commitment, "meta_ct": b"c" * META_CT_SIZES[0]}


# -- records v3: records.shredded ------------------------------------------------------------


def test_a_practitioner_key_cannot_state_that_its_hospital_shredded_a_patient() -> None:
    """alice's custodian is h0: neither its physician's nor its DPO's key may say h0's vault
    erased her (custody would end, and `erasure.attest` would take the digest); h0's own
    key, its node's, may."""
    w = World()
    assert w.q("governance/contracts", {})["records"] >= 3  # v3 on keeps the check
    for who in ("h0/dr-a", "h0/dpo-a"):
        refused = _shred(w, who)
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log.startswith(f"signer: practitioner {who} may not state a shredding")
        assert "organisation key" in refused.log
        assert w.q("records/shredded", {"holder": "h0", "pid": w.pid}) is None
        assert "h0" in custodies(w.state, w.pid)
    assert _shred(w, "h0").ok
    assert w.q("records/shredded", {"holder": "h0", "pid": w.pid})["records"] == 3
    assert "h0" not in custodies(w.state, w.pid)


def test_records_v2_replays_a_practitioners_shredding_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, records=2)
    w.records("h1", w.pid, ["r-h1"])
    assert _shred(w, "h1/dr-b").ok  # v2's reading, as blocks of a v2 chain replay
    assert "h1" not in custodies(w.state, w.pid)
    _activate(w, "records", 3)
    refused = _shred(w, "h0/dr-a")
    assert refused.code == Code.UNAUTHORIZED and "h0/dr-a" in refused.log
    assert "h0" in custodies(w.state, w.pid)
    assert _shred(w, "h0").ok


# -- records v3: a practitioner who writes records needs a care role -----------------------


def test_a_practitioner_without_a_care_role_registers_and_amends_nothing() -> None:
    """A researcher's, a DPO's key (h0/res-a, h0/dpo-a) registering a record would start
    h0's custody of any pid; a physician's may, as a named author with that role may."""
    w = World()
    bob = pid_of("bob")
    for who in ("h0/res-a", "h0/dpo-a"):
        refused = w.send(who, "records.register", {"entries": [_entry("r-new", bob)]})
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log.startswith(f"signer: practitioner {who} has no role that writes")
        assert w.q("records/entry", {"rid": "r-new"}) is None
        assert custodies(w.state, bob) == {}
    assert w.send("h0/dr-a", "records.register", {"entries": [_entry("r-new", bob)]}).ok
    assert w.q("records/entry", {"rid": "r-new"})["by"] == "dr-a"
    assert "h0" in custodies(w.state, bob)

    amended = _entry("r-new", bob) | {"commitment": b"\x07" * 32}
    amend = {k: amended[k] for k in ("rid", "commitment", "meta_ct")}
    refused = w.send("h0/res-a", "records.amend", amend)
    assert refused.code == Code.UNAUTHORIZED and "h0/res-a has no role" in refused.log
    assert w.q("records/entry", {"rid": "r-new"})["version"] == 1
    assert w.send("h0/dr-a", "records.amend", amend).ok
    assert w.send("h0", "records.amend", amend | {"commitment": b"\x08" * 32}).ok


def test_records_v2_replays_a_registration_signed_by_any_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, records=2)
    bob = pid_of("bob")
    assert w.send("h0/res-a", "records.register", {"entries": [_entry("r-new", bob)]}).ok
    assert "h0" in custodies(w.state, bob)


# -- erasure v2: erasure.attest --------------------------------------------------------------


def _erasure_with_copies_at_h1(w: World) -> int:
    """alice asks for her erasure; h1 holds copies of her labs by her consent."""
    w.grant("org:h1")
    w.ok("patient:alice", "erasure.request", {"pid": w.pid, "evidence_hash": RECEIPT})
    return int(w.q("erasure/status", {"pid": w.pid})["id"])


def _h1_obligation(w: World, request: int) -> dict[str, Any]:
    status = w.q("erasure/status", {"id": request})
    return next(o for o in status["obligations"] if o["holder"] == "h1")


def test_a_dpo_key_cannot_attest_an_erasure_the_organisation_key_does() -> None:
    w = World()
    assert w.q("governance/contracts", {})["erasure"] == 2
    request = _erasure_with_copies_at_h1(w)
    attest = {"request": request, "digest": RECEIPT, "records": 1}
    refused = w.send("h1/dpo-b", "erasure.attest", attest)
    assert refused.code == Code.UNAUTHORIZED
    assert refused.log.startswith("signer: practitioner h1/dpo-b may not attest an erasure")
    assert _h1_obligation(w, request)["status"] == "pending"
    assert w.send("h1/dr-b", "erasure.attest", attest).code == Code.UNAUTHORIZED  # no dpo role
    assert w.ok("h1", "erasure.attest", attest)
    assert _h1_obligation(w, request)["status"] == "attested"


def test_erasure_v1_replays_a_dpos_attestation_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, erasure=1)
    request = _erasure_with_copies_at_h1(w)
    attest = {"request": request, "digest": RECEIPT, "records": 1}
    assert w.send("h1/dr-b", "erasure.attest", attest).code == Code.UNAUTHORIZED  # as in v1
    assert w.send("h1/dpo-b", "erasure.attest", attest).ok
    assert _h1_obligation(w, request)["attestation"]["by"] == "dpo-b"


def test_a_vote_moves_erasure_to_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _world_on(monkeypatch, erasure=1)
    _activate(w, "erasure", 2)
    request = _erasure_with_copies_at_h1(w)
    attest = {"request": request, "digest": RECEIPT, "records": 1}
    assert w.send("h1/dpo-b", "erasure.attest", attest).code == Code.UNAUTHORIZED
    assert w.send("h1", "erasure.attest", attest).ok


# -- referral v2: referral.deliver and referral.confirm --------------------------------------


def _admitted(w: World) -> dict[str, Any]:
    w.refer(w.now + DAY_MS, rids=["r-labs"])
    w.ok("h1/dr-b", "referral.admit", {"id": 1})  # a clinician admits: unchanged
    return {"id": 1, "rids": ["r-labs"], "commitments": [w.commitments["r-labs"]]}


def test_a_practitioner_key_cannot_deliver_nor_confirm_a_referral() -> None:
    w = World()
    assert w.q("governance/contracts", {})["referral"] >= 2  # v3 keeps the check
    delivery = _admitted(w)
    refused = w.send("h0/dr-a", "referral.deliver", delivery)
    assert refused.code == Code.UNAUTHORIZED
    assert refused.log.startswith("signer: practitioner h0/dr-a may not state a referral's")
    assert w.q("referral/status", {"id": 1})["status"] == "admitted"
    w.ok("h0", "referral.deliver", delivery)

    confirm = {"id": 1, "commitments": delivery["commitments"]}
    refused = w.send("h1/dr-b", "referral.confirm", confirm)
    assert refused.code == Code.UNAUTHORIZED
    assert refused.log.startswith("signer: practitioner h1/dr-b may not confirm")
    assert w.q("referral/status", {"id": 1})["status"] == "delivered"
    w.ok("h1", "referral.confirm", confirm)
    assert w.q("referral/status", {"id": 1})["status"] == "confirmed"


def test_referral_v1_replays_a_practitioners_delivery_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, referral=1)
    delivery = _admitted(w)
    assert w.send("h0/dr-a", "referral.deliver", delivery).ok
    _activate(w, "referral", 2)
    confirm = {"id": 1, "commitments": delivery["commitments"]}
    assert w.send("h1/nurse-b", "referral.confirm", confirm).code == Code.UNAUTHORIZED
    assert w.send("h1", "referral.confirm", confirm).ok
