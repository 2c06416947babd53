"""A hospital joining from afar: the bootstrap answer, the pseudonym key's release, and
`configure_from`'s refusals (the whole flow across machines is tests/netns)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey, SealedBox

from medledger.exchange.bootstrap import NotAMember, sealed_pseudonym_key
from medledger.exchange.client import ExchangeError
from medledger.ledger.genesis import Genesis
from medledger.provisioning import create_consortium
from medledger.provisioning.join import (
    JoinError,
    NotSynced,
    configure_from,
    fetch_bootstrap,
    fetch_pseudonym_key,
    p2p_warning,
    synced_tls_key,
)
from tests.exchange.conftest import A, B, C, Sandbox


def test_bootstrap_needs_no_certificate_and_holds_no_secret(sandbox: Sandbox) -> None:
    answer = fetch_bootstrap(sandbox.x(A).url)  # no client certificate, no trust anchor
    genesis = Genesis.load(sandbox.h[A].node.config.genesis_path)
    assert answer["genesis_hash"] == genesis.hash().hex()
    assert answer["org"] == A and answer["engine"] == "solo" and answer["cometbft"] is None
    gateways = {m["org"]: m["addresses"]["gateway"] for m in answer["members"]}
    assert set(gateways) == {A, B, C}
    assert gateways[A].startswith("127.0.0.1:")
    text = json.dumps(answer)
    assert sandbox.h[A].node.config.pseudonym_key().hex() not in text
    assert sandbox.h[A].node.config.box_key().hex() not in text


def test_the_pseudonym_key_comes_sealed_to_the_callers_box_key(sandbox: Sandbox) -> None:
    answer, _ = sandbox.x(B).client.post(A, "pseudonym-key", {})
    assert answer["org"] == B
    sealed = base64.b64decode(answer["sealed"])
    opened = SealedBox(PrivateKey(sandbox.h[B].node.config.box_key())).decrypt(sealed)
    assert opened == sandbox.h[A].node.config.pseudonym_key()
    # Another hospital's box key does not open it.
    with pytest.raises(Exception, match="[Dd]ecrypt"):
        SealedBox(PrivateKey(sandbox.h[C].node.config.box_key())).decrypt(sealed)


def test_the_pseudonym_key_is_only_for_members(sandbox: Sandbox) -> None:
    with pytest.raises(NotAMember, match="not a member"):
        sealed_pseudonym_key(sandbox.h[A].node, "chu-stranger")
    # Without a client certificate the endpoint is not reached at all.
    bare = httpx.Client(verify=False, timeout=5)
    with bare:
        refused = bare.post(sandbox.x(A).url + "/exchange/v1/pseudonym-key", content=b"{}")
    assert refused.status_code == 403


def test_join_fetches_the_pseudonym_key_from_the_member_its_own_replica_pins(
    sandbox: Sandbox,
) -> None:
    """The member's gateway is pinned to its TLS key in the asking home's replica (the rotated
    key case: tests/review6/test_tls_and_streams.py)."""
    config_b = sandbox.h[B].node.config
    members = sandbox.root.engine.query("governance/members", {})
    assert synced_tls_key(config_b, A) == {m["org"]: m["tls_key"] for m in members}[A]
    key = fetch_pseudonym_key(config_b, sandbox.x(A).url)
    assert key == sandbox.h[A].node.config.pseudonym_key()
    with pytest.raises(JoinError, match="chu-stranger is not a member"):
        synced_tls_key(config_b, "chu-stranger")


def test_a_home_that_has_not_synced_is_told_to_sync_before_the_pseudonym_key(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Nothing is pinned from the genesis: without a replica, or while CometBFT is down or
    catching up, `join` says to start the node and come back; no key is fetched or written."""
    fresh = sandbox.h[B].node.config.model_copy(update={"home": tmp_path, "engine": "cometbft"})
    with pytest.raises(NotSynced, match="no replica of the chain yet"):
        fetch_pseudonym_key(fresh, sandbox.x(A).url)
    fresh.ledger_db.write_bytes(b"")  # a replica, but no CometBFT answering for it
    down = fresh.model_copy(
        update={"cometbft": fresh.cometbft.model_copy(update={"rpc": "http://127.0.0.1:9"})}
    )
    with pytest.raises(NotSynced, match="run this again once it has caught up"):
        fetch_pseudonym_key(down, sandbox.x(A).url)
    assert not (tmp_path / "keys" / "pseudonym.key").exists()


