"""A genesis's parameters obey the rule a vote obeys (session 11).

Governance v3/v4 bound what a `set_param` vote may set (`param_bounds`) and refuse a crossed
pair (`param_conflict`), but a genesis's parameters went into the state as given: a founder
could start a consortium with `proposal_ttl_ms` 0 (every proposal expired before a second
vote: governance frozen for good) or an escrow threshold above its shares (every escrowed key
unrecoverable). Now the same rule (`governance.param_problem`, `policies.param_problem`)
refuses them, naming the parameter: at `consortium genesis` / `create_consortium` (nothing
written), and, from governance v5, at `join` and the node's InitChain (a file edited since;
from v6, new consortia, a name no contract knows too); an older genesis replays as it did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medledger.contracts import (
    check_genesis_params,
    default_versions,
    replayed_genesis_params,
    unknown_genesis_params,
)
from medledger.contracts.common import DAY_MS
from medledger.ledger.errors import Code, TxError
from medledger.node.config import ConfigError
from medledger.provisioning.consortium import create_consortium
from tests.support.ledger import T0, make_net


def _refusal(params: dict[str, object], versions: dict[str, int] | None = None) -> str:
    with pytest.raises(TxError) as refused:
        check_genesis_params(params, versions or default_versions())
    assert refused.value.code == Code.INVALID_BODY
    return str(refused.value)


def test_an_out_of_range_or_crossed_parameter_is_refused_by_name() -> None:
    assert _refusal({"proposal_ttl_ms": 0}) == (
        f"field params.proposal_ttl_ms: proposal_ttl_ms is 3600000 to {365 * DAY_MS}"
    )
    # Each within its bounds, crossed together: named as a vote would name it.
    crossed = _refusal({"escrow_threshold": 5, "escrow_shares": 4})
    assert crossed.startswith("field params.escrow_")
    assert "escrow_threshold would be 5 and escrow_shares 4" in crossed
    # Against the default of the other one of the pair, too.
    assert "escrow_shares 3" in _refusal({"escrow_threshold": 4})
    assert _refusal({"custody_grace_days": 0}).startswith("field params.custody_grace_days:")
    assert _refusal({"backup_replicas": 17}).startswith("field params.backup_replicas:")
    assert (
        _refusal({"study_min_cell": 1})
        == "field params.study_min_cell: study_min_cell is 2 to 1000"
    )
    # A care parameter (policies), and what a hand-edited JSON file may hold.
    assert _refusal({"emergency_max_ms": 0}) == "field params.emergency_max_ms: must be at least 1"
    assert _refusal({"study_min_cell": "5"}) == "field params.study_min_cell: an integer expected"
    assert _refusal({"study_min_cell": True}) == "field params.study_min_cell: an integer expected"
    assert _refusal({"emergency_max_ms": 1.5}).endswith("an integer expected")
    # A misspelt name would otherwise be silently ignored: the consortium would start
    # without the setting its founders believe it has.
    assert _refusal({"study_min_cel": 10}) == "field params.study_min_cel: no such parameter"


def test_what_a_vote_could_set_is_taken() -> None:
    check_genesis_params(
        {
            "escrow_threshold": 3,
            "escrow_shares": 5,
            "proposal_ttl_ms": 2 * DAY_MS,
            "study_min_epsilon_milli": 100,
            "custody_min_age_ms": 0,
        },
        default_versions(),
    )


def test_an_older_governance_version_keeps_its_own_bounds() -> None:
    """A genesis of a governance v2 chain: its parameters went in as given (the rule starts
    at v5), so a replayed v2 genesis still starts (its rule, not today's)."""
    check_genesis_params({"proposal_ttl_ms": 0}, {**default_versions(), "governance": 2})


def test_init_chain_refuses_a_genesis_edited_past_the_rule() -> None:
    net = make_net()
    bad = dataclasses.replace(net.genesis, params={"escrow_threshold": 9, "escrow_shares": 4})
    with pytest.raises(TxError, match="field params.escrow_"):
        dataclasses.replace(net, genesis=bad).app()
    good = dataclasses.replace(net.genesis, params={"escrow_threshold": 3, "escrow_shares": 4})
    started = dataclasses.replace(net, genesis=good).app()
    assert started.query_obj("governance/params", {})["escrow_threshold"] == 3
    assert started.genesis.time_ms == T0


def test_a_sandbox_is_not_made_with_a_parameter_out_of_range(tmp_path: Path) -> None:
    where = tmp_path / "sandbox"
    with pytest.raises(ConfigError, match=r"genesis field params.study_min_cell: study_min_cell"):
        create_consortium(where, 2, genesis_time_ms=T0, params={"study_min_cell": 0})
    assert not where.exists()  # nothing written


def test_a_genesis_of_governance_v4_replays_its_parameters_as_given() -> None:
    """Before governance v5 a genesis's parameters went into the state unchecked (session 10
    and earlier): a node replaying such a chain from block 0 still starts, with the values
    the running nodes have (review 11a, finding 4). New consortia start on v5, refused."""
    assert default_versions()["governance"] == 6
    net = make_net()
    given = {"study_min_cell": 1, "proposal_ttl_ms": 0, "emergency_max_ms": 0}
    older = dataclasses.replace(
        net.genesis, params=given, contracts={**net.genesis.contracts, "governance": 4}
    )
    started = dataclasses.replace(net, genesis=older).app()
    assert started.query_obj("governance/params", {})["proposal_ttl_ms"] == 0
    assert started.query_obj("policies/params", {})["emergency_max_ms"] == 0
    with pytest.raises(TxError, match="field params.proposal_ttl_ms"):
        dataclasses.replace(net, genesis=dataclasses.replace(net.genesis, params=given)).app()
    replayed_genesis_params(given, older.contracts)  # what join checks: not refused
    assert unknown_genesis_params({**given, "study_min_cel": 3}) == ["study_min_cel"]


def test_init_chain_refuses_a_misspelt_parameter_from_governance_v6() -> None:
    """Session 14: InitChain ignored a name no contract knows, so a genesis edited after
    `consortium genesis` checked it started without the setting its founders wrote. From
    governance v6 it is refused like a value out of range; a v5 genesis replays as it did."""
    net = make_net()
    misspelt = {"study_min_cel": 10, "study_min_cell": 10}
    bad = dataclasses.replace(net.genesis, params=misspelt)
    with pytest.raises(TxError, match=r"^field params\.study_min_cel: no such parameter$"):
        dataclasses.replace(net, genesis=bad).app()
    with pytest.raises(TxError, match="study_min_cel: no such parameter"):
        replayed_genesis_params(misspelt, net.genesis.contracts)  # what join checks
    older = dataclasses.replace(bad, contracts={**net.genesis.contracts, "governance": 5})
    started = dataclasses.replace(net, genesis=older).app()
    assert started.query_obj("governance/params", {})["study_min_cell"] == 10
    replayed_genesis_params(misspelt, older.contracts)  # ignored there, as InitChain does
    assert unknown_genesis_params(misspelt) == ["study_min_cel"]  # join's warning names it
