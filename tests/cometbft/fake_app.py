"""A tiny deterministic key-value application with the interface of `ledger.app.Application`.

It lets the ABCI server, the engine and the process management be tested on real CometBFT
processes without the ledger: txs are `key=value`, a tx starting with `bad` is invalid, and a
`key=value` tx whose key was already written in an earlier block is a "replay" (code 5).
State is a JSON file written atomically at commit, so kill -9 behaves like the real store.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from medledger.ledger.results import (
    AppInfo,
    BlockHeader,
    BlockOutcome,
    BlockRecord,
    QueryResult,
    TxResult,
    ValidatorUpdate,
)

GENESIS_HASH = hashlib.sha256(b"fake-genesis").digest()


class FakeApp:
    def __init__(self, path: Path, validators: list[ValidatorUpdate] | None = None) -> None:
        self.path = path
        self.validators = validators or []
        self.listeners: list[Callable[[BlockRecord], None]] = []
        self.lock = threading.RLock()
        self.height = 0
        self.app_hash = b""
        self.state: dict[str, str] = {}
        self.records: dict[int, dict[str, object]] = {}
        self._pending: tuple[dict[str, str], dict[str, object], bytes] | None = None
        if path.exists():
            raw = json.loads(path.read_text())
            self.height = raw["height"]
            self.app_hash = bytes.fromhex(raw["app_hash"])
            self.state = raw["state"]
            self.records = {int(k): v for k, v in raw["records"].items()}

    @classmethod
    def open(cls, home: Path) -> FakeApp:
        return cls(home / "fake-app.json")

    def info(self) -> AppInfo:
        return AppInfo(self.height, self.app_hash)

    def init_chain(self) -> bytes:
        if self.height == 0:
            self.app_hash = GENESIS_HASH
        return self.app_hash

    def genesis_validators(self) -> list[ValidatorUpdate]:
        return list(self.validators)

    def _check(self, tx: bytes, state: dict[str, str]) -> TxResult:
        if tx == b"explode":
            raise RuntimeError("the application raised")
        if tx.startswith(b"bad"):
            return TxResult(4, "bad tx")
        key, sep, value = tx.partition(b"=")
        if not sep or not key:
            return TxResult(1, "malformed")
        if key.decode() in state:
            return TxResult(5, "replayed key")
        return TxResult(0, "")

    def check_tx(self, tx: bytes, recheck: bool = False) -> TxResult:
        return self._check(tx, self.state)

    def _execute(self, txs: list[bytes]) -> tuple[list[TxResult], dict[str, str]]:
        overlay = dict(self.state)
        results = []
        for tx in txs:
            result = self._check(tx, overlay)
            if result.ok:
                key, _, value = tx.partition(b"=")
                overlay[key.decode()] = value.decode()
            results.append(result)
        return results, overlay

    def proposal_order(self, txs: list[bytes], height: int) -> list[bytes]:
        return txs

    def simulate_block(self, txs: list[bytes], height: int, time_ms: int) -> list[TxResult]:
        return self._execute(txs)[0]

    def finalize_block(
        self,
        txs: list[bytes],
        height: int,
        time_ms: int,
        consensus_hash: bytes = b"",
        proposer: bytes = b"",
    ) -> BlockOutcome:
        if height != self.height + 1:
            raise RuntimeError(f"finalize_block({height}) at height {self.height}")
        results, overlay = self._execute(txs)
        writes = hashlib.sha256(json.dumps(sorted(overlay.items())).encode()).digest()
        app_hash = hashlib.sha256(self.app_hash + writes).digest()
        record: dict[str, object] = {
            "time": time_ms,
            "txs": [t.hex() for t in txs],
            "results": [[r.code, r.log] for r in results],
            "app_hash": app_hash.hex(),
            "consensus_hash": consensus_hash.hex(),
        }
        self._pending = (overlay, record, app_hash)
        return BlockOutcome(results, app_hash, [])

    def commit(self) -> BlockRecord:
        assert self._pending is not None, "commit without finalize_block"
        overlay, record, app_hash = self._pending
        self._pending = None
        self.height += 1
        self.state = overlay
        self.app_hash = app_hash
        self.records[self.height] = record
        tmp = self.path.with_suffix(".tmp")
        data = {
            "height": self.height,
            "app_hash": app_hash.hex(),
            "state": self.state,
            "records": {str(k): v for k, v in self.records.items()},
        }
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        block = self.block(self.height)
        assert block is not None
        for fn in self.listeners:
            fn(block)
        return block

    def query(self, path: str, data: bytes) -> QueryResult:
        if path == "/get":
            value = self.state.get(data.decode())
            if value is None:
                return QueryResult(10, b"", "not found", self.height)
            return QueryResult(0, value.encode(), "", self.height)
        if path == "/raise":
            raise RuntimeError("query exploded")
        return QueryResult(2, b"", f"unknown path {path}", self.height)

    def add_commit_listener(self, fn: Callable[[BlockRecord], None]) -> None:
        self.listeners.append(fn)

    def block(self, height: int) -> BlockRecord | None:
        raw = self.records.get(height)
        if raw is None:
            return None
        txs = [bytes.fromhex(t) for t in raw["txs"]]  # type: ignore[attr-defined]
        prev = self.records.get(height - 1)
        header = BlockHeader(
            chain="fake",
            height=height,
            time_ms=int(raw["time"]),  # type: ignore[call-overload]
            prev_hash=bytes.fromhex(prev["app_hash"]) if prev else b"",  # type: ignore[arg-type]
            tx_root=hashlib.sha256(b"".join(txs)).digest(),
            app_hash=bytes.fromhex(raw["app_hash"]),  # type: ignore[arg-type]
            proposer=b"",
            consensus_hash=bytes.fromhex(raw["consensus_hash"]),  # type: ignore[arg-type]
        )
        results = [TxResult(c, lg) for c, lg in raw["results"]]  # type: ignore[attr-defined]
        return BlockRecord(header, header.encode(), b"", txs, results)


def open_app(home: Path) -> FakeApp:
    """Factory for `run_app --app tests.cometbft.fake_app:open_app`."""
    return FakeApp.open(home)
