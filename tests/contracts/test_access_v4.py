"""`access` v4 (session 10): an export's receiver (`to`) is checked on the chain, not taken on
the sender's word. Under v3 a hospital could write into a patient's trail that it sent their
data to any member (blaming it, or hiding the real receiver behind it); v4 accepts only a
hospital the chain knows may receive them from the sender: a custodian of the patient (a
study's partials go to a co-custodian), or the receiver of a referral of them from the sender.
A v3 chain replays unchanged."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from medledger.contracts.access import log_body
from medledger.contracts.common import DAY_MS
from medledger.contracts.records import META_CT_SIZES, custodies
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from tests.support import ledger
from tests.support.world import EVIDENCE, World

META_CT = b"c" * META_CT_SIZES[0]
REFERRAL = {
    "to": "h1",
    "categories": ["labs"],
    "procedure_hash": hashlib.sha256(b"letter").digest(),
    "evidence_hash": EVIDENCE,
}


def _export(w: World, to: str, **over: Any) -> dict[str, Any]:
    """h0's research agent sends alice's partial facts for study s1 to `to`."""
    return {
        "actor": "org:h0",
        "actor_org": "h0",
        "pid": w.pid,
        "action": "export",
        "purpose": "research",
        "outcome": "granted",
        "basis": "enrolment:s1",
        "rids": [],
        "to": to,
        **over,
    }


def _log(w: World, *entries: dict[str, Any], version: int = 4) -> TxResult:
    return w.send("h0", "access.log", log_body(list(entries), version))


def _exports(w: World) -> list[tuple[str, str]]:
    trail = w.q("access/of_patient", {"pid": w.pid})
    return [(e["custodian"], e["to"]) for e in trail if e["action"] == "export"]


def test_a_hospital_cannot_name_a_non_custodian_as_the_receiver_of_a_patients_data() -> None:
    w = World()
    assert w.q("governance/contracts", {})["access"] >= 4  # v5 keeps its checks
    # h2 holds nothing of alice and no referral sends her to it: h0 cannot blame it.
    refused = _log(w, _export(w, "", action="read", basis="custodian"), _export(w, "h2"))
    assert refused.code == Code.UNAUTHORIZED
    assert "field entries[1].to: h2 is neither a custodian of the entry's patient" in refused.log
    assert _exports(w) == []  # nothing of the tx was written


def test_a_co_custodian_receives_a_study_partial() -> None:
    w = World()
    w.records("h1", w.pid, ["r-h1-labs"])  # alice is followed at h1 too
    assert _log(w, _export(w, "h1")).ok
    assert _exports(w) == [("h0", "h1")]


def test_custody_begun_earlier_in_the_same_block_counts() -> None:
    w = World()
    entry = {"rid": "r-h2", "pid": w.pid, "commitment": b"c" * 32, "meta_ct": META_CT}
    register = w.tx("h2", "records.register", {"entries": [entry]})
    export = w.tx("h0", "access.log", log_body([_export(w, "h2")], 4))
    outcome = w.block(register, export)
    assert [r.ok for r in outcome.results] == [True, True], outcome.results


def test_a_receiver_whose_custody_ended_by_its_own_shredding_still_counts() -> None:
    """The journal commits its entries after the send: a co-custodian that erased the patient
    meanwhile must not make the sender's whole audit tx refused."""
    w = World()
    w.records("h1", w.pid, ["r-h1-labs"])
    shred = {"pid": w.pid, "digest": hashlib.sha256(b"receipt").digest(), "records": 1}
    w.ok("h1", "records.shredded", shred)
    assert "h1" not in custodies(w.state, w.pid)
    assert _log(w, _export(w, "h1")).ok


def test_the_receiver_of_a_referral_from_the_sender_receives_its_push() -> None:
    """A transfer: h1 holds nothing of alice, the referral from h0 names it."""
    w = World()
    assert w.refer(w.now + DAY_MS).ok  # h0 refers alice to h1
    push = _export(w, "h1", purpose="treatment", basis="referral:1", rids=["r-labs"])
    assert _log(w, push).ok
    assert _exports(w) == [("h0", "h1")]


def test_a_referral_from_another_hospital_does_not_make_a_receiver() -> None:
    w = World()
    w.records("h2", w.pid, ["r-h2"])  # alice is followed at h2 too, which refers her to h1
    w.ok("h2/dr-c", "referral.create", {**REFERRAL, "pid": w.pid, "date_ms": w.now + DAY_MS})
    refused = _log(w, _export(w, "h1", purpose="treatment", basis="referral:1"))
    assert refused.code == Code.UNAUTHORIZED and "entries[0].to: h1" in refused.log
    from_h2 = _export(w, "h1", actor="org:h2", actor_org="h2", basis="referral:1")
    assert w.send("h2", "access.log", log_body([from_h2], 4)).ok
    assert _exports(w) == [("h2", "h1")]


def test_a_v3_chain_replays_the_claim_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "ACCESS_VERSION", [3])  # what make_net starts with
    w = World()
    assert w.q("governance/contracts", {})["access"] == 3
    assert _log(w, _export(w, "h2"), version=3).ok
    assert _exports(w) == [("h0", "h2")]
