"""The solo engine: an in-process block producer.

It is the embedded default (one process, nothing else to run) and what most tests use. A block
is cut when transactions wait, every `interval` seconds; no empty blocks unless asked. The
header is signed by the solo key, whose public half is in the genesis, so that `verify` can
check who produced each block.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from medledger.consensus.engine import Committed, Submitted
from medledger.ledger import codec
from medledger.ledger.app import Application
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import BlockRecord, TxResult
from medledger.ledger.store import StateView

log = logging.getLogger(__name__)

MAX_BLOCK_TXS = 20_000
_PARALLEL_VERIFY_MIN = 128


class SoloEngine:
    """Orders txs for one Application; satisfies `medledger.consensus.engine.Engine`.

    With `auto=True` a background thread cuts blocks; with `auto=False` blocks are cut by
    `cut_block()` or on demand by `wait_for_commit` (one-shot CLI commands, deterministic tests).
    """

    def __init__(
        self,
        app: Application,
        key: SigningKey,
        *,
        interval: float = 0.2,
        auto: bool = True,
        empty_blocks: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if app.genesis.solo_key and key.public_key != app.genesis.solo_key:
            raise ValueError("this key is not the solo key named in the genesis")
        self.app = app
        self.key = key
        self.interval = interval
        self.auto = auto
        self.empty_blocks = empty_blocks
        self.clock = clock
        self._mempool: list[bytes] = []
        self._mempool_ids: set[bytes] = set()
        self._verifier = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")
        self._block_time = 0
        self._failure: Exception | None = None
        self._cond = threading.Condition(app.lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        app.init_chain()
        if auto:
            self._thread = threading.Thread(target=self._run, name="solo-engine", daemon=True)
            self._thread.start()

    # -- Engine interface -------------------------------------------------------------
    def submit(self, tx: bytes) -> Submitted:
        return self.submit_many([tx])[0]

    def submit_many(self, txs: list[bytes]) -> list[Submitted]:
        """Submit a batch: signatures are checked first outside the lock (on another core than
        the block being executed), then the batch is checked in order under one lock."""
        self._raise_if_failed()
        if len(txs) >= _PARALLEL_VERIFY_MIN:
            # Signature checks release the GIL: spread a batch over both cores.
            half = len(txs) // 2
            parts = [txs[:half], txs[half:]]
            for done in [self._verifier.submit(self._preverify_all, part) for part in parts]:
                done.result()
        else:
            for tx in txs:
                self.app.preverify(tx)
        out = []
        with self._cond:
            for tx in txs:
                tid = codec.sha256(tx)
                if tid in self._mempool_ids:  # the same tx again: it is already on its way
                    out.append(Submitted(tid, TxResult(0, "already in the mempool")))
                    continue
                if not self._mempool:
                    self._open_block()
                result = self.app.check_tx(tx)
                if result.ok:
                    self._mempool.append(tx)
                    self._mempool_ids.add(tid)
                out.append(Submitted(tid, result))
            self._cond.notify_all()
        return out

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise RuntimeError(
                f"the solo engine stopped producing blocks: {self._failure!r}; restart the node"
            ) from self._failure

    def _preverify_all(self, txs: list[bytes]) -> None:
        for tx in txs:
            self.app.preverify(tx)

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                loc = self.app.store.locate_tx(tx_id)
                if loc is not None:
                    height, index = loc
                    record = self.app.block(height)
                    assert record is not None
                    return Committed(tx_id, height, index, record.results[index])
                if not self.auto:
                    if tx_id not in self._mempool_ids:
                        raise LookupError(f"tx {tx_id.hex()} is neither pending nor committed")
                    self._cut_block_locked()
                    continue
                self._raise_if_failed()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"tx {tx_id.hex()} not committed within {timeout}s")
                self._cond.wait(remaining)

    def query(self, path: str, data: Any = None) -> Any:
        return self.app.query_obj(path, data)

    def read_view(self) -> AbstractContextManager[StateView]:
        """The last committed state; the app lock is the one blocks are cut under."""
        return self.app.read_view()

    def height(self) -> int:
        return self.app.height

    def blocks(self, from_height: int = 1, follow: bool = False) -> Iterator[BlockRecord]:
        h = max(1, from_height)
        while True:
            record = self.app.block(h)
            if record is not None:
                yield record
                h += 1
                continue
            if not follow or self._stopping:
                return
            with self._cond:
                if self.app.height < h and not self._stopping:
                    self._cond.wait(1.0)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._cond:
            if self._mempool:
                self._cut_block_locked()
        self._verifier.shutdown(wait=True)

    # -- producing blocks ---------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._mempool)

    def cut_block(self) -> BlockRecord | None:
        with self._cond:
            return self._cut_block_locked()

    def _cut_block_locked(self) -> BlockRecord | None:
        if not self._mempool and not self.empty_blocks:
            return None
        txs = self._mempool[:MAX_BLOCK_TXS]
        rest = self._mempool[MAX_BLOCK_TXS:]
        if not self._mempool:
            self._open_block()  # an empty block, asked for
        self.app.finalize_block(
            txs, self.app.height + 1, self._block_time, proposer=self.key.public_key
        )
        record = self.app.commit(self.key.sign(self.app.pending_header_bytes))
        for t in txs:
            self._mempool_ids.discard(codec.sha256(t))
        # Recheck what is left against the new state, like CometBFT's mempool recheck.
        self._mempool = []
        if rest:
            self._open_block()
        for t in rest:
            if self.app.check_tx(t, recheck=True).ok:
                self._mempool.append(t)
            else:
                self._mempool_ids.discard(codec.sha256(t))
        self._cond.notify_all()
        return record

    def _open_block(self) -> None:
        """Fix the next block's height and time now, so that checking a tx is executing it."""
        self._block_time = max(int(self.clock() * 1000), self.app.last_time_ms + 1)
        self.app.open_block(self.app.height + 1, self._block_time)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._mempool and not self.empty_blocks:
                    self._cond.wait(self.interval)
                    continue
            time.sleep(self.interval)  # let a block's worth of txs gather, outside the lock
            with self._cond:
                if self._stopping:
                    return
                try:
                    self._cut_block_locked()
                except Exception as exc:  # a disk or store fault: stop producing, say so
                    log.exception("the solo engine stopped producing blocks")
                    self._failure = exc
                    self._stopping = True
                    self._cond.notify_all()
                    return
