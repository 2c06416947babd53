"""`RpcEngine`: the Engine for processes that do not own the replica (one-shot CLI commands).

On CometBFT the hospital's node process owns its ledger replica and serves ABCI; another
process on the same machine (`medledger consent ...`, `audit`, `verify`) reaches the ledger
through that node's CometBFT RPC: `broadcast_tx_sync` to submit, `abci_query` to read (answered
by the node's app over ABCI), `block_results` for a tx's result. Block records are read from
the replica's SQLite file opened read-only (WAL lets a reader run beside the writer), since
the app's per-height records are not exposed over RPC.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from medledger.consensus.cometbft.engine import check_result_from_error, check_result_from_rpc
from medledger.consensus.cometbft.rpc import CometRpc, RpcError, b64
from medledger.consensus.engine import Committed, NoLocalReplica, Submitted
from medledger.ledger import codec
from medledger.ledger.errors import Code, TxError
from medledger.ledger.results import BlockRecord, Event, TxResult
from medledger.ledger.store import StateView


class RpcEngine:
    """Engine over a running node's CometBFT RPC (and its replica file, read-only)."""

    def __init__(self, rpc_url: str, ledger_db: Path | None = None, poll: float = 0.1) -> None:
        self.rpc = CometRpc(rpc_url)
        self.ledger_db = ledger_db
        self.poll = poll
        self._db: sqlite3.Connection | None = None
        # The last block's results read: a committed block's never change, and one caller
        # (the audit journal) asks for several txs of one block in turn.
        self._results: tuple[int, list[Any]] | None = None

    @classmethod
    def for_home(cls, config: Any) -> RpcEngine:
        """From a `medledger.node.config.HospitalConfig` ("cometbft" section, or config.toml)."""
        from medledger.consensus.cometbft.verify import rpc_url_for

        return cls(rpc_url_for(config), config.ledger_db)

    # -- Engine interface --------------------------------------------------------------

    def submit(self, tx: bytes) -> Submitted:
        tx_id = codec.sha256(tx)
        try:
            result = check_result_from_rpc(self.rpc.broadcast_tx_sync(tx))
        except RpcError as exc:

            def committed_at() -> int | None:
                loc = self.query("ledger/tx", {"id": tx_id})
                return None if loc is None else int(loc["height"])

            result = check_result_from_error(exc, committed_at)
        return Submitted(tx_id, result)

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        deadline = time.monotonic() + timeout
        while True:
            loc = self.query("ledger/tx", {"id": tx_id})
            if loc is not None:
                height, index = int(loc["height"]), int(loc["index"])
                return Committed(tx_id, height, index, self._result(height, index))
            if time.monotonic() >= deadline:
                raise TimeoutError(f"tx {tx_id.hex()} not committed within {timeout}s")
            time.sleep(self.poll)

    def _result(self, height: int, index: int) -> TxResult:
        cached = self._results
        if cached is None or cached[0] != height:
            cached = self._results = (height, self.rpc.block_results(height)["txs_results"])
        raw = cached[1][index]
        events = tuple(
            Event(
                e["type"],
                tuple((a.get("key", ""), a.get("value", "")) for a in e.get("attributes") or []),
            )
            for e in raw.get("events") or []
        )
        return TxResult(int(raw.get("code", 0)), str(raw.get("log", "")), events)

    def query(self, path: str, data: Any = None) -> Any:
        """Same answers as the solo engine: the decoded value, TxError on a refused query."""
        response = self.rpc.abci_query(path, codec.encode(data or {}))
        code = int(response.get("code", 0))
        if code != 0:
            try:
                enum_code = Code(code)
            except ValueError:
                enum_code = Code.MALFORMED
            raise TxError(enum_code, str(response.get("log", "")))
        return codec.decode(b64(response.get("value")))

    def read_view(self) -> AbstractContextManager[StateView]:
        """No view here: this engine reads a remote node's state through its RPC (`query`)."""
        raise NoLocalReplica("this engine reaches a remote node over RPC: read with query()")

    def height(self) -> int:
        return int(self.rpc.abci_info().get("last_block_height", 0))

    def _records(self) -> sqlite3.Connection:
        if self._db is None:
            if self.ledger_db is None or not self.ledger_db.exists():
                raise FileNotFoundError(
                    f"{self.ledger_db}: no ledger replica here (has this node run?)"
                )
            self._db = sqlite3.connect(
                f"file:{self.ledger_db}?mode=ro", uri=True, check_same_thread=False
            )
        return self._db

    def block(self, height: int) -> BlockRecord | None:
        from medledger.ledger.store import decode_record

        row = (
            self._records()
            .execute(
                "SELECT header, signature, txs, results FROM blocks WHERE height = ?", (height,)
            )
            .fetchone()
        )
        if row is None:
            return None
        return decode_record(bytes(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3]))

    def blocks(self, from_height: int = 1, follow: bool = False) -> Iterator[BlockRecord]:
        h = max(1, from_height)
        while True:
            record = self.block(h)
            if record is not None:
                yield record
                h += 1
                continue
            if not follow:
                return
            time.sleep(max(self.poll, 0.2))

    def close(self) -> None:
        self.rpc.close()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RpcEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
