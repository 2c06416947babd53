"""`configure_from` on CometBFT: a keygen'd home configured from a member's bootstrap answer
(the answer as the gateway builds it, without a network; tests/netns runs the whole flow)."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from medledger.ledger.genesis import Genesis
from medledger.node.config import load_config
from medledger.provisioning import create_consortium, keygen
from medledger.provisioning import join as joining

from .conftest import requires_cometbft

pytestmark = requires_cometbft


def _bootstrap(directory: Path) -> dict[str, Any]:
    """What chu-lyon's gateway answers (exchange/bootstrap.py), from its files."""
    genesis = Genesis.load(directory / "genesis.json")
    cmt = directory / "hospitals" / "chu-lyon" / "cometbft" / "config" / "genesis.json"
    return {
        "org": "chu-lyon",
        "genesis": json.loads((directory / "genesis.json").read_text()),
        "genesis_hash": genesis.hash().hex(),
        "chain_id": genesis.chain_id,
        "engine": genesis.engine,
        "block_time_ms": 500,
        "members": [
            {"org": m.org, "name": m.name, "addresses": m.addresses, "tls_key": m.tls_key.hex()}
            for m in genesis.members
        ],
        "cometbft": {
            "genesis": json.loads(cmt.read_text()),
            "persistent_peers": [m.addresses["p2p"] for m in genesis.members],
        },
    }


def test_a_keygen_home_is_configured_from_a_members_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "net"
    create_consortium(
        directory,
        2,
        engine="cometbft",
        chain_id="medledger-join",
        block_time_ms=500,
        genesis_time_ms=int(time.time() * 1000),
        hosts=["10.231.0.11", "10.231.0.12"],
    )
    answer = _bootstrap(directory)
    monkeypatch.setattr(joining, "fetch_bootstrap", lambda url: answer)
    home = tmp_path / "nantes"  # on its own machine
    addresses = {"gateway": "10.231.0.15:7004", "api": "10.231.0.15:7009"}
    request = keygen(home, "chu-nantes", "CHU de Nantes", {**addresses, "p2p": "10.231.0.15:26656"})

    config = joining.configure_from(
        home, "https://10.231.0.11:7004", genesis_hash=answer["genesis_hash"]
    )

    assert config.exchange.listen == "10.231.0.15:7004" and config.api.listen == "10.231.0.15:7009"
    assert config.exchange.peers["chu-lyon"].startswith("https://10.231.0.11:")
    assert config.genesis().hash().hex() == answer["genesis_hash"]
    toml = tomllib.loads((home / "cometbft" / "config" / "config.toml").read_text())
    assert toml["p2p"]["laddr"] == "tcp://10.231.0.15:26656"
    assert toml["p2p"]["external_address"] == "10.231.0.15:26656"
    assert toml["p2p"]["persistent_peers"] == ",".join(answer["cometbft"]["persistent_peers"])
    assert toml["rpc"]["laddr"].startswith("tcp://127.0.0.1:")  # RPC and ABCI stay local
    assert toml["proxy_app"].startswith("tcp://127.0.0.1:")
    cmt_genesis = json.loads((home / "cometbft" / "config" / "genesis.json").read_text())
    assert cmt_genesis == answer["cometbft"]["genesis"]
    # The keys keygen made are the ones the node runs with (the request named them).
    assert config.cometbft.node_id is not None
    assert request.addresses["p2p"] == f"{config.cometbft.node_id}@10.231.0.15:26656"
    # Run again (say, after the vote): the same ports, nothing else moves.
    again = joining.configure_from(home, "https://10.231.0.11:7004", genesis_hash=None)
    assert again.cometbft == config.cometbft

    # Behind a NAT: every interface, the request's addresses still those dialled.
    nat = joining.configure_from(home, "https://x:1", genesis_hash=None, listen_all=True)
    assert nat.exchange.listen == "0.0.0.0:7004"
    toml = tomllib.loads((home / "cometbft" / "config" / "config.toml").read_text())
    assert toml["p2p"]["laddr"] == "tcp://0.0.0.0:26656"
    assert toml["p2p"]["external_address"] == "10.231.0.15:26656"
    assert load_config(home).exchange.peers["chu-nantes"] == "https://10.231.0.15:7004"


def test_a_joiner_takes_the_sponsors_timeout_commit_from_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network configured before session 11 kept timeout_commit at the block time (1 s),
    and nothing rewrote it on upgrade. The sponsor's answer says its own (exchange/bootstrap),
    and the joiner runs with it, not with what the block time gives today (600 ms): the
    network's nodes agree (review 11a, finding 5). Without the field (an older sponsor), the
    block time's rule; a value out of range is refused, writing nothing."""
    from types import SimpleNamespace

    from medledger.consensus.cometbft import testnet
    from medledger.exchange import bootstrap

    directory = tmp_path / "net"
    create_consortium(
        directory,
        2,
        engine="cometbft",
        chain_id="medledger-join",
        block_time_ms=1000,
        genesis_time_ms=int(time.time() * 1000),
        hosts=["10.231.0.11", "10.231.0.12"],
    )
    lyon = directory / "hospitals" / "chu-lyon"
    testnet._configure(lyon / "cometbft", {"consensus": {"timeout_commit": "1s"}})  # as then
    answer = {**_bootstrap(directory), "block_time_ms": 1000}
    sponsor = SimpleNamespace(config=load_config(lyon))
    answer["cometbft"] = bootstrap._cometbft(sponsor, answer["members"])  # type: ignore[arg-type]
    assert answer["cometbft"]["timeout_commit_ms"] == 1000
    monkeypatch.setattr(joining, "fetch_bootstrap", lambda url: answer)
    home = tmp_path / "nantes"
    keygen(home, "chu-nantes", "CHU de Nantes", {"gateway": "10.231.0.15:7004"})

    joining.configure_from(home, "https://10.231.0.11:7004", genesis_hash=None)
    assert testnet.timeout_commit_of(home / "cometbft") == 1000

    del answer["cometbft"]["timeout_commit_ms"]  # a sponsor older than the field
    joining.configure_from(home, "https://10.231.0.11:7004", genesis_hash=None)
    assert testnet.timeout_commit_of(home / "cometbft") == testnet.timeout_commit_ms(1000)

    answer["cometbft"]["timeout_commit_ms"] = "1s"
    other = tmp_path / "brest"
    keygen(other, "chu-brest", "CHU de Brest", {"gateway": "10.231.0.16:7004"})
    with pytest.raises(joining.JoinError, match=r"cometbft.timeout_commit_ms: '1s' is not"):
        joining.configure_from(other, "https://10.231.0.11:7004", genesis_hash=None)
    assert not (other / "consortium").exists() and not (other / "config.json").exists()
