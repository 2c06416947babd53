"""Review 11a (attack review of the session's first merges: records v2, genesis parameters,
the sealed research digest, the block interval).

Each test states what should hold and failed on the merged main (`ecb5087`): it shows a
finding of the report, mended since. Findings 1 and 2 (the research digest) are in
test_digest_review.py, written for the per-category digest that replaced the reviewed one."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from medledger.consensus.cometbft import testnet
from medledger.contracts.access import log_body
from medledger.contracts.records import held_custody
from medledger.host.ports import free_ports
from medledger.ledger.results import TxResult
from tests.support import world as world_module
from tests.support.ledger import Net, make_net
from tests.support.world import World

RECEIPT = hashlib.sha256(b"vault erasure receipt").digest()


def _shred(w: World, who: str) -> TxResult:
    body = {"pid": w.pid, "digest": RECEIPT, "records": 1, "copies": 0}
    return w.send(who, "records.shredded", body)


def _export_to(w: World, to: str) -> TxResult:
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


def test_a_v1_self_made_shredding_stops_counting_once_v2_is_voted_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under records v1, h2 (which never held alice) states that it shredded her: access v4
    then reads it as custody "ended by its own shredding". The consortium votes records v2
    in to close exactly that (docs/security.md): but the statement made before the vote
    keeps counting, so h2 stays an eligible receiver of alice's data for good."""

    def v1_net(n: int = 3, seed: int = 1) -> Net:
        net = make_net(n, seed)
        contracts = {**net.genesis.contracts, "records": 1}
        return dataclasses.replace(
            net, genesis=dataclasses.replace(net.genesis, contracts=contracts)
        )

    monkeypatch.setattr(world_module, "make_net", v1_net)
    w = World()
    assert _shred(w, "h2").ok  # v1: any member
    activate = {"action": "activate_contract", "args": {"name": "records", "version": 2}}
    w.ok("h0", "governance.propose", activate)
    w.ok("h1", "governance.vote", {"proposal": 1, "approve": True})
    assert w.q("governance/contracts", {})["records"] == 2
    # (main also takes h2's statement again now: the old one makes it an `ever_custodian`)
    assert not held_custody(w.state, w.pid, "h2")  # the old statement should not count
    assert _export_to(w, "h2").code != 0


# -- finding 4: a chain founded before the genesis rule no longer replays ----------------


def test_a_chain_founded_before_session_11_still_replays_its_genesis() -> None:
    """At `be4d6a1` a genesis's parameters went into the state as given (no rule), under
    every governance version. A consortium started then with `study_min_cell` 1 (a sandbox
    that wanted exact small cells), or any value its version's vote would refuse, runs; its
    nodes are initialised and never run InitChain again. A node added later (join,
    add_hospital, a member rebuilding its node from block 0) replays InitChain: main now
    refuses that genesis, so the running chain can take no new node. The rule for a genesis
    should be the one its own versions had (none before session 11): gate it on a new
    governance version, as votes are."""
    net = make_net()
    before = dataclasses.replace(
        net.genesis,
        params={"study_min_cell": 1},
        contracts={**net.genesis.contracts, "governance": 4},  # session 10's newest
    )
    started = dataclasses.replace(net, genesis=before).app()
    assert started.query_obj("governance/params", {})["study_min_cell"] == 1


# -- finding 5: a node joining an upgraded network waits less than its nodes -----------


def test_a_node_joining_a_network_configured_before_session_11_waits_as_its_nodes_do(
    tmp_path: Path,
) -> None:
    """A consortium founded before session 11 with a 1 s block time: every node's
    timeout_commit is 1 s (then the block time itself), and nothing rewrites it on upgrade
    (docs/deploy.md says nothing of it). A hospital that joins after the upgrade gets the
    bootstrap answer's `block_time_ms` (consortium.json's 1000, exchange/bootstrap.py), and
    `join_home` makes it 600 ms: the network's nodes now disagree on timeout_commit. (The
    sandbox's `add_hospital` reads a node's timeout_commit back, `block_time_from_timeout_ms`,
    and matches; `join` does not.)"""
    sponsor = tmp_path / "sponsor"
    testnet._init_home(sponsor)
    testnet._configure(sponsor, {"consensus": {"timeout_commit": "1s"}})  # as at be4d6a1
    joiner = tmp_path / "joiner"
    # (fix11b) The sponsor's bootstrap answer carries its own timeout_commit
    # (exchange/bootstrap.py), which join passes on as is.
    testnet.join_home(
        joiner,
        "h9",
        genesis={},
        peers=[],
        ports=free_ports(4),
        block_time_ms=1000,
        timeout_commit=testnet.timeout_commit_of(sponsor),
    )
    assert testnet.timeout_commit_of(joiner) == testnet.timeout_commit_of(sponsor)
