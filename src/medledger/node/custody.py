"""What this hospital keeps for other members: their sealed vault replicas and key shares.

`<home>/custody.db` is a SQLite file apart from the vault: a blob held here never enters this
hospital's vault, its index or its API, so a peer can neither read it (it has no key: the
owner sealed it under its backup key, see vault/replication.py) nor present it as a record
of its own. Each item is `(owner, item id, blob, sha256, size, version)`; the owner is always
the authenticated caller (the gateway passes it), so one member can never read, replace or
drop another's items. Usage is counted per owner and bounded by the consortium parameter
`custody_quota_mb`.

Nothing is destroyed at once on the owner's say-so: the owner's key may be in a thief's hands
(a machine taken by ransomware signs as the hospital until the members vote its rebinding). A
drop, or a put that replaces an item with other bytes, moves the previous version to the
owner's *trash*, kept `custody_grace_days` (consortium parameter) and then purged by the
running node (`purge_expired`). The trash counts against the quota like live items: when the
quota is full, new items are refused (507); neither live items nor the trash are evicted to
make room. The trash is listed and served back to the owner (a restore picks, per record, the
version the chain's commitment names), and leaves early in two cases only: a purge backed by
the chain's shred statement (`purge`, an erasure), and `empty_trash` by a key other than the
one that put it (the owner rebound to new keys by vote, once restored).

Item ids are opaque to the holder (an HMAC for replicas; a reserved prefix for escrow shares).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cbor2

#: An item id: lowercase letters, digits and `._:-`, at most 128 characters.
ITEM_ID = re.compile(r"[0-9a-z][0-9a-z._:-]{0,127}")
#: Largest blob one item may hold.
MAX_ITEM_BYTES = 16 * 1024 * 1024
#: What an item costs against the quota besides its blob: its row, id and hash on disk (an
#: empty blob is not free, or a member could fill a holder's disk with empty items).
ITEM_OVERHEAD = 256
#: Items one call may name (put, drop, get) and one listing page may return.
MAX_ITEMS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    owner   TEXT NOT NULL,
    id      TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256  BLOB NOT NULL,
    size    INTEGER NOT NULL,
    blob    BLOB NOT NULL,
    put_by  BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (owner, id)
) STRICT;
CREATE TABLE IF NOT EXISTS usage (
    owner TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    items INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS trash (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    owner      TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    sha256     BLOB NOT NULL,
    size       INTEGER NOT NULL,
    blob       BLOB NOT NULL,
    trashed_at REAL NOT NULL,
    by_key     BLOB NOT NULL,
    UNIQUE (owner, id, sha256)
) STRICT;
CREATE INDEX IF NOT EXISTS trash_by_time ON trash (trashed_at);
"""


class CustodyRefused(ValueError):
    """A put, drop or get that cannot be done; the message names the item and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One blob as its owner sent it."""

    id: str
    version: int
    sha256: bytes
    blob: bytes


@dataclass(frozen=True)
class ItemInfo:
    """What a listing says of an item (never its blob); `trash` is the trashed version's
    number in the trash (0: the live item)."""

    id: str
    version: int
    sha256: bytes
    size: int
    trash: int = 0


@dataclass(frozen=True)
class Usage:
    bytes: int
    items: int
    trash_bytes: int = 0
    trash_items: int = 0

    @property
    def counted(self) -> int:
        """What the quota counts: live and trashed blobs, and ITEM_OVERHEAD for each."""
        return self.bytes + self.trash_bytes + (self.items + self.trash_items) * ITEM_OVERHEAD


DROP_RECEIPT_LABEL = "medledger/custody-drop/v1"


def drop_receipt_message(holder: str, owner: str, ids: list[str]) -> bytes:
    """What a holder signs (Ed25519, its hospital key) when it drops `owner`'s items (to its
    trash, or purged for an erasure): canonical CBOR of the label, holder, owner and the
    sorted ids."""
    return cbor2.dumps([DROP_RECEIPT_LABEL, holder, owner, sorted(set(ids))], canonical=True)


def check_item_id(value: object, where: str) -> str:
    """The id, or a refusal naming `where`."""
    if not isinstance(value, str) or ITEM_ID.fullmatch(value) is None:
        raise CustodyRefused(
            400, f"{where}: bad item id (1 to 128 of lowercase letters, digits, '._:-')"
        )
    return value


