"""A validator rotates its consensus and p2p keys on a real CometBFT network by its own signed
update: the power moves to the new key in the validator set, the members peer with its new
node id only (filter_peers), and once the node restarts with the new key files it signs blocks
again; the network never stops."""

from __future__ import annotations

import hashlib

from medledger.consensus.cometbft import processes
from medledger.node.config import load_config
from medledger.provisioning import rotation

from .conftest import CmtNet, wait_until


def _validators(net: CmtNet, org: str) -> dict[str, int]:
    found = net.rpc(org).validators()
    return {v["address"]: int(v["voting_power"]) for v in found}


def _peer_answer(net: CmtNet, org: str, node_id: str) -> int:
    """What `org`'s app answers its CometBFT about a p2p node (0: peer with it)."""
    result = net.rpc(org).call("abci_query", path=f"/p2p/filter/id/{node_id}")
    return int(result["response"].get("code", 0))


def test_a_validator_rotates_its_keys_and_signs_with_the_new_ones(cmt_net: CmtNet) -> None:
    net = cmt_net
    org = net.orgs[3]
    config = load_config(net.home(org))
    old = net.rpc(org).status()["validator_info"]["address"]
    old_node = net.rpc(org).status()["node_info"]["id"]
    staged = rotation.stage(config, ["validator", "p2p"], net.key(org).public_key)
    new = hashlib.sha256(staged.body["validator_key"]).digest()[:20].hex().upper()
    with net.engine(org) as e:
        mine = next(m for m in e.query("governance/members", {}) if m["org"] == org)
        body = {**staged.body, "addresses": staged.addresses(mine["addresses"])}
        sub = e.submit(net.tx(org, "governance.update_member", body))
        assert sub.accepted, sub.check
        assert e.wait_for_commit(sub.tx_id, 30).result.ok
    wait_until(
        lambda: _validators(net, net.orgs[0]).get(new) == 10 and old not in _validators(net, org),
        30,
        "the power to move to the new validator key",
    )
    # The node still holds the old key: the other three (30 of 40) carry on meanwhile.
    rotation.switch(config, staged)
    processes.stop_hospital(net.dir, org)
    processes.start_hospitals(net.dir, [org])
    assert net.rpc(org).status()["validator_info"]["address"] == new
    assert net.rpc(org).status()["node_info"]["id"] == staged.node_id != old_node
    assert _peer_answer(net, net.orgs[0], staged.node_id) == 0
    assert _peer_answer(net, net.orgs[0], old_node) != 0  # a stolen old node key: refused

    def signs() -> bool:
        block = net.rpc(net.orgs[0]).block()["block"]
        return any(s.get("validator_address") == new for s in block["last_commit"]["signatures"])

    wait_until(signs, 60, "a commit signed with the new validator key")
    net.assert_same_state(net.orgs)