def test_join_warns_when_the_chain_names_another_p2p_node_than_this_homes(
    sandbox: Sandbox,
) -> None:
    """The members' CometBFTs peer only with the node ids on the chain: a home whose node key
    is not the one its record names (a new machine, no `member update --address p2p=`) is told,
    not left to find out from a node that never syncs."""
    config = sandbox.h[B].node.config
    mine = config.model_copy(
        update={"cometbft": config.cometbft.model_copy(update={"node_id": "a" * 40})}
    )

    def record(node_id: str) -> dict[str, Any]:
        return {"org": B, "addresses": {"p2p": f"{node_id}@10.0.0.6:26656"}}

    assert "the members' nodes will refuse it" in p2p_warning(mine, {"members": [record("b" * 40)]})
    assert p2p_warning(mine, {"members": [record("a" * 40)]}) == ""
    assert "not a member yet" in p2p_warning(mine, {"members": []})


def test_the_pseudonym_key_endpoint_refuses_a_bad_body(sandbox: Sandbox) -> None:
    with pytest.raises(ExchangeError) as refused:
        sandbox.x(B).client.post(A, "pseudonym-key", [])  # type: ignore[arg-type]
    assert refused.value.status == 400


def _request(home: Path) -> None:
    home.mkdir()
    request = {
        "org": "chu-nantes",
        "name": "CHU de Nantes",
        "addresses": {"gateway": "10.231.0.15:7004", "p2p": "10.231.0.15:26656"},
    }
    (home / "join-request.json").write_text(json.dumps(request))


def test_configure_from_refuses_a_genesis_not_the_one_given(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    home = tmp_path / "nantes"
    _request(home)
    with pytest.raises(JoinError, match="not the consortium you were given"):
        configure_from(home, sandbox.x(A).url, genesis_hash="00" * 32)
    assert sorted(p.name for p in home.iterdir()) == ["join-request.json"]  # nothing written


def test_joining_a_solo_consortium_needs_its_sandbox_folder_on_this_machine(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    home = tmp_path / "nantes"
    _request(home)
    url = sandbox.x(A).url
    genesis_hash = fetch_bootstrap(url)["genesis_hash"]
    with pytest.raises(JoinError, match="give --sandbox DIR"):
        configure_from(home, url, genesis_hash=genesis_hash)
    create_consortium(tmp_path / "other", 1, genesis_time_ms=1)
    with pytest.raises(JoinError, match="another consortium"):
        configure_from(home, url, genesis_hash=genesis_hash, sandbox=tmp_path / "other")
    assert sorted(p.name for p in home.iterdir()) == ["join-request.json"]  # nothing written

    config = configure_from(home, url, genesis_hash=genesis_hash, sandbox=sandbox.dir)
    # The sandbox's ledger, its members as peers, the request's address: no CometBFT.
    assert config.engine == "solo" and config.ledger_db == sandbox.root.config.ledger_db
    assert set(config.exchange.peers) == {A, B, C, "chu-nantes"}
    assert config.exchange.listen == "10.231.0.15:7004"
    assert not (home / "cometbft").exists()


def test_configure_from_needs_a_keygen_home_and_an_https_member(tmp_path: Path) -> None:
    with pytest.raises(JoinError, match="hospital keygen"):
        configure_from(tmp_path, "https://127.0.0.1:1", genesis_hash=None)
    _request(tmp_path / "h")
    with pytest.raises(JoinError, match="https://host:port"):
        configure_from(tmp_path / "h", "http://127.0.0.1:1", genesis_hash=None)


def test_init_puts_each_hospital_on_its_host(tmp_path: Path) -> None:
    from medledger.node.config import load_config
    from medledger.provisioning import create_consortium

    hosts = ["10.231.0.11", "10.231.0.12"]
    homes = create_consortium(tmp_path / "net", 2, genesis_time_ms=0, hosts=hosts)
    for home, host in zip(homes, hosts, strict=True):
        config = load_config(home)
        assert config.exchange.listen is not None and config.exchange.listen.startswith(host)
        assert config.api.listen.startswith(f"{host}:")
    # The genesis names each member's gateway on its host (where the others find it).
    genesis = Genesis.load(tmp_path / "net" / "genesis.json")
    assert [m.addresses["gateway"].split(":")[0] for m in genesis.members] == hosts
    peers = load_config(homes[0]).exchange.peers
    assert sorted(peers.values()) == sorted(
        f"https://{h}:{load_config(home).gateway_address[1]}"
        for h, home in zip(hosts, homes, strict=True)
    )