class CustodyStore:
    """The custody file of one hospital. Thread-safe (one connection under a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(items)")}
        if "put_by" not in columns:  # a custody file from before the trash
            self._db.execute("ALTER TABLE items ADD COLUMN put_by BLOB NOT NULL DEFAULT x''")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def usage(self, owner: str) -> Usage:
        with self._lock:
            return self._usage(owner)

    def _usage(self, owner: str) -> Usage:
        row = self._db.execute(
            "SELECT bytes, items FROM usage WHERE owner = ?", (owner,)
        ).fetchone()
        trash = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM trash WHERE owner = ?", (owner,)
        ).fetchone()
        live = (0, 0) if row is None else (int(row[0]), int(row[1]))
        return Usage(*live, int(trash[0]), int(trash[1]))

    def put(
        self,
        owner: str,
        items: list[Item],
        quota_bytes: int,
        *,
        by_key: bytes = b"",
        now: float | None = None,
    ) -> Usage:
        """Store (or replace) the owner's items, all or none: each is checked (id, size, the
        sha256 its owner stated) and the owner's usage, trash included, must stay within
        `quota_bytes`. A replaced item whose bytes differ goes to the trash (`by_key`: the
        key that puts them, kept with each version; `now`: when)."""
        if len(items) > MAX_ITEMS:
            raise CustodyRefused(413, f"items: {len(items)} in one call, at most {MAX_ITEMS}")
        seen: set[str] = set()
        for i, item in enumerate(items):
            check_item_id(item.id, f"items[{i}].id")
            if item.id in seen:
                raise CustodyRefused(400, f"items[{i}].id: {item.id} named twice")
            seen.add(item.id)
            if len(item.blob) > MAX_ITEM_BYTES:
                raise CustodyRefused(
                    413, f"items[{i}].blob: {len(item.blob)} bytes, at most {MAX_ITEM_BYTES}"
                )
            if hashlib.sha256(item.blob).digest() != item.sha256:
                raise CustodyRefused(400, f"items[{i}].sha256: does not match the blob sent")
            if item.version < 0:
                raise CustodyRefused(400, f"items[{i}].version: must be at least 0")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._usage(owner)
                held = self._sizes(owner, [item.id for item in items])
                replaced = [it.id for it in items if it.id in held and held[it.id][1] != it.sha256]
                self._to_trash(owner, replaced, now)
                new_bytes = before.bytes + sum(
                    len(item.blob) - held.get(item.id, (0, b""))[0] for item in items
                )
                new_items = before.items + sum(1 for item in items if item.id not in held)
                self._db.executemany(
                    "INSERT OR REPLACE INTO items (owner, id, version, sha256, size, blob, put_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (owner, it.id, it.version, it.sha256, len(it.blob), it.blob, by_key)
                        for it in items
                    ],
                )
                self._set_usage(owner, new_bytes, new_items)
                after = self._usage(owner)
                if after.counted > quota_bytes:
                    raise CustodyRefused(
                        507,
                        f"over quota: {owner} would hold {after.items} items of {after.bytes} "
                        f"bytes here and {after.trash_items} of {after.trash_bytes} in its trash "
                        f"(each counts {ITEM_OVERHEAD} bytes more; the trash empties after "
                        f"custody_grace_days), the consortium's custody_quota_mb allows "
                        f"{quota_bytes}",
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return after

    def drop(
        self, owner: str, ids: list[str], *, now: float | None = None
    ) -> tuple[list[str], list[str]]:
        """Move the owner's items named to its trash; returns (dropped, absent)."""
        self._check_ids(ids)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = self._sizes(owner, ids)
                self._to_trash(owner, list(held), now)
                self._db.executemany(
                    "DELETE FROM items WHERE owner = ? AND id = ?", [(owner, i) for i in held]
                )
                before = self._usage(owner)
                self._set_usage(
                    owner, before.bytes - sum(s for s, _ in held.values()), before.items - len(held)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        dropped = sorted(held)
        return dropped, sorted(set(ids) - held.keys())

    def purge(self, owner: str, ids: list[str]) -> list[str]:
        """Destroy the owner's items named, live and trashed (an erasure the chain states:
        the gateway checks it first); returns the ids that were held in either."""
        self._check_ids(ids)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = self._sizes(owner, ids)
                self._db.executemany(
                    "DELETE FROM items WHERE owner = ? AND id = ?", [(owner, i) for i in held]
                )
                before = self._usage(owner)
                self._set_usage(
                    owner, before.bytes - sum(s for s, _ in held.values()), before.items - len(held)
                )
                trashed = {
                    item_id
                    for item_id in ids
                    if self._db.execute(
                        "DELETE FROM trash WHERE owner = ? AND id = ?", (owner, item_id)
                    ).rowcount
                }
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return sorted(held.keys() | trashed)

    def purge_expired(self, before: float) -> int:
        """Destroy every trashed version trashed before `before` (epoch seconds: the running
        node passes now minus custody_grace_days); returns how many."""
        with self._lock:
            return self._db.execute("DELETE FROM trash WHERE trashed_at < ?", (before,)).rowcount

    def empty_trash(self, owner: str, key: bytes) -> int:
        """Destroy the owner's trashed versions that another key than `key` put (the owner
        rebound to new keys and restored: what its old key, or a thief's copy of it, sent);
        how many."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM trash WHERE owner = ? AND by_key != ?", (owner, key)
            ).rowcount

    def listing(self, owner: str, after: str = "", limit: int = MAX_ITEMS) -> list[ItemInfo]:
        """The owner's items in id order, after `after`, at most `limit`."""
        limit = max(1, min(limit, MAX_ITEMS))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, version, sha256, size FROM items WHERE owner = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (owner, after, limit),
            ).fetchall()
        return [ItemInfo(str(r[0]), int(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def trash_listing(self, owner: str, after: int = 0, limit: int = MAX_ITEMS) -> list[ItemInfo]:
        """The owner's trashed versions in trash order, after number `after`, at most `limit`."""
        limit = max(1, min(limit, MAX_ITEMS))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, version, sha256, size, seq FROM trash WHERE owner = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (owner, after, limit),
            ).fetchall()
        return [ItemInfo(str(r[0]), int(r[1]), bytes(r[2]), int(r[3]), int(r[4])) for r in rows]

    def get(self, owner: str, ids: Iterable[str]) -> list[Item]:
        """The owner's items named that are held here (absent ones are left out)."""
        out: list[Item] = []
        with self._lock:
            for item_id in ids:
                row = self._db.execute(
                    "SELECT version, sha256, blob FROM items WHERE owner = ? AND id = ?",
                    (owner, item_id),
                ).fetchone()
                if row is not None:
                    out.append(Item(item_id, int(row[0]), bytes(row[1]), bytes(row[2])))
        return out

    def get_trashed(self, owner: str, numbers: Iterable[int]) -> dict[int, Item]:
        """The owner's trashed versions by their number in the trash (absent ones left out)."""
        out: dict[int, Item] = {}
        with self._lock:
            for seq in numbers:
                row = self._db.execute(
                    "SELECT id, version, sha256, blob FROM trash WHERE owner = ? AND seq = ?",
                    (owner, seq),
                ).fetchone()
                if row is not None:
                    out[seq] = Item(str(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))
        return out

    def owners(self) -> dict[str, Usage]:
        """Whose items this hospital holds, and how much."""
        with self._lock:
            rows = self._db.execute("SELECT owner FROM usage ORDER BY owner").fetchall()
            return {str(r[0]): self._usage(str(r[0])) for r in rows}

    @staticmethod
    def _check_ids(ids: list[str]) -> None:
        if len(ids) > MAX_ITEMS:
            raise CustodyRefused(413, f"ids: {len(ids)} in one call, at most {MAX_ITEMS}")
        for i, item_id in enumerate(ids):
            check_item_id(item_id, f"ids[{i}]")

    def _to_trash(self, owner: str, ids: list[str], now: float | None) -> None:
        """Copy the live versions of `ids` to the trash (one copy of the same bytes), with
        the key that put each."""
        now = time.time() if now is None else now
        self._db.executemany(
            "INSERT OR IGNORE INTO trash (owner, id, version, sha256, size, blob, trashed_at, "
            "by_key) SELECT owner, id, version, sha256, size, blob, ?, put_by FROM items "
            "WHERE owner = ? AND id = ?",
            [(now, owner, item_id) for item_id in ids],
        )

    def _sizes(self, owner: str, ids: list[str]) -> dict[str, tuple[int, bytes]]:
        """(size, sha256) of the owner's live items among `ids`."""
        found: dict[str, tuple[int, bytes]] = {}
        for item_id in ids:
            row = self._db.execute(
                "SELECT size, sha256 FROM items WHERE owner = ? AND id = ?", (owner, item_id)
            ).fetchone()
            if row is not None:
                found[item_id] = (int(row[0]), bytes(row[1]))
        return found

    def _set_usage(self, owner: str, n_bytes: int, n_items: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO usage (owner, bytes, items) VALUES (?, ?, ?)",
            (owner, n_bytes, n_items),
        )
