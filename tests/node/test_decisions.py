"""The one decide-and-audit path: authorize over the engine's query or on a replica's state."""

from __future__ import annotations

from typing import Any

from medledger.contracts.authorize import Decision
from medledger.node import Node, decisions

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
