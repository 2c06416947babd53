"""Four hospitals on four hosts (network namespaces), a fifth joining from its own.

Each hospital runs in its own namespace with its own address on a bridge (harness.py) on
CometBFT; the fifth is admitted by the join flow (request -> admit vote -> `medledger join
--from` -> block sync -> `set_power` vote), then consent, exchange and a referral cross the
bridge, and a member removed by vote is refused by the others. Skipped where namespaces
cannot be made (not root, no `ip`); everything it made is removed even when it fails.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medledger.consensus.cometbft.testnet import cometbft_binary
from medledger.ledger.genesis import Genesis
from medledger.node.config import load_config
from medledger.provisioning import add_hospital, create_consortium
from tests.netns.harness import Netns, address, wait, why_not

REASON = why_not()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces: {REASON}"),
    pytest.mark.cometbft,
    pytest.mark.timeout(600),
]

ORGS = ["chu-lyon", "aphp-paris", "chu-bordeaux", "chu-lille"]
NEW, NEW_NAME = "chu-nantes", "CHU de Nantes"
ROOT = Path(__file__).resolve().parents[2]


class Consortium:
    """The hospitals' homes, and how to act as each of them inside its namespace."""

    def __init__(self, net: Netns, directory: Path) -> None:
        self.net = net
        self.directory = directory
        self.n = {org: i + 1 for i, org in enumerate([*ORGS, NEW])}
        self.running: dict[str, list[Any]] = {}

    def home(self, org: str) -> Path:
        return self.directory / "hospitals" / org

    def medledger(self, org: str, *args: str, ok: bool = True) -> str:
        result = self.net.run(self.n[org], sys.executable, "-m", "medledger.cli", *args)
        if ok:
            assert result.returncode == 0, f"medledger {args[0]}: {result.stderr}{result.stdout}"
        return result.stdout + result.stderr

    def act(self, who: str, action: str, **args: Any) -> dict[str, Any]:
        """`tests/netns/act.py ACTION` as hospital `who`, in its namespace."""
        argv = [f"--{k}={v}" for k, v in args.items()]
        cmd = [sys.executable, "-m", "tests.netns.act", action, "--home", str(self.home(who))]
        result = self.net.run(self.n[who], *cmd, *argv)
        assert result.returncode == 0, f"{who} {action}: {result.stderr[-2000:]}"
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    def start(self, org: str) -> None:
        """The node (replica, gateway, API), then its CometBFT once the replica serves ABCI."""
        n, home = self.n[org], self.home(org)
        log = self.net.logs / f"{org}.node.log"
        log.unlink(missing_ok=True)
        node = self.net.spawn(
            n, f"{org}.node", sys.executable, "-m", "medledger.cli", "node", "run",
            "--home", str(home),
        )  # fmt: skip
        wait(lambda: "serving ABCI" in log.read_text(), 60, f"{org}'s replica")
        cmt = self.net.spawn(
            n, f"{org}.cometbft", cometbft_binary(), "start", "--home", str(home / "cometbft")
        )
        self.running[org] = [cmt, node]

    def stop(self, org: str) -> None:
        for proc in self.running.pop(org, []):
            self.net.stop(proc)

    def height(self, org: str) -> int:
        return int(self.act(org, "height")["height"])

    def vote_through(self, proposer: str, output: str, voters: list[str]) -> None:
        """Members vote for the proposal `output` announced until it is executed."""
        found = re.search(r"proposal (\d+) created", output)
        assert found, output
        for voter in voters:
            said = self.medledger(voter, "member", "vote", "--home", str(self.home(voter)), found[1])
            if "executed" in said:
                return
        raise AssertionError(f"proposal {found[1]} of {proposer} did not pass")


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    with Netns(logs=tmp_path / "logs") as net:
        directory = tmp_path / "net"
        create_consortium(
            directory,
            len(ORGS),
            engine="cometbft",
            chain_id="medledger-netns",
            block_time_ms=500,
            genesis_time_ms=int(time.time() * 1000),
            hosts=[address(i + 1) for i in range(len(ORGS))],
        )
        c = Consortium(net, directory)
        try:
            for org in ORGS:
                c.start(org)
            yield c
        finally:
            for org in list(c.running):
                c.stop(org)


