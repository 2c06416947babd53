"""Review 9: `set_param` (issue 18's `member propose param`).

Governance v1/v2 took `proposal_ttl_ms` at any value >= 0: a vote setting it to 0 (a slip,
"no limit") expired every later proposal before a second member could vote, so no vote
could ever undo it. v3 bounds it (and the escrow's k and n), and the CLI refuses exactly
what the contract refuses: both ask `governance.param_bounds`."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.cli.governance import check_param
from medledger.contracts import default_versions
from medledger.contracts.governance import DEFAULT_PARAMS, param_bounds
from medledger.ledger.errors import Code
from tests.support import ledger
from tests.support.world import World


def _propose(w: World, name: str, value: int) -> Any:
    args = {"action": "set_param", "args": {"name": name, "value": value}}
    return w.send("h0", "governance.propose", args)


def test_a_zero_proposal_ttl_is_refused_by_the_contract_and_the_cli() -> None:
    w = World()
    assert w.q("governance/contracts", {})["governance"] >= 3  # v3 or later
    refused = _propose(w, "proposal_ttl_ms", 0)
    assert refused.code == Code.INVALID_BODY
    assert "field args.value: proposal_ttl_ms is 3600000 to" in refused.log
    with pytest.raises(ValueError, match="0 is out of range for proposal_ttl_ms"):
        check_param("proposal_ttl_ms", 0, 3)
    refused = _propose(w, "escrow_threshold", 1)
    assert refused.code == Code.INVALID_BODY
    assert "escrow_threshold is 2 to 16" in refused.log


@pytest.mark.parametrize("version", [2, 3, 4])
def test_the_cli_refuses_exactly_what_the_contract_refuses(
    version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = default_versions()
    monkeypatch.setattr(ledger, "default_versions", lambda: {**versions, "governance": version})
    w = World()
    current = w.q("governance/params", {})  # v4 also weighs k against n (param_conflict)
    for name in sorted(DEFAULT_PARAMS):
        low, high = param_bounds(name, version)
        for value in {low - 1, low, high or 10**12, (high or 10**12) + 1}:
            try:
                check_param(name, value, version, current)
                cli = True
            except ValueError:
                cli = False
            assert _propose(w, name, value).ok == cli, (name, value)


def test_an_older_chain_replays_a_zero_ttl_and_its_governance_freezes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why v3 bounds it: on v2 the vote passes, and no later proposal can gather a vote."""
    versions = default_versions()
    monkeypatch.setattr(ledger, "default_versions", lambda: {**versions, "governance": 2})
    w = World()
    w.vote_policy("set_param", {"name": "proposal_ttl_ms", "value": 0})
    assert w.q("governance/params", {})["proposal_ttl_ms"] == 0
    created = _propose(w, "proposal_ttl_ms", 7 * 24 * 3600 * 1000)
    assert created.ok
    pid = int(next(str(e.get("id")) for e in created.events if e.type == "proposal.created"))
    late = w.send("h1", "governance.vote", {"proposal": pid, "approve": True})
    assert late.code == Code.EXPIRED


def test_only_a_current_members_organisation_key_proposes_or_votes_a_parameter() -> None:
    """Pinned (no finding): a practitioner key, even a DPO's, and a removed member's key
    neither propose nor vote a parameter change."""
    w = World()
    args = {"action": "set_param", "args": {"name": "study_min_cell", "value": 10}}
    assert w.send("h0/dr-a", "governance.propose", args).code == Code.UNAUTHORIZED
    w.vote_policy("remove_member", {"org": "h2"})
    assert w.send("h2", "governance.propose", args).code == Code.UNAUTHORIZED
    created = w.send("h0", "governance.propose", args)
    assert created.ok
    pid = int(next(str(e.get("id")) for e in created.events if e.type == "proposal.created"))
    refused = w.send("h2", "governance.vote", {"proposal": pid, "approve": True})
    assert refused.code == Code.UNAUTHORIZED
    assert w.q("governance/params", {})["study_min_cell"] == 5  # one vote of two: not yet
