"""Four hospital validators on real CometBFT processes: agreement, faults, recovery.

Each test leaves the network as it found it (four nodes running), so they share one network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medledger.consensus.cometbft import processes, testnet
from medledger.consensus.cometbft.verify import check_app_hashes
from medledger.ledger import codec
from medledger.ledger.errors import Code

from .conftest import CmtNet, Load, wait_until
from .crash_app import CRASH_FLAG, crash_app_command, crash_app_env

pytestmark = [pytest.mark.cometbft, pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def _all_nodes_up(cmt_net: CmtNet) -> None:
    """Each test starts from four running nodes, even after a failed test left one down."""
    processes.start_hospitals(cmt_net.dir, cmt_net.orgs)


def _committed(net: CmtNet, org: str, upto: int) -> set[bytes]:
    return {t for _, ids in net.records(org, upto) for t in ids}


def test_four_validators_commit_and_agree(cmt_net: CmtNet) -> None:
    net = cmt_net
    engine = net.engine(net.orgs[1])
    try:
        submitted = [engine.submit(net.register_tx(net.orgs[1], f"dr-{i}")) for i in range(10)]
        assert all(s.accepted for s in submitted), [s.check for s in submitted]
        commits = [engine.wait_for_commit(s.tx_id, timeout=30) for s in submitted]
    finally:
        engine.close()
    assert all(c.result.ok for c in commits)
    height = net.assert_same_state(net.orgs)
    assert height >= max(c.height for c in commits)
    for org in net.orgs:
        status = net.rpc(org).status()
        assert int(status["validator_info"]["voting_power"]) == 10
        assert len(net.rpc(org).validators()) == 4
        with net.engine(org) as e:
            # The replica's record, app hash for app hash, against CometBFT's own headers.
            assert check_app_hashes(net.rpc(org).url, e.blocks(1)) == []
            assert e.query("identity/practitioners", {"org": net.orgs[1]}) is not None


def test_bad_signature_and_replayed_nonce_are_refused_at_check_tx_on_every_node(
    cmt_net: CmtNet,
) -> None:
    net = cmt_net
    org = net.orgs[0]
    once = net.register_tx(org, "dr-once")
    with net.engine(org) as engine:
        first = engine.submit(once)
        assert first.accepted
        committed = engine.wait_for_commit(first.tx_id, 30)
    used_nonce = net.nonces[net.key(org).public_key]
    net.wait_heights(net.orgs, committed.height + 1)
    forged = bytearray(net.register_tx(org, "dr-forged"))
    forged[-3] ^= 0x40  # flip a bit of the Ed25519 signature
    body = {"practitioner": "dr-again", "key": b"\x02" * 32, "roles": ["nurse"]}
    replay = net.tx(org, "identity.register", body, nonce=used_nonce)
    for target in net.orgs:
        with net.engine(target) as e:
            bad_sig = e.submit(bytes(forged))
            assert bad_sig.check.code == Code.BAD_SIGNATURE, (target, bad_sig.check)
            bad_nonce = e.submit(replay)
            assert bad_nonce.check.code == Code.BAD_NONCE, (target, bad_nonce.check)
            # The very same bytes again: CometBFT's cache or the app, refused either way.
            again = e.submit(once)
            assert again.check.code == Code.BAD_NONCE, (target, again.check)
    time.sleep(1)
    for target in net.orgs:
        with net.engine(target) as e:
            assert e.query("ledger/tx", {"id": codec.sha256(bytes(forged))}) is None
            assert e.query("ledger/tx", {"id": codec.sha256(replay)}) is None


def test_one_of_four_stopped_under_load_then_catches_up(cmt_net: CmtNet) -> None:
    net = cmt_net
    victim = net.orgs[3]
    live = net.orgs[:3]
    with Load(net, rate=60) as load:
        time.sleep(2)
        processes.stop_hospital(net.dir, victim)
        stopped_at = max(net.height(o) for o in live)
        time.sleep(1)
        # Blocks continue without it.
        net.wait_heights(live, stopped_at + 8, timeout=40)
        time.sleep(2)
    load_accepted_live = load.all_accepted(live)
    assert len(load_accepted_live) > 100
    # Every tx a live node accepted commits (gossip to the others, no loss).
    wait_until(
        lambda: load_accepted_live <= _committed(net, live[0], net.app_height(live[0])),
        30,
        "accepted txs to commit",
    )
    processes.start_hospitals(net.dir, [victim])
    target = max(net.height(o) for o in live)
    net.wait_heights([victim], target, timeout=60)
    height = net.assert_same_state(net.orgs)
    for org in net.orgs:
        assert load_accepted_live <= _committed(net, org, height), org


def test_kill_9_of_an_app_mid_load_replays_to_the_same_app_hash(cmt_net: CmtNet) -> None:
    net = cmt_net
    victim = net.orgs[2]
    with Load(net, rate=60) as load:
        time.sleep(2)
        processes.kill_app(net.dir, victim)
        time.sleep(1)
        # Restarts the pair: CometBFT has usually exited by itself; if it hung in its own
        # shutdown (see stop_orphaned_cometbfts), it is killed first.
        processes.start_hospitals(net.dir, [victim])
        time.sleep(2)
    assert load.all_accepted()
    target = max(net.height(o) for o in net.orgs) + 2
    net.wait_heights(net.orgs, target, timeout=60)
    net.assert_same_state(net.orgs)
    log = processes.log_path(net.dir, victim, "cometbft").read_text()
    assert log.count("Completed ABCI Handshake") >= 2
    with net.engine(victim) as e:
        assert check_app_hashes(net.rpc(victim).url, e.blocks(1)) == []


def test_app_dying_between_finalize_and_commit_is_replayed(cmt_net: CmtNet) -> None:
    """The worst moment: CometBFT has the block, the app has not committed it."""
    net = cmt_net
    victim = net.orgs[1]
    crash_cmd = crash_app_command()
    processes.stop_hospital(net.dir, victim)
    processes.start_hospitals(net.dir, [victim], app_command=crash_cmd, env=crash_app_env())
    flag = net.home(victim) / CRASH_FLAG
    with Load(net, rate=60):
        time.sleep(1.5)
        flag.touch()  # the victim's next commit exits the process before persisting
        wait_until(
            lambda: processes.read_pid(net.dir, victim, "app") is None,
            20,
            "the app to die at commit",
        )
        processes.start_hospitals(net.dir, [victim])
        time.sleep(2)
    assert not flag.exists()
    log = processes.log_path(net.dir, victim, "cometbft").read_text()
    assert "Replay last block using real app" in log
    target = max(net.height(o) for o in net.orgs) + 2
    net.wait_heights(net.orgs, target, timeout=60)
    net.assert_same_state(net.orgs)


def test_two_of_four_stopped_halts_without_fork_then_resumes(cmt_net: CmtNet) -> None:
    net = cmt_net
    down = net.orgs[:2]
    up = net.orgs[2:]
    for org in down:
        processes.stop_hospital(net.dir, org)
    time.sleep(1.5)  # a height already in its last step may still commit
    frozen = {o: net.height(o) for o in up}
    # Txs are still accepted into the surviving mempools...
    with net.engine(up[0]) as e:
        pending = e.submit(net.register_tx(up[0], "dr-during-halt"))
    assert pending.accepted
    time.sleep(4)
    # ...but without two thirds of the power there is no new block.
    assert {o: net.height(o) for o in up} == frozen
    processes.start_hospitals(net.dir, down)
    with net.engine(up[0]) as e:
        committed = e.wait_for_commit(pending.tx_id, timeout=60)
    assert committed.height > max(frozen.values())
    height = net.assert_same_state(net.orgs)
    # No fork: every node holds the same block at every height.
    hashes = {
        org: [m["block_id"]["hash"] for m in net.rpc(org).blockchain(height - 19, height)]
        for org in net.orgs
    }
    assert len({tuple(h) for h in hashes.values()}) == 1


def test_a_fifth_hospital_is_admitted_then_syncs_and_validates(cmt_net: CmtNet) -> None:
    """Members peer only with members' nodes (filter_peers): the new node's id comes in the
    admission (its `addresses.p2p`), then it block-syncs and signs with the power voted."""
    from medledger.ledger.keys import SigningKey
    from medledger.node.config import load_config, load_consortium, save_config, save_consortium

    net = cmt_net
    new = "chu-nantes"
    key = SigningKey.generate()
    home = testnet.hospital_home(net.dir, new)
    (home / "keys").mkdir(parents=True)
    key.save(home / "keys" / "org.key")
    validator_key = testnet.add_hospital(net.dir, new)
    node = testnet.node_addresses(testnet.cometbft_home(net.dir, new), new)
    first = load_config(net.home(net.orgs[0]))
    recorded = json.loads((home / "config.json").read_text())["cometbft"]
    save_config(
        first.model_copy(
            update={
                "home": home.resolve(),
                "org": new,
                "name": "CHU de Nantes",
                "cometbft": first.cometbft.model_validate(recorded),
            }
        )
    )
    meta = load_consortium(net.dir)
    save_consortium(net.dir, meta.model_copy(update={"hospitals": [*meta.hospitals, new]}))
    # Governance admits it as a validator (3 of 4 members), its p2p node named.
    admit = {
        "action": "admit_member",
        "args": {
            "org": new,
            "name": "CHU de Nantes",
            "key": key.public_key,
            "validator_key": validator_key,
            "power": 10,
            "addresses": {"p2p": node.peer},
        },
    }
    txs = [net.tx(net.orgs[0], "governance.propose", admit)]
    with net.engine(net.orgs[0]) as e:
        sub = e.submit(txs[0])
        assert sub.accepted, sub.check
        assert e.wait_for_commit(sub.tx_id, 30).result.ok
        for org in net.orgs[1:3]:
            vote = net.tx(org, "governance.vote", {"proposal": 1, "approve": True})
            s = e.submit(vote)
            assert s.accepted, s.check
            assert e.wait_for_commit(s.tx_id, 30).result.ok
    # Then it block-syncs the chain through its own app (40 of 50 power sign meanwhile)...
    processes.start_hospitals(net.dir, [new])
    net.orgs.append(new)
    net.assert_same_state(net.orgs, timeout=90)
    me = net.rpc(new).status()["validator_info"]["address"]
    wait_until(
        lambda: int(net.rpc(new).status()["validator_info"]["voting_power"]) == 10,
        30,
        "the new hospital to become a validator",
    )

    # ...and signs blocks.
    def signs() -> bool:
        block = net.rpc(net.orgs[0]).block()["block"]
        return any(s.get("validator_address") == me for s in block["last_commit"]["signatures"])

    wait_until(signs, 30, "a commit signed by the new validator")
    net.assert_same_state(net.orgs)


def test_a_stranger_node_gets_no_peer(cmt_net: CmtNet, tmp_path: Path) -> None:
    """A node no member record names (a stranger that learnt the p2p addresses, or a removed
    member's machine) dials every member with the consortium's genesis: each completes
    CometBFT's handshake, asks its app `/p2p/filter/id/<id>`, and drops it."""
    import subprocess

    from medledger.host.ports import free_ports

    net = cmt_net
    members = testnet.consortium_addresses(net.dir)
    home = tmp_path / "stranger"
    subprocess.run([testnet.cometbft_binary(), "init", "--home", str(home)], check=True)
    first = testnet.cometbft_home(net.dir, net.orgs[0])
    settings = testnet.node_settings(
        "stranger",
        free_ports(4),
        [a.peer for a in members.values()],
        testnet.block_time_ms(first),
    )
    settings[""]["log_level"] = "p2p:info,*:error"
    settings[""]["filter_peers"] = False  # its own app lets everyone in: the members decide
    config = home / "config" / "config.toml"
    config.write_text(testnet.set_config(config.read_text(), settings))
    (home / "config" / "genesis.json").write_text((first / "config" / "genesis.json").read_text())
    stranger = testnet.node_id(home)
    log = tmp_path / "stranger.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [testnet.cometbft_binary(), "start", "--home", str(home), "--proxy_app=kvstore"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Each member took the connection and the handshake, then dropped it.
        wait_until(
            lambda: all(
                f"{a.node_id}@" in line
                for a in members.values()
                for line in [_dropped(log.read_text())]
            ),
            60,
            "every member to drop the stranger after its handshake",
        )
        for org in members:
            peers = {p["node_info"]["id"] for p in net.rpc(org).net_info()["peers"]}
            assert stranger not in peers, f"{org} peers with the stranger"
            assert {a.node_id for o, a in members.items() if o != org} <= peers
    finally:
        proc.kill()
        proc.wait()


def _dropped(log: str) -> str:
    """The stranger's log lines that say a peer connection was stopped or redialled."""
    words = ("Stopping peer for error", "Reconnecting to peer", "Error reconnecting")
    return "\n".join(line for line in log.splitlines() if any(w in line for w in words))


@pytest.mark.parametrize("step", ["after-commit", "before-submit"])
def test_an_ingestion_killed_mid_registration_loses_nothing(
    cmt_net: CmtNet, tmp_path: Path, step: str
) -> None:
    """Against the live network: the child's tx goes through CometBFT's mempool and blocks."""
    from medledger.node.config import load_config
    from medledger.node.registrations import reconcile
    from medledger.vault import Vault
    from tests.support.ingest import _bundle, _crash_while_ingesting

    org = cmt_net.orgs[0]
    home = cmt_net.home(org)
    _crash_while_ingesting(home, _bundle(tmp_path), step)
    with cmt_net.engine(org) as engine, Vault.open(load_config(home).vault_config()) as vault:
        [unit] = vault.provisional()
        report = reconcile(engine, vault, min_age_s=0, wait_s=30)
        assert report.confirmed == [unit.unit], report.summary()
        pids = {vault.info(rid).pid for rid, _ in unit.records}
        registered = {
            e["rid"] for pid in pids for e in engine.query("records/of_patient", {"pid": pid})
        }
        assert {rid for rid, _ in unit.records} <= registered
