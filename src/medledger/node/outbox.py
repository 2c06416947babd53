"""The outbox: what a command signed, kept on disk until its fate is known.

A command that signs a tx may lose sight of it after sending: the RPC connection drops, the
commit takes longer than the wait. The tx may still commit. Telling the user "error" then is a
lie with consequences (they run the command again and act twice, or throw away a key the chain
now knows). So every signed tx is written here, fsync'd, *before* it is submitted, and removed
once its commit or its refusal is seen. A send that ends without either raises `TxPending`,
naming the tx; `medledger tx status` tells its fate later.

Running the same command again is safe: an entry for the same signer, kind and body (the
command's *intent*; fields the command fills with the current time can be left out of it) is
found, and instead of signing a second tx the outbox looks at the first: committed → its result,
as if it had just committed; refused at execution → that refusal; still able to commit (its
nonce not yet passed on the chain) → it is submitted again, the very same bytes, which the
chain can run at most once; dead (the signer's nonce moved past it and it is not in a block)
→ a fresh tx is signed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from medledger.consensus.engine import Committed, Engine
from medledger.contracts import queries
from medledger.contracts.messages import body_of, kind_of
from medledger.ledger import codec
from medledger.ledger.errors import Code
from medledger.ledger.tx import decode_tx, tx_id
from medledger.node.wallet import TxRejected, Wallet


class TxPending(Exception):
    """A tx was signed and sent, and neither its commit nor its refusal was seen."""

    def __init__(self, kind: str, tx: bytes, why: str) -> None:
        self.kind = kind
        self.tx_id = tx
        self.why = why
        super().__init__(
            f"{kind}: tx {tx.hex()[:16]} pending ({why}); it may still commit. "
            f"`medledger tx status --home <home> {tx.hex()[:16]}` tells its fate; running the "
            "same command again is safe (it does not act twice)"
        )


@dataclass(frozen=True)
class Fate:
    """Where a signed tx stands: committed (with its block), refused, pending or dropped."""

    state: str  # "committed" | "refused" | "pending" | "dropped"
    tx_id: bytes
    kind: str
    height: int = 0
    log: str = ""


@dataclass(frozen=True)
class Entry:
    """One intent in the outbox and every tx signed for it (a resend has a fresh nonce)."""

    key: str
    kind: str
    txs: tuple[bytes, ...]
    created_at: float


def intent_key(signer: bytes, kind: str, body: dict[str, Any], volatile: Iterable[str]) -> str:
    """What makes two sends the same act: signer, kind and body minus its volatile fields."""
    skip = set(volatile)
    stable = {k: v for k, v in body.items() if k not in skip}
    return hashlib.sha256(codec.encode([signer, kind, stable])).hexdigest()


class Outbox:
    """One home's outbox folder: one JSON file per intent, written with fsync."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # -- the send ------------------------------------------------------------------------
    def send(
        self,
        wallet: Wallet,
        msg: Any,
        *,
        volatile: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> Committed:
        """Send a contract message; return its commit, raise `TxRejected` or `TxPending`.

        `volatile` names body fields the command fills from the clock: they do not make a
        re-run a different act."""
        kind, body = kind_of(msg), body_of(msg)
        key = intent_key(wallet.public_key, kind, body, volatile)
        earlier = self.entry(key)
        if earlier is not None:
            settled = self._settle(wallet.engine, earlier, wallet.public_key, timeout)
            if settled is not None:
                return settled
        signed: list[bytes] = list(earlier.txs) if earlier is not None else []

        def keep(tx: bytes) -> None:
            signed.append(tx)
            self._write(key, kind, signed)

        try:
            committed = wallet.send(kind, body, timeout=timeout, on_signed=keep)
        except TxRejected:
            if not signed or self._none_committed(wallet.engine, signed):
                self._remove(key)
            raise
        except (TimeoutError, ConnectionError) as exc:
            if not signed:
                raise  # nothing was signed: nothing can commit
            raise TxPending(kind, tx_id(signed[-1]), _why(exc)) from None
        self._remove(key)
        return committed

    def _settle(
        self, engine: Engine, entry: Entry, signer: bytes, timeout: float
    ) -> Committed | None:
        """The outcome of an earlier attempt of the same act, if it had one or can still."""
        live: list[bytes] = []
        for tx in entry.txs:
            fate = self.fate_of(engine, tx, signer)
            if fate.state == "committed":
                committed = engine.wait_for_commit(fate.tx_id, 5.0)
                self._remove(entry.key)
                if not committed.result.ok:
                    raise TxRejected(
                        entry.kind, committed.result.code, committed.result.log, "execution"
                    )
                return committed
            if fate.state == "pending":
                live.append(tx)
        for tx in live:  # the same bytes again: the chain runs a nonce once at most
            try:
                submitted = engine.submit(tx)
            except ConnectionError as exc:
                raise TxPending(entry.kind, tx_id(tx), _why(exc)) from None
            if submitted.accepted:
                try:
                    committed = engine.wait_for_commit(submitted.tx_id, timeout)
                except TimeoutError:
                    raise TxPending(entry.kind, submitted.tx_id, "still not committed") from None
                self._remove(entry.key)
                if not committed.result.ok:
                    raise TxRejected(
                        entry.kind, committed.result.code, committed.result.log, "execution"
                    )
                return committed
            if submitted.check.code != Code.BAD_NONCE:  # refused now for what it is
                self._remove(entry.key)
                raise TxRejected(entry.kind, submitted.check.code, submitted.check.log, "check")
        return None  # every earlier tx is dead: sign again

    # -- fates ---------------------------------------------------------------------------
    @staticmethod
    def fate_of(engine: Engine, raw: bytes, signer: bytes | None = None) -> Fate:
        tx = decode_tx(raw)
        ident = tx_id(raw)
        where = queries.tx_location(engine, ident)
        if where is not None:
            committed = engine.wait_for_commit(ident, 5.0)
            if committed.result.ok:
                return Fate("committed", ident, tx.kind, committed.height)
            return Fate("refused", ident, tx.kind, committed.height, committed.result.log)
        if queries.nonce(engine, signer or tx.signer) >= tx.nonce:
            return Fate("dropped", ident, tx.kind)  # its nonce is spent by another tx
        return Fate("pending", ident, tx.kind)

    def fates(self, engine: Engine) -> list[tuple[Entry, Fate]]:
        """Every entry and the fate of its last tx (the one that may still commit)."""
        found = []
        for entry in self.entries():
            fates = [self.fate_of(engine, tx) for tx in entry.txs]
            done = next((f for f in fates if f.state in ("committed", "refused")), None)
            found.append((entry, done or fates[-1]))
        return found

    def forget_settled(self, engine: Engine) -> int:
        """Remove entries whose tx committed, was refused or can never commit."""
        removed = 0
        for entry, fate in self.fates(engine):
            if fate.state != "pending":
                self._remove(entry.key)
                removed += 1
        return removed

    @staticmethod
    def _none_committed(engine: Engine, txs: list[bytes]) -> bool:
        return all(queries.tx_location(engine, tx_id(tx)) is None for tx in txs)

    # -- storage -------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.json")):
            entry = self.entry(path.stem)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.created_at)

    def entry(self, key: str) -> Entry | None:
        path = self.folder / f"{key}.json"
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None  # torn by a crash before its fsync: that tx was never submitted
        txs = tuple(bytes.fromhex(t) for t in data["txs"])
        return Entry(key, str(data["kind"]), txs, float(data["created_at"]))

    def _write(self, key: str, kind: str, txs: list[bytes]) -> None:
        """Durably, before the last of `txs` is submitted: write, fsync, rename, fsync dir."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.folder / f"{key}.json"
        earlier = self.entry(key)
        created = earlier.created_at if earlier is not None else time.time()
        data = orjson.dumps({"kind": kind, "txs": [t.hex() for t in txs], "created_at": created})
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.folder)

    def _remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{key}.json").unlink()
            _fsync_dir(self.folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "its commit was not seen in time"
    return f"the node stopped answering: {exc}"
