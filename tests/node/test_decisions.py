"""The one decide-and-audit path: authorize over the engine's query or on a replica's state."""

from __future__ import annotations

from typing import Any

import medledger.node.decisions as decisions
from medledger.contracts.authorize import Decision
from medledger.node import Node

PID = "12" * 32


def test_an_unknown_key_is_refused_through_the_query(node: Node) -> None:
    decision = decisions.decide(node.engine, b"\x07" * 32, PID, {}, "treatment")
    assert isinstance(decision, Decision) and not decision.allowed
    assert decision.basis == "" and decision.reason


def test_the_hospital_itself_is_answered_with_the_contracts_decision(node: Node) -> None:
    decision = decisions.decide(
        node.engine, node.org_key.public_key, PID, {"custodian": node.config.org}, "treatment"
    )
    assert isinstance(decision, Decision)
    assert decision.allowed == bool(decision.basis) and decision.allowed != bool(decision.reason)


def test_a_failure_inside_authorize_is_a_refusal_never_an_opening() -> None:
    def broken() -> Any:
        raise KeyError("bug")

    def missing() -> Any:
        raise ImportError("no cedar")

    assert decisions.fail_closed(broken) == Decision(False, "", "authorization failed: KeyError")
    assert decisions.fail_closed(missing) == Decision(
        False, "", "authorization unavailable on this node"
    )
    assert decisions.fail_closed(lambda: Decision(True, "custodian", "")).allowed


ACCESS = decisions.Access("practitioner:h1/dr-a", "h1", PID, "read", "treatment")


def test_decide_and_audit_returns_the_decision_and_the_entries_naming_every_record() -> None:
    granted = Decision(True, "consent:4", "")
    audited = decisions.decide_and_audit(lambda: granted, ACCESS, ["r1", "r2", "r3"], per_entry=2)
    assert audited.decision == granted
    assert [e["rids"] for e in audited.entries] == [["r1", "r2"], ["r3"]]
    assert {(e["outcome"], e["basis"], e["reason"]) for e in audited.entries} == {
        ("granted", "consent:4", "")
    }
    assert {(e["actor"], e["actor_org"], e["pid"], e["action"]) for e in audited.entries} == {
        ("practitioner:h1/dr-a", "h1", PID, "read")
    }
    assert all("request" not in e for e in audited.entries)  # a hospital's own act


def test_a_denial_is_audited_too_with_only_its_reasons_code() -> None:
    refused = Decision(False, "", "no consent: nothing grants h1 treatment access")
    audited = decisions.decide_and_audit(lambda: refused, ACCESS)
    assert not audited.decision.allowed
    [entry] = audited.entries  # one entry even when no record is named
    assert (entry["outcome"], entry["basis"], entry["rids"]) == ("denied", "", [])
    assert entry["reason"] == "no consent"  # the wording stays with the caller


def test_a_remote_request_travels_with_its_entry_and_a_failing_ask_is_a_logged_refusal() -> None:
    request = {"method": "POST", "signature": b"\x01" * 64}
    remote = decisions.Access("practitioner:h2/dr-b", "h2", PID, "read", "treatment", request)

    def broken() -> Any:
        raise KeyError("bug")

    audited = decisions.decide_and_audit(lambda: decisions.fail_closed(broken), remote, ["r1"])
    assert not audited.decision.allowed
    [entry] = audited.entries
    assert entry["request"] == request and entry["outcome"] == "denied"
