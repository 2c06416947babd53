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
