"""Referral: consent proof, window, admission, delivery obligation, confirmation, overdue."""

from __future__ import annotations

import hashlib

from medledger.contracts.common import DAY_MS
from medledger.ledger.errors import Code
from tests.support.world import World


def _admitted(w: World, rids: list[str] | None = None) -> None:
    w.refer(w.now + DAY_MS, rids=rids if rids is not None else ["r-labs", "r-img"])
    w.ok("h1", "referral.admit", {"id": 1})


def test_a_referral_resting_on_a_consent_ends_with_it() -> None:
    w = World()
    cid = w.grant("org:h1", categories=["conditions"])
    w.refer(w.now + DAY_MS, consent=cid, evidence_hash=b"")
    assert w.auth("h1/dr-b", category="imaging").basis == "referral:1"
    w.ok("patient:alice", "consent.revoke", {"id": cid})
    denied = w.auth("h1/dr-b", category="imaging")
    assert denied.reason.startswith("consent revoked")


def test_the_consent_proof_must_fit_the_referral() -> None:
    w = World()
    cid = w.grant("org:h2")  # to another hospital
    body = {
        "pid": w.pid,
        "to": "h1",
        "date_ms": w.now + DAY_MS,
        "categories": ["labs"],
        "procedure_hash": hashlib.sha256(b"letter").digest(),
        "consent": cid,
    }
    result = w.send("h0/dr-a", "referral.create", body)
    assert result.code == Code.REFUSED and "not a treatment consent to h1" in result.log


def test_admission_creates_an_obligation_that_delivery_and_confirmation_fulfil() -> None:
    w = World()
    w.refer(w.now + DAY_MS, rids=["r-labs", "r-img"])
    assert w.send("h0", "referral.admit", {"id": 1}).code == Code.UNAUTHORIZED  # A cannot admit
    result = w.ok("h1", "referral.admit", {"id": 1})
    (created,) = [dict(e.attrs) for e in result.events if e.type == "obligation.created"]
    assert created["from"] == "h0" and int(created["deadline"]) == w.now + 2 * DAY_MS

    c = w.commitments
    partial = w.send(
        "h0", "referral.deliver", {"id": 1, "rids": ["r-labs"], "commitments": [c["r-labs"]]}
    )
    assert partial.code == Code.REFUSED and "missing ['r-img']" in partial.log
    wrong = w.send(
        "h0",
        "referral.deliver",
        {"id": 1, "rids": ["r-labs", "r-img"], "commitments": [c["r-labs"], c["r-labs"]]},
    )
    assert wrong.code == Code.REFUSED and "commitments[1]" in wrong.log
    w.ok(
        "h0",
        "referral.deliver",
        {"id": 1, "rids": ["r-labs", "r-img"], "commitments": [c["r-labs"], c["r-img"]]},
    )
    mismatch = w.send("h1", "referral.confirm", {"id": 1, "commitments": [c["r-img"], c["r-img"]]})
    assert mismatch.code == Code.REFUSED and "r-labs" in mismatch.log
    result = w.ok("h1", "referral.confirm", {"id": 1, "commitments": [c["r-labs"], c["r-img"]]})
    assert [e.type for e in result.events] == ["obligation.fulfilled"]
    status = w.q("referral/status", {"id": 1})
    assert status["status"] == "confirmed" and status["obligation"]["status"] == "fulfilled"
    # Nothing is flagged at the deadline once delivered.
    assert not w.block(at=w.now + 3 * DAY_MS).events


def test_an_undelivered_obligation_is_flagged_overdue_at_its_deadline() -> None:
    w = World()
    _admitted(w)
    deadline = w.q("referral/status", {"id": 1})["obligation"]["deadline"]
    assert not w.block(at=deadline - 1).events
    out = w.block(at=deadline)
    assert [e.type for e in out.events] == ["obligation.overdue"]
    assert dict(out.events[0].attrs)["referral"] == "1"
    ob = w.q("referral/status", {"id": 1})["obligation"]
    assert ob["status"] == "overdue" and ob["overdue"] is True
    c = w.commitments
    w.ok(
        "h0",
        "referral.deliver",
        {"id": 1, "rids": ["r-labs", "r-img"], "commitments": [c["r-labs"], c["r-img"]]},
    )
    assert w.q("referral/status", {"id": 1})["obligation"]["delivered"]["late"] is True


def test_records_named_must_be_the_referring_hospitals() -> None:
    w = World()
    w.records("h2", w.pid, ["r-other"])
    body = {
        "pid": w.pid,
        "to": "h1",
        "date_ms": w.now + DAY_MS,
        "categories": ["labs"],
        "procedure_hash": hashlib.sha256(b"letter").digest(),
        "evidence_hash": hashlib.sha256(b"form").digest(),
        "rids": ["r-other"],
    }
    result = w.send("h0/dr-a", "referral.create", body)
    assert result.code == Code.NOT_FOUND and "rids[0]" in result.log


def test_cancel_before_admission_only() -> None:
    w = World()
    w.refer(w.now + DAY_MS)
    w.ok("h1", "referral.cancel", {"id": 1, "reason": "rescheduled"})
    assert w.auth("h1/dr-b").reason.startswith("referral cancelled")
    assert w.send("h1", "referral.admit", {"id": 1}).code == Code.CONFLICT
    assert [r["id"] for r in w.q("referral/list", {"org": "h1"})] == [1]


def test_only_the_referring_hospital_delivers_and_only_the_receiver_confirms() -> None:
    """The wrong side (and a third hospital) is refused: the receiver cannot state the
    sender's delivery, the sender cannot confirm its own; nothing changes until the right
    side signs."""
    w = World()
    _admitted(w, rids=["r-labs"])
    delivery = {"id": 1, "rids": ["r-labs"], "commitments": [w.commitments["r-labs"]]}
    for who in ("h1", "h2"):
        refused = w.send(who, "referral.deliver", delivery)
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log == "only h0 may do this on referral 1"
        assert w.q("referral/status", {"id": 1})["status"] == "admitted"
    w.ok("h0", "referral.deliver", delivery)

    confirm = {"id": 1, "commitments": delivery["commitments"]}
    for who in ("h0", "h2"):
        refused = w.send(who, "referral.confirm", confirm)
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log == "only h1 may do this on referral 1"
        assert w.q("referral/status", {"id": 1})["status"] == "delivered"
    w.ok("h1", "referral.confirm", confirm)
    assert w.q("referral/status", {"id": 1})["status"] == "confirmed"
