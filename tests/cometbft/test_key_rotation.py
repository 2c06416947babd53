"""A validator rotates its consensus key on a real CometBFT network by its own signed update:
the power moves to the new key in the validator set, and once the node restarts with the new
key file it signs blocks again; the network never stops."""

from __future__ import annotations

import hashlib

from medledger.consensus.cometbft import processes
from medledger.node.config import load_config
from medledger.provisioning import rotation

from .conftest import CmtNet, wait_until


def _validators(net: CmtNet, org: str) -> dict[str, int]:
    found = net.rpc(org).validators()
    return {v["address"]: int(v["voting_power"]) for v in found}


def test_a_validator_rotates_its_key_and_signs_with_the_new_one(cmt_net: CmtNet) -> None:
    net = cmt_net
    org = net.orgs[3]
    config = load_config(net.home(org))
    old = net.rpc(org).status()["validator_info"]["address"]
    staged = rotation.stage(config, ["validator"], net.key(org).public_key)
    new = hashlib.sha256(staged.body["validator_key"]).digest()[:20].hex().upper()
    with net.engine(org) as e:
        sub = e.submit(net.tx(org, "governance.update_member", staged.body))
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

    def signs() -> bool:
        block = net.rpc(net.orgs[0]).block()["block"]
        return any(s.get("validator_address") == new for s in block["last_commit"]["signatures"])

    wait_until(signs, 60, "a commit signed with the new validator key")
    net.assert_same_state(net.orgs)
