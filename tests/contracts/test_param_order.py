"""Governance v4 (session 10): a `set_param` vote keeps `escrow_threshold` (k) at most
`escrow_shares` (n). Each within its own bounds (2 to 16), a threshold above the shares made
every escrowed key unrecoverable, and escrow refused it only when a member next escrowed.
The contract checks it at the proposal and again at the vote that executes it (two proposals,
each valid alone, would otherwise cross); `member propose param` asks the same rule
(`governance.param_conflict`) before proposing. A v3 chain replays unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.cli.governance import check_param
from medledger.contracts import default_versions
from medledger.contracts.governance import param_conflict
from medledger.ledger.errors import Code
from tests.support import ledger
from tests.support.world import World


def _propose(w: World, name: str, value: int) -> Any:
    args = {"action": "set_param", "args": {"name": name, "value": value}}
    return w.send("h0", "governance.propose", args)


def _proposal_id(created: Any) -> int:
    return int(next(str(e.get("id")) for e in created.events if e.type == "proposal.created"))


def test_a_threshold_above_the_shares_is_refused_by_the_contract_and_the_cli() -> None:
    w = World()
    assert w.q("governance/contracts", {})["governance"] >= 4
    params = w.q("governance/params", {})
    assert (params["escrow_threshold"], params["escrow_shares"]) == (2, 3)
    refused = _propose(w, "escrow_threshold", 4)  # within 2..16, above n = 3
    assert refused.code == Code.INVALID_BODY
    assert "field args.value: escrow_threshold would be 4 and escrow_shares 3" in refused.log
    with pytest.raises(ValueError, match="--value: escrow_threshold would be 4"):
        check_param("escrow_threshold", 4, 4, params)
    # k = n is allowed; then k above the lowered n is refused
    lowered = _propose(w, "escrow_shares", 2)
    assert lowered.ok
    w.ok("h1", "governance.vote", {"proposal": _proposal_id(lowered), "approve": True})
    assert w.q("governance/params", {})["escrow_shares"] == 2
    refused = _propose(w, "escrow_threshold", 3)
    assert "escrow_threshold may not exceed escrow_shares" in refused.log
    check_param("escrow_threshold", 3, 4, {"escrow_shares": 5})  # with n = 5 it would do


def test_two_proposals_valid_alone_cannot_cross_at_their_votes() -> None:
    """k = 5 proposed while n = 6, and n = 3 proposed while k = 2: the second executed
    is refused at the vote that would execute it (the proposal stays open, to expire)."""
    w = World()
    raise_n = _propose(w, "escrow_shares", 6)
    w.ok("h1", "governance.vote", {"proposal": _proposal_id(raise_n), "approve": True})
    raise_k = _propose(w, "escrow_threshold", 5)
    lower_n = _propose(w, "escrow_shares", 4)
    assert raise_k.ok and lower_n.ok
    w.ok("h1", "governance.vote", {"proposal": _proposal_id(raise_k), "approve": True})
    late = w.send("h1", "governance.vote", {"proposal": _proposal_id(lower_n), "approve": True})
    assert late.code == Code.INVALID_BODY
    assert "escrow_threshold would be 5 and escrow_shares 4" in late.log
    params = w.q("governance/params", {})
    assert (params["escrow_threshold"], params["escrow_shares"]) == (5, 6)
    assert w.q("governance/proposal", {"id": _proposal_id(lower_n)})["status"] == "open"


def test_an_older_chain_replays_a_crossed_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = default_versions()
    monkeypatch.setattr(ledger, "default_versions", lambda: {**versions, "governance": 3})
    w = World()
    created = _propose(w, "escrow_threshold", 9)
    w.ok("h1", "governance.vote", {"proposal": _proposal_id(created), "approve": True})
    assert w.q("governance/params", {})["escrow_threshold"] == 9  # above n = 3, as v3 took it
    assert param_conflict("escrow_threshold", 9, {"escrow_shares": 3}, 3) == ""
    check_param("escrow_threshold", 9, 3, {"escrow_shares": 3})  # the CLI of a v3 chain too
