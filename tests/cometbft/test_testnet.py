"""CometBFT homes, config and genesis as `medledger init --engine cometbft` makes them."""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from medledger.consensus.cometbft import testnet

from .conftest import requires_cometbft

pytestmark = requires_cometbft

ORGS = ["chu-lyon", "aphp-paris", "chu-bordeaux", "chu-lille"]


def _config(d: Path, org: str) -> dict[str, object]:
    path = testnet.cometbft_home(d, org) / "config" / "config.toml"
    return tomllib.loads(path.read_text())


def test_prepare_makes_one_tuned_home_per_hospital(tmp_path: Path) -> None:
    keys = testnet.prepare(tmp_path, ORGS, 250, "medledger-t")
    assert list(keys) == ORGS and all(len(k) == 32 for k in keys.values())
    assert len(set(keys.values())) == 4
    ports: list[int] = []
    for org in ORGS:
        cfg = _config(tmp_path, org)
        cmt = testnet.cometbft_home(tmp_path, org)
        assert cfg["moniker"] == org
        # 250 ms between blocks: half of it waited after a decision, the round takes the rest
        assert cfg["consensus"]["timeout_commit"] == "125ms"  # type: ignore[index]
        assert cfg["p2p"]["addr_book_strict"] is False  # type: ignore[index]
        assert cfg["p2p"]["allow_duplicate_ip"] is True  # type: ignore[index]
        assert cfg["instrumentation"]["prometheus"] is False  # type: ignore[index]
        # No recheck: PrepareProposal drops what a block made invalid (test_abci_server).
        assert cfg["mempool"]["recheck"] is False  # type: ignore[index]
        for addr in (cfg["proxy_app"], cfg["rpc"]["laddr"], cfg["p2p"]["laddr"]):  # type: ignore[index]
            assert str(addr).startswith("tcp://127.0.0.1:")
            ports.append(int(str(addr).rsplit(":", 1)[1]))
        peers = str(cfg["p2p"]["persistent_peers"]).split(",")  # type: ignore[index]
        others = {testnet.node_id(testnet.cometbft_home(tmp_path, o)) for o in ORGS if o != org}
        assert {p.split("@")[0] for p in peers} == others
        # Our node id and validator key are what CometBFT itself reports.
        shown = subprocess.run(
            [testnet.cometbft_binary(), "show-node-id", "--home", str(cmt)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert shown == testnet.node_id(cmt)
        validator = json.loads(
            subprocess.run(
                [testnet.cometbft_binary(), "show-validator", "--home", str(cmt)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        import base64

        assert base64.b64decode(validator["value"]) == keys[org]
        section = json.loads((testnet.hospital_home(tmp_path, org) / "config.json").read_text())
        assert section["cometbft"]["rpc"].startswith("http://127.0.0.1:")
    assert len(set(ports)) == len(ports) == 12


def test_base_port_gives_predictable_ports(tmp_path: Path) -> None:
    testnet.prepare(tmp_path, ORGS[:2], 1000, "medledger-t", base_port=36000)
    a = testnet.node_addresses(testnet.cometbft_home(tmp_path, ORGS[1]))
    assert (a.p2p, a.rpc_url, a.abci) == (
        "127.0.0.1:36010",
        "http://127.0.0.1:36011",
        "tcp://127.0.0.1:36012",
    )


def test_prepare_is_rerunnable_and_keeps_keys(tmp_path: Path) -> None:
    first = testnet.prepare(tmp_path, ORGS[:2], 1000, "medledger-t")
    again = testnet.prepare(tmp_path, ORGS[:2], 500, "medledger-t")
    assert first == again
    assert _config(tmp_path, ORGS[0])["consensus"]["timeout_commit"] == "250ms"  # type: ignore[index]


def test_write_genesis_is_identical_everywhere(tmp_path: Path) -> None:
    keys = testnet.prepare(tmp_path, ORGS, 1000, "medledger-t")
    t = 1_790_000_000_123
    testnet.write_genesis(tmp_path, "medledger-t", t, [(o, keys[o], 10) for o in ORGS])
    texts = {
        (testnet.cometbft_home(tmp_path, o) / "config" / "genesis.json").read_text() for o in ORGS
    }
    assert len(texts) == 1
    doc = json.loads(texts.pop())
    assert doc["chain_id"] == "medledger-t"
    assert doc["genesis_time"] == "2026-09-21T14:13:20.123Z"
    assert doc["initial_height"] == "1"
    assert [v["name"] for v in doc["validators"]] == ORGS
    assert doc["validators"][0]["address"] == testnet.validator_address(keys[ORGS[0]])
    assert doc["consensus_params"]["abci"]["vote_extensions_enable_height"] == "0"


def test_genesis_needs_a_validator(tmp_path: Path) -> None:
    testnet.prepare(tmp_path, ORGS[:1], 1000, "medledger-t")
    with pytest.raises(testnet.TestnetError):
        testnet.write_genesis(tmp_path, "x", int(time.time() * 1000), [("chu-lyon", b"", 0)])


def test_add_hospital_joins_the_peers_and_copies_genesis(tmp_path: Path) -> None:
    keys = testnet.prepare(tmp_path, ORGS, 1000, "medledger-t")
    testnet.write_genesis(tmp_path, "medledger-t", 1, [(o, keys[o], 10) for o in ORGS])
    key = testnet.add_hospital(tmp_path, "chu-nantes")
    assert len(key) == 32 and key not in keys.values()
    new = testnet.cometbft_home(tmp_path, "chu-nantes")
    genesis = lambda home: (home / "config" / "genesis.json").read_text()  # noqa: E731
    assert genesis(new) == genesis(testnet.cometbft_home(tmp_path, ORGS[0]))
    assert len(str(_config(tmp_path, "chu-nantes")["p2p"]["persistent_peers"]).split(",")) == 4  # type: ignore[index]
    new_id = testnet.node_id(new)
    for org in ORGS:
        assert new_id in str(_config(tmp_path, org)["p2p"]["persistent_peers"])  # type: ignore[index]
    assert testnet.list_hospitals(tmp_path)[-1] == "chu-nantes"
    ports = [
        int(a.rsplit(":", 1)[1])
        for addr in testnet.consortium_addresses(tmp_path).values()
        for a in (addr.p2p, addr.rpc_url, addr.abci)
    ]
    assert len(set(ports)) == 15
    # the newcomer waits as long after a decision as the others do
    assert _config(tmp_path, "chu-nantes")["consensus"]["timeout_commit"] == "600ms"  # type: ignore[index]


@pytest.mark.parametrize(
    ("block_time_ms", "timeout_ms"), [(1000, 600), (5000, 4600), (800, 400), (500, 250)]
)
def test_the_block_time_is_the_interval_and_the_round_comes_out_of_it(
    block_time_ms: int, timeout_ms: int
) -> None:
    """CometBFT waits timeout_commit after a decision, then runs a round: the configured block
    time is what users see between blocks, so timeout_commit leaves the round room."""
    assert testnet.timeout_commit_ms(block_time_ms) == timeout_ms
    assert testnet.block_time_from_timeout_ms(timeout_ms) == block_time_ms


def test_set_config_refuses_unknown_keys() -> None:
    with pytest.raises(testnet.TestnetError):
        testnet.set_config("[p2p]\nladdr = 1\n", {"p2p": {"no_such_key": 1}})


def test_hospitals_on_their_own_hosts_listen_and_dial_there(tmp_path: Path) -> None:
    hosts = {"chu-lyon": "10.231.0.11", "aphp-paris": "10.231.0.12"}
    testnet.prepare(tmp_path, list(hosts), 1000, "medledger-t", hosts=hosts)
    lyon = _config(tmp_path, "chu-lyon")
    assert lyon["p2p"]["laddr"].startswith("tcp://10.231.0.11:")  # type: ignore[index]
    assert lyon["p2p"]["external_address"].startswith("10.231.0.11:")  # type: ignore[index]
    assert "@10.231.0.12:" in lyon["p2p"]["persistent_peers"]  # type: ignore[index]
    assert lyon["rpc"]["laddr"].startswith("tcp://127.0.0.1:")  # type: ignore[index]
    assert str(lyon["proxy_app"]).startswith("tcp://127.0.0.1:")
    # Private addresses, which CometBFT's strict address book would refuse; one IP each.
    assert lyon["p2p"]["addr_book_strict"] is False  # type: ignore[index]
    assert lyon["p2p"]["allow_duplicate_ip"] is False  # type: ignore[index]


def test_public_names_keep_the_strict_address_book(tmp_path: Path) -> None:
    peers = ["0123@node.aphp.example.org:26656"]
    settings = testnet.node_settings("chu-lyon", [1, 2, 3, 4], peers, 1000, "0.0.0.0", "lyon.fr")
    assert settings["p2p"]["addr_book_strict"] is True
    assert settings["p2p"]["laddr"] == "tcp://0.0.0.0:1"  # every interface: configured so
    assert settings["p2p"]["external_address"] == "lyon.fr:1"
    assert testnet.dialable("0.0.0.0:26657") == "127.0.0.1:26657"


@pytest.mark.parametrize(
    ("written", "ms"),
    [("600ms", 600), ("1s", 1000), ("0.6s", 600), ("1s500ms", 1500), ("1m", 60_000), ("0", 0)],
)
def test_a_timeout_commit_is_read_in_any_go_duration_spelling(written: str, ms: int) -> None:
    assert testnet.go_duration_ms(written) == ms


@pytest.mark.parametrize("written", ["", "600", "-1s", "1x", "s", "1s 500ms", "1.2.3s"])
def test_what_is_not_a_go_duration_is_said_so(written: str) -> None:
    assert testnet.go_duration_ms(written) is None
