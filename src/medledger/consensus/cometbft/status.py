"""What `medledger net status` shows: each hospital's node as its own CometBFT RPC reports it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medledger.consensus.cometbft import processes, testnet
from medledger.consensus.cometbft.rpc import CometRpc, RpcError, RpcUnavailable


@dataclass(frozen=True)
class NodeStatus:
    org: str
    app_running: bool
    cometbft_running: bool
    height: int | None = None
    app_hash: str = ""
    peers: int | None = None
    validator: bool | None = None
    power: int = 0
    catching_up: bool = False
    error: str = ""
    supervised: bool = False  # a supervisor (`net up`) restarts what dies


def node_status(consortium_dir: Path, org: str, timeout: float = 2.0) -> NodeStatus:
    """Height and app hash (/status), peers (/net_info), validator or not (/validators)."""
    home = testnet.cometbft_home(consortium_dir, org)
    app_pid = processes.read_pid(consortium_dir, org, "app")
    cmt_pid = processes.read_pid(consortium_dir, org, "cometbft")
    supervised = processes.read_pid(consortium_dir, org, "supervisor") is not None
    addr = testnet.node_addresses(home, org)
    try:
        with CometRpc(addr.rpc_url, timeout=timeout) as rpc:
            status = rpc.status()
            peers = int(rpc.net_info()["n_peers"])
            me = status["validator_info"]["address"].upper()
            power = 0
            for v in rpc.validators():
                if v["address"].upper() == me:
                    power = int(v["voting_power"])
    except (RpcUnavailable, RpcError, KeyError, ValueError) as exc:
        return NodeStatus(
            org,
            app_pid is not None,
            cmt_pid is not None,
            error=str(exc).split(":")[-1].strip(),
            supervised=supervised,
        )
    sync = status["sync_info"]
    return NodeStatus(
        org=org,
        app_running=app_pid is not None,
        cometbft_running=cmt_pid is not None,
        height=int(sync["latest_block_height"]),
        app_hash=str(sync["latest_app_hash"]).lower(),
        peers=peers,
        validator=power > 0,
        power=power,
        catching_up=bool(sync["catching_up"]),
        supervised=supervised,
    )


def network_status(consortium_dir: Path) -> list[NodeStatus]:
    consortium_dir = consortium_dir.resolve()
    return [node_status(consortium_dir, org) for org in testnet.list_hospitals(consortium_dir)]
