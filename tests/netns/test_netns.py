"""Four hospitals on four hosts (network namespaces), a fifth joining from its own.

Each hospital runs in its own namespace with its own address on a bridge (harness.py) on
CometBFT. The four founders each make their keys at home, the genesis is made from their four
join requests, and each configures itself from it (`consortium genesis`, `join --genesis`).
The fifth is admitted by the join flow (request -> admit vote -> `medledger join --from` ->
block sync -> `set_power` vote), then consent, exchange and a referral cross the
bridge, and a member removed by vote is refused by the others. Skipped where namespaces
cannot be made (not root, no `ip`); everything it made is removed even when it fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medledger.node.config import load_config
from tests.netns.harness import NEW, NEW_NAME, ORGS, Consortium, Netns, address, wait, why_not

REASON = why_not()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces: {REASON}"),
    pytest.mark.cometbft,
    pytest.mark.timeout(600),
]


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    with Netns(logs=tmp_path / "logs") as net:
        c = Consortium.create(net, tmp_path / "net", tmp_path / "nantes")
        try:
            c.start_founders()
            yield c
        finally:
            c.stop_all()


def vote_through(c: Consortium, output: str, voters: list[str]) -> None:
    """Members vote for the proposal `output` announced until it is executed."""
    found = re.search(r"proposal (\d+) created", output)
    assert found, output
    for voter in voters:
        said = c.medledger(voter, "member", "vote", "--home", str(c.home(voter)), found[1])
        if "executed" in said:
            return
    raise AssertionError(f"proposal {found[1]} did not pass")


def _keygen(c: Consortium) -> dict[str, Any]:
    """The new hospital makes its keys at home, on its own host (a folder no other hospital
    reads), and writes the request it hands the members."""
    host = address(c.n[NEW])
    c.medledger(
        NEW, "hospital", "keygen", "--home", str(c.home(NEW)), "--org", NEW, "--name", NEW_NAME,
        "--address", f"gateway={host}:7004", "--address", f"api={host}:7009",
        "--address", f"p2p={host}:26656",
    )  # fmt: skip
    request: dict[str, Any] = json.loads((c.home(NEW) / "join-request.json").read_text())
    assert request["addresses"]["p2p"].endswith(f"@{host}:26656")  # its node id in front
    return request


def test_a_hospital_joins_from_its_own_host_and_works_across_hosts(consortium: Consortium) -> None:
    c = consortium
    lyon, paris, bordeaux, lille = ORGS
    wait(lambda: c.height(lyon) >= 3, 90, "blocks on four hosts")

    # -- the fifth hospital: request, admission vote, join --from, block sync, power -------
    request = _keygen(c)
    said = c.medledger(
        lyon, "member", "propose", "admit", "--home", str(c.home(lyon)),
        "--request", str(c.home(NEW) / "join-request.json"), "--power", "0",
    )  # fmt: skip
    vote_through(c, said, [paris, bordeaux, lille])
    assert NEW in c.act(lyon, "members")["members"]

    genesis_hash = load_config(c.home(lyon)).genesis().hash().hex()
    assert genesis_hash == c.genesis_hash  # the hash `consortium genesis` printed
    gateway = load_config(c.home(lyon)).exchange.listen
    said = c.medledger(
        NEW, "join", "--home", str(c.home(NEW)), "--from", f"https://{gateway}",
        "--genesis-hash", genesis_hash,
    )  # fmt: skip
    assert f"genesis hash {genesis_hash} checked" in said
    assert "pseudonym key: not yet" in said  # pinned from its synced chain, not the genesis
    joined = load_config(c.home(NEW))
    assert joined.exchange.listen == request["addresses"]["gateway"]
    assert all("127.0.0.1" not in url for url in joined.exchange.peers.values())
    c.start(NEW)
    target = c.height(lyon)
    wait(lambda: c.height(NEW) >= target, 120, "the new hospital's block sync")
    join_again = ("join", "--home", str(c.home(NEW)), "--from", f"https://{gateway}")
    wait(
        lambda: "pseudonym key received" in c.medledger(NEW, *join_again),
        60,
        "the pseudonym key, once the new hospital's node has caught up",
        every=1,
    )

    said = c.medledger(
        lyon, "member", "propose", "power", "--home", str(c.home(lyon)), "--org", NEW,
        "--power", "10",
    )  # fmt: skip
    vote_through(c, said, [paris, bordeaux, lille, NEW])
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
    vote_through(c, said, [paris, bordeaux, NEW])
    assert lille not in c.act(lyon, "members")["members"]
    refused = c.act(lille, "health", org=lyon)
    assert refused["status"] == 0, refused  # no HTTP answer at all: the handshake failed
    assert c.act(paris, "health", org=lyon)["status"] == 200  # the members still get in