def _join_request(c: Consortium) -> dict[str, Any]:
    """A home for the new hospital on its own host, and the request it hands the members."""
    joining = add_hospital(c.directory, NEW, NEW_NAME)
    config = load_config(joining.home)
    node_id = config.cometbft.node_id
    host = address(c.n[NEW])
    request = {
        "org": NEW,
        "name": NEW_NAME,
        "key": joining.key.hex(),
        "box_key": joining.box_key.hex(),
        "validator_key": joining.validator_key.hex(),
        "addresses": {
            "gateway": f"{host}:7004",
            "api": f"{host}:7009",
            "p2p": f"{node_id}@{host}:26656",
        },
    }
    (joining.home / "join-request.json").write_text(json.dumps(request))
    # Its home knows nothing of the consortium yet but what `join` will fetch.
    for name in ("config.json", "keys/pseudonym.key"):
        (joining.home / name).unlink()
    return request


def test_a_hospital_joins_from_its_own_host_and_works_across_hosts(consortium: Consortium) -> None:
    c = consortium
    lyon, paris, bordeaux, lille = ORGS
    wait(lambda: c.height(lyon) >= 3, 90, "blocks on four hosts")

    # -- the fifth hospital: request, admission vote, join --from, block sync, power -------
    request = _join_request(c)
    said = c.medledger(
        lyon, "member", "propose", "admit", "--home", str(c.home(lyon)), "--org", NEW,
        "--name", NEW_NAME, "--key", request["key"], "--box-key", request["box_key"],
        "--validator-key", request["validator_key"], "--power", "0",
    )  # fmt: skip
    c.vote_through(lyon, said, [paris, bordeaux, lille])
    assert NEW in c.act(lyon, "members")["members"]

    genesis_hash = Genesis.load(c.directory / "genesis.json").hash().hex()
    gateway = load_config(c.home(lyon)).exchange.listen
    said = c.medledger(
        NEW, "join", "--home", str(c.home(NEW)), "--from", f"https://{gateway}",
        "--genesis-hash", genesis_hash,
    )  # fmt: skip
    assert f"genesis hash {genesis_hash} checked" in said
    assert "pseudonym key received" in said
    joined = load_config(c.home(NEW))
    assert joined.exchange.listen == request["addresses"]["gateway"]
    assert all("127.0.0.1" not in url for url in joined.exchange.peers.values())
    c.start(NEW)
    target = c.height(lyon)
    wait(lambda: c.height(NEW) >= target, 120, "the new hospital's block sync")

    said = c.medledger(
        lyon, "member", "propose", "power", "--home", str(c.home(lyon)), "--org", NEW,
        "--power", "10",
    )  # fmt: skip
    c.vote_through(lyon, said, [paris, bordeaux, lille, NEW])
    assert c.act(NEW, "members")["members"][NEW] == 10
    before = c.height(NEW)
    wait(lambda: c.height(lyon) >= before + 3, 60, "blocks with five validators")

    # -- consent and exchange across hosts -------------------------------------------------
    patient = c.act(lyon, "ingest", seed=11)
    pid = patient["pid"]
    consent = c.act(lyon, "consent", pid=pid, org=NEW)["consent"]
    fetched = c.act(NEW, "fetch", org=lyon, pid=pid)
    assert fetched["entries"] > 0
    assert set(fetched["records"]) <= set(patient["rids"]) and fetched["records"]

    # -- a referral from Lyon (10.231.0.11) to Nantes (10.231.0.15) ------------------------
    referral = c.act(lyon, "refer", pid=pid, org=NEW, consent=consent)["referral"]
    c.act(NEW, "admit", referral=referral)
    wait(
        lambda: c.act(NEW, "status", referral=referral)["status"] == "confirmed",
        90,
        "the referral's file delivered and confirmed across hosts",
    )

    # -- a member removed by vote is refused at the TLS handshake --------------------------
    assert c.act(lille, "health", org=lyon)["status"] == 200
    said = c.medledger(
        lyon, "member", "propose", "remove", "--home", str(c.home(lyon)), "--org", lille
    )
    c.vote_through(lyon, said, [paris, bordeaux, NEW])
    assert lille not in c.act(lyon, "members")["members"]
    refused = c.act(lille, "health", org=lyon)
    assert refused["status"] == 0 and "SSL" in refused["error"], refused
