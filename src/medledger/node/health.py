"""Can this node serve, and the figures monitoring reads: one probe for every front door.

The API, the pages and the gateway ask `HealthProbe.unavailable()` before serving: on
CometBFT, a node whose own CometBFT is gone (killed, restarting) or still catching up with the
chain cannot know that its replica is current (a consent withdrawn elsewhere, a member
removed) nor commit anything, so every request is answered 503 with that reason, never served
from a stale replica and never a 500. The probe asks CometBFT again at most once per `ttl`
seconds, so when it returns the node serves again by itself. `/health` and `/metrics`
(`api.monitoring`) report the same `Status`.

The solo engine runs inside the node's own process: nothing can be gone, only the audit
journal is looked at. A node beside the solo ledger's producer (a sandbox hospital's own
`node run`, consensus/solo_shared.py) reads the ledger file, always current, but commits
nothing while the producer is gone: it answers 503 with that reason until it is back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medledger.node.core import Node

PROBE_TIMEOUT_S = 1.0  # per RPC call: a CometBFT slower than this is as good as gone
TTL_S = 1.0  # how long one answer is reused by the requests that follow


@dataclass(frozen=True)
class Status:
    """One look at the node. `unavailable` is why requests are refused (503), "" when they
    are served; `reasons` lists everything not right (the refusal's reason among them)."""

    engine: str
    height: int  # the replica's last committed block
    unavailable: str = ""
    reasons: tuple[str, ...] = ()
    chain_height: int | None = None  # CometBFT's latest block (None: solo, or unreachable)
    catching_up: bool | None = None
    peers: int | None = None
    mempool_txs: int | None = None
    sync_lag_blocks: int | None = None  # how far the best peer is ahead of this node
    # Peers connected whose node id no current member's record names: CometBFT asks the app
    # only when a peer connects, so a member removed (or moved) stays until a reconnect.
    non_member_peers: int | None = None
    audit_backlog: int = 0  # access entries journaled here, not yet on the chain
    studies: tuple[str, ...] = ()  # what the study agent did, one line per query

    @property
    def ok(self) -> bool:
        return not self.reasons


class HealthProbe:
    """Looks at the node's engine and audit journal; thread-safe, cached for `ttl` seconds."""

    def __init__(self, node: Node, ttl: float = TTL_S, timeout: float = PROBE_TIMEOUT_S) -> None:
        self.node = node
        self.ttl = ttl
        self.timeout = timeout
        self._lock = threading.Lock()
        self._last: tuple[float, Status] | None = None
        self._rpc: Any = None
        self._filtering: tuple[int, bool] | None = None  # (config.toml's mtime, filter_peers)

    def unavailable(self) -> str:
        """Why requests must be refused now (503), or "" when the node can serve them."""
        return self.status().unavailable

    def status(self) -> Status:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.ttl:
                look = self._look()
                report = self.node.study_status
                if report is not None:
                    look = replace(look, studies=tuple(report()))
                self._last = (now, look)
            return self._last[1]

    # -- the look itself ----------------------------------------------------------------
    def _comet_rpc(self) -> Any:
        rpc = getattr(self.node.engine, "rpc", None)
        if rpc is None:
            return None
        if self._rpc is None:
            from medledger.consensus.cometbft.rpc import CometRpc

            self._rpc = CometRpc(rpc.url, timeout=self.timeout)
        return self._rpc

    def _audit_backlog(self) -> tuple[int, list[str]]:
        journal = self.node._audit  # never start the journal just to look at it
        if journal is None:
            return 0, []
        if journal.stopped:
            return 0, ["the audit journal is stopped: accesses cannot be recorded"]
        return journal.pending(), []

    def _look(self) -> Status:
        engine = self.node.config.engine
        backlog, reasons = self._audit_backlog()
        try:
            height = self.node.engine.height()
        except Exception as exc:  # an RpcEngine whose CometBFT is gone
            height = 0
            reasons.append(f"the ledger cannot be read: {type(exc).__name__}")
        producer_gone = getattr(self.node.engine, "producer_gone", None)
        why = producer_gone(self.timeout) if producer_gone is not None else ""
        if why:
            return Status(engine, height, why, (why, *reasons), audit_backlog=backlog)
        rpc = self._comet_rpc()
        if rpc is None:
            return Status(engine, height, "", tuple(reasons), audit_backlog=backlog)
        from medledger.consensus.cometbft.rpc import RpcError, RpcUnavailable

        try:
            sync = rpc.status()["sync_info"]
            chain_height = int(sync["latest_block_height"])
            catching_up = bool(sync["catching_up"])
            net_info = rpc.net_info()
            peers = int(net_info["n_peers"])
            connected = [str(p["node_info"]["id"]) for p in net_info.get("peers") or []]
            mempool = int(rpc.call("num_unconfirmed_txs")["total"])
            lag = _sync_lag(rpc, chain_height)
            strangers = self._non_members(connected)
        except (RpcUnavailable, RpcError, KeyError, TypeError, ValueError) as exc:
            why = (
                f"this node's CometBFT ({rpc.url}) does not answer ({type(exc).__name__}): "
                "the ledger can be neither read up to date nor written; the node serves again "
                "by itself when CometBFT is back"
            )
            return Status(engine, height, why, (why, *reasons), audit_backlog=backlog)
        unavailable = ""
        if catching_up:
            unavailable = (
                f"this node is catching up with the chain (block {chain_height}); it serves "
                "once it has the latest blocks"
            )
            reasons.insert(0, unavailable)
        if peers == 0 and len(self.node.config.exchange.peers) > 1:
            reasons.append("no CometBFT peer connected")
        if self._peers_unfiltered():
            reasons.append(
                "CometBFT's config.toml has filter_peers off: it peers with any node that "
                "dials, member or not; set `filter_peers = true` and restart CometBFT"
            )
        if strangers:
            reasons.append(
                f"CometBFT is still connected to {len(strangers)} p2p node(s) no current "
                f"member's record names ({', '.join(sorted(strangers))}): a peer is checked "
                "when it connects, so a member removed or moved keeps its open connection; "
                "restart this node's CometBFT to drop it"
            )
        return Status(
            engine,
            height,
            unavailable,
            tuple(reasons),
            chain_height=chain_height,
            catching_up=catching_up,
            peers=peers,
            mempool_txs=mempool,
            sync_lag_blocks=lag,
            audit_backlog=backlog,
            non_member_peers=len(strangers),
        )

    def _peers_unfiltered(self) -> bool:
        """Whether this node's CometBFT home (when on this machine) says `filter_peers = false`:
        a home made before medledger set it. Read again only when the file changes."""
        config = self.node.config
        path = config.home / config.cometbft.home / "config" / "config.toml"
        try:
            mtime = path.stat().st_mtime_ns
            if self._filtering is None or self._filtering[0] != mtime:
                import tomllib

                on = tomllib.loads(path.read_text()).get("filter_peers") is True
                self._filtering = (mtime, on)
        except (OSError, ValueError):
            return False  # no CometBFT home here to read: nothing to say
        return not self._filtering[1]

    def _non_members(self, connected: list[str]) -> list[str]:
        """The connected node ids that are in no current member's `addresses.p2p`."""
        if not connected:
            return []
        from medledger.contracts import queries
        from medledger.contracts.governance import p2p_node_id

        known = {p2p_node_id(m) for m in queries.members(self.node.engine)}
        return [node for node in connected if node not in known]

    def close(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None


def _sync_lag(rpc: Any, own_height: int) -> int:
    """Blocks the most advanced connected peer has that this node lacks (0 when none).

    Each peer's consensus round state names the height it works on (its last block + 1)."""
    best = own_height
    state = rpc.call("dump_consensus_state")
    for peer in state.get("peers") or []:
        round_state = (peer.get("peer_state") or {}).get("round_state") or {}
        try:
            best = max(best, int(round_state.get("height", 0)) - 1)
        except (TypeError, ValueError):
            continue
    return best - own_height
