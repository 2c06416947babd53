"""`CometEngine`: the Engine a hospital's node process uses when CometBFT orders the ledger.

The node process owns the application (its SQLite replica) and serves ABCI to its own CometBFT
process. Submitting goes through CometBFT's RPC (`broadcast_tx_sync`), never straight into the
app: only the mempool gossips a tx to the other hospitals, and its CheckTx verdict is the one
the network applies. Commits are observed through the app's commit listener, reads go to the
app under the shared lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from medledger.consensus.cometbft.abci_server import AbciServer, AbciServerThread
from medledger.consensus.cometbft.rpc import CometRpc, RpcError
from medledger.consensus.engine import Committed, Submitted
from medledger.ledger import codec
from medledger.ledger.errors import Code
from medledger.ledger.results import BlockRecord, TxResult
from medledger.ledger.store import StateView

log = logging.getLogger(__name__)

# Codes for refusals that come from CometBFT rather than from the ledger's CheckTx (the
# ledger's codes are small integers, see medledger.ledger.errors.Code).
MEMPOOL_FULL = 101  # try again later
MEMPOOL_REFUSED = 102  # another mempool refusal (tx too large for the mempool, ...)

# Committed txs whose place and result are kept in memory for the clients waiting on them
# (`wait_for_commit`, `submit`'s "already committed"): ≈ 20 s at 1,000 tx/s, the size of a
# full mempool. An older tx is found through the store's tx index and its block. At 200,000
# the record held ≈ 7 collector-tracked objects per tx (1.4 million at its bound), which a
# node's full collections traverse (docs/benchmarks.md, "Session 14 (grow13)").
_RECENT_COMMITS = 20_000


def check_result_from_rpc(result: dict[str, Any]) -> TxResult:
    """The CheckTx verdict in a `broadcast_tx_sync` answer."""
    return TxResult(int(result.get("code", 0)), str(result.get("log", "")))


def check_result_from_error(
    exc: RpcError, committed_at: Callable[[], int | None] = lambda: None
) -> TxResult:
    """Map a mempool error answer of `broadcast_tx_sync` to a verdict.

    "tx already exists in cache": the same bytes passed CheckTx before (CometBFT drops failed
    txs from its cache). If they are committed, this is a replay and is refused as the ledger
    refuses one (BAD_NONCE, like the solo engine); if not, the tx is on its way: accepted, and
    `wait_for_commit` will find it. A full mempool is a retryable refusal.
    """
    text = f"{exc.message}: {exc.data}"
    if "already exists in cache" in text:
        height = committed_at()
        if height is not None:
            return TxResult(int(Code.BAD_NONCE), f"replay: tx already committed at {height}")
        return TxResult(0, "already submitted")
    if "mempool is full" in text:
        return TxResult(MEMPOOL_FULL, f"mempool full, retry later: {exc.data}")
    return TxResult(MEMPOOL_REFUSED, f"refused by CometBFT: {exc.data or exc.message}")


def _proposal_hold_s() -> float:
    """The consensus-first hold this node uses (1 s unless the environment says otherwise)."""
    raw = os.environ.get("MEDLEDGER_PROPOSAL_HOLD_S", "1.0")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10:
        raise ValueError(f"MEDLEDGER_PROPOSAL_HOLD_S={raw!r}: expected seconds from 0 to 10")
    return value


def _stats_interval_s() -> float:
    """How often the ABCI server logs where its CPU went (60 s unless the environment says
    otherwise: `medledger bench cometbft` asks every 10 s, its runs being shorter)."""
    raw = os.environ.get("MEDLEDGER_ABCI_STATS_S", "60")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 86_400:
        raise ValueError(f"MEDLEDGER_ABCI_STATS_S={raw!r}: expected seconds from 1 to 86400")
    return value


class CometEngine:
    """Serves ABCI for one application and offers the Engine interface on top of it.

    `app` is a `medledger.ledger.app.Application` (or anything with the same methods);
    `abci_address` is where its CometBFT connects (its config's proxy_app); `rpc_url` is
    that CometBFT's RPC.
    """

    def __init__(self, app: Any, abci_address: str, rpc_url: str, rpc_timeout: float = 10.0):
        self.app = app
        self.abci_address = abci_address
        self.rpc_url = rpc_url
        # MEDLEDGER_PROPOSAL_HOLD_S: the consensus-first hold (AbciServer), 0 turns it off;
        # `medledger bench cometbft --set hold_ms=...` measures it side by side.
        self.server = AbciServer(
            app, stats_interval_s=_stats_interval_s(), proposal_hold_s=_proposal_hold_s()
        )
        self.lock = self.server.lock
        self.rpc = CometRpc(rpc_url, timeout=rpc_timeout)
        self._thread: AbciServerThread | None = None
        self._cond = threading.Condition()
        self._recent: OrderedDict[bytes, tuple[int, int, TxResult]] = OrderedDict()
        self._closed = False
        # The last committed height, as the commit listener saw it: `height()` answers from it
        # without the ABCI lock (the audit journal and the sync agent ask many times a second).
        self._height: int | None = None
        app.add_commit_listener(self._on_commit)

    def start(self) -> CometEngine:
        """Start serving ABCI in a background thread; returns once the socket is bound."""
        if self._thread is None:
            self._thread = AbciServerThread(self.server, self.abci_address)
            self._thread.start()
            log.info("serving ABCI on %s for CometBFT at %s", self.abci_address, self.rpc_url)
        return self

    @property
    def bound_address(self) -> str:
        if self._thread is None:
            raise RuntimeError("engine not started")
        return self._thread.bound_address

    # -- commits -----------------------------------------------------------------------

    def _on_commit(self, record: BlockRecord) -> None:
        """Called by the app after each commit (on the ABCI thread, under the app lock)."""
        with self._cond:
            for index, (tx, result) in enumerate(zip(record.txs, record.results, strict=True)):
                self._recent[codec.tx_id(tx)] = (record.height, index, result)
            while len(self._recent) > _RECENT_COMMITS:
                self._recent.popitem(last=False)
            self._height = record.height
            self._cond.notify_all()

    def _locate(self, tx_id: bytes) -> Committed | None:
        hit = self._recent.get(tx_id)
        if hit is not None:
            return Committed(tx_id, hit[0], hit[1], hit[2])
        store = getattr(self.app, "store", None)
        if store is None or not hasattr(store, "locate_tx"):
            return None
        with self.lock:
            loc = store.locate_tx(tx_id)
            if loc is None:
                return None
            record = self.app.block(loc[0])
        if record is None:
            return None
        return Committed(tx_id, loc[0], loc[1], record.results[loc[1]])

    # -- Engine interface --------------------------------------------------------------

    def submit(self, tx: bytes) -> Submitted:
        """Hand the tx to CometBFT's mempool; its CheckTx verdict comes back.

        Raises `RpcUnavailable` (a ConnectionError) when the node's CometBFT is not running.
        """
        tx_id = codec.sha256(tx)
        try:
            result = check_result_from_rpc(self.rpc.broadcast_tx_sync(tx))
        except RpcError as exc:

            def committed_at() -> int | None:
                found = self._locate(tx_id)
                return None if found is None else found.height

            result = check_result_from_error(exc, committed_at)
        return Submitted(tx_id, result)

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        deadline = time.monotonic() + timeout
        while True:
            found = self._locate(tx_id)
            if found is not None:
                return found
            with self._cond:
                if tx_id in self._recent:
                    continue  # committed between the lookup and taking the condition
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise TimeoutError(f"tx {tx_id.hex()} not committed within {timeout}s")
                self._cond.wait(min(remaining, 1.0))

    def query(self, path: str, data: Any = None) -> Any:
        """Read committed state (same answers as the solo engine's query)."""
        with self.lock:
            if hasattr(self.app, "query_obj"):
                return self.app.query_obj(path, data)
            raw = data if isinstance(data, bytes) else codec.encode(data or {})
            return self.app.query(path, raw)

    @contextmanager
    def read_view(self) -> Iterator[StateView]:
        """The last committed state, steady while read: the ABCI lock first (CometBFT's calls
        are served under it, a commit among them), then the app's, as a query takes them."""
        with self.lock, self.app.read_view() as view:
            yield view

    def height(self) -> int:
        """The last committed height; before this process's first commit, the app's own."""
        known = self._height
        if known is not None:
            return known
        with self.lock:
            return int(self.app.info().height)

    def blocks(self, from_height: int = 1, follow: bool = False) -> Iterator[BlockRecord]:
        h = max(1, from_height)
        while True:
            with self.lock:
                record = self.app.block(h)
            if record is not None:
                yield record
                h += 1
                continue
            if not follow or self._closed:
                return
            with self._cond:
                if not self._closed:
                    self._cond.wait(1.0)

    def close_app(self) -> None:
        """Close the application once no ABCI call runs in it (after `close`)."""
        with self.lock:
            self.app.close()

    def close(self) -> None:
        """Stop serving ABCI (CometBFT will stop too) and release the RPC client."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self.rpc.close()
