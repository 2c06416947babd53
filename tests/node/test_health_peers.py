"""CometBFT asks the app about a peer only when it connects: a member removed (or whose node
moved) keeps its open connection. The node's probe names such peers in `/health` and counts
them in `/metrics`, so the filter never looks applied to a connection it was not; a home
whose CometBFT runs without `filter_peers` says so too."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medledger.api.monitoring import exposition
from medledger.node.config import HospitalConfig
from medledger.node.health import HealthProbe

MEMBER_NODE = "1" * 40
REMOVED_NODE = "2" * 40


@dataclass
class FakeRpc:
    """CometBFT's RPC as the probe reads it: a caught-up node with these peers."""

    peers: list[str]
    url: str = "http://127.0.0.1:26657"

    def status(self) -> dict[str, Any]:
        return {"sync_info": {"latest_block_height": "40", "catching_up": False}}

    def net_info(self) -> dict[str, Any]:
        return {
            "n_peers": str(len(self.peers)),
            "peers": [{"node_info": {"id": p}} for p in self.peers],
        }

    def call(self, method: str) -> dict[str, Any]:
        answers: dict[str, dict[str, Any]] = {
            "num_unconfirmed_txs": {"total": "0"},
            "dump_consensus_state": {"peers": []},
        }
        return answers[method]


@dataclass
class FakeEngine:
    """The replica's members: the one whose node is connected, and one with no p2p address."""

    rpc: FakeRpc
    members: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"org": "chu-lyon", "addresses": {"p2p": f"{MEMBER_NODE}@10.0.0.5:26656"}},
            {"org": "aphp-paris", "addresses": {"gateway": "10.0.0.6:7004"}},
        ]
    )

    def height(self) -> int:
        return 40

    def query(self, path: str, args: Any = None) -> Any:
        assert path == "governance/members"
        return self.members


@dataclass
class FakeNode:
    config: HospitalConfig
    engine: FakeEngine
    _audit: None = None
    study_status: None = None  # no study agent on this node


def _probe(peers: list[str], tmp_path: Path) -> HealthProbe:
    config = HospitalConfig(
        home=tmp_path,
        org="chu-bordeaux",
        name="CHU de Bordeaux",
        chain_id="medledger-west",
        engine="cometbft",
        consortium_dir="consortium",
    )
    rpc = FakeRpc(peers)
    probe = HealthProbe(FakeNode(config, FakeEngine(rpc)))  # type: ignore[arg-type]
    probe._rpc = rpc  # the client the probe would open on the engine's RPC URL
    return probe


def test_a_connected_node_no_member_names_is_reported(tmp_path: Path) -> None:
    status = _probe([MEMBER_NODE, REMOVED_NODE], tmp_path).status()
    assert status.non_member_peers == 1
    assert not status.ok and not status.unavailable  # degraded, still serving
    (reason,) = [r for r in status.reasons if REMOVED_NODE in r]
    assert "restart this node's CometBFT" in reason
    assert 'medledger_non_member_peers{org="chu-bordeaux"} 1' in exposition("chu-bordeaux", status)


def test_members_nodes_only_is_healthy(tmp_path: Path) -> None:
    status = _probe([MEMBER_NODE], tmp_path).status()
    assert status.ok and status.non_member_peers == 0 and status.peers == 1


def test_a_cometbft_home_without_filter_peers_is_reported(tmp_path: Path) -> None:
    """A home made before medledger set `filter_peers`: the filter is not applied, and the
    node says so rather than look filtered."""
    config = tmp_path / "cometbft" / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('moniker = "chu-bordeaux"\nfilter_peers = false\n')
    probe = _probe([MEMBER_NODE], tmp_path)
    (reason,) = probe.status().reasons
    assert "filter_peers off" in reason
    config.write_text('moniker = "chu-bordeaux"\nfilter_peers = true\n')
    os.utime(config, ns=(1, 1))  # another mtime, whatever the clock's resolution
    assert probe._look().ok  # a fresh look, past the cached one
