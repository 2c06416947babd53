"""The state store: a key-value table in SQLite (WAL) plus the per-height block records.

Each contract owns a key prefix (its "tables"). Writes of a block are buffered in a
`StateView` overlay and written, with the block record and the new height and app hash, in one
SQLite transaction: a process killed mid-block leaves the store at the previous height.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medledger.ledger import codec
from medledger.ledger.results import BlockHeader, BlockRecord, Event, TxResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, header BLOB NOT NULL, signature BLOB NOT NULL,
    txs BLOB NOT NULL, results BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tx_index (
    id BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL
) WITHOUT ROWID;
"""


_CACHE_SIZE = 200_000

# SQLite's page cache of the sole writer, in KiB (SQLite's default is 2 MiB). A block's rows
# land at random places of the state's and the tx index's B-trees (a practitioner's key, a tx
# id): once the file outgrew 2 MiB, most of them read their leaf page and the pages above it
# from the file again, ≈ 15 KB read per tx at 80,000 txs, growing with the chain (docs/
# benchmarks.md, "Session 14 (grow13)"). At most this much memory, used as the file grows.
_WRITER_PAGE_CACHE_KIB = 65_536

# The sole writer writes its tx index rows for several blocks at once (`Store.commit`): at
# most this many blocks or this many txs wait (in memory, and in their durable block rows).
_INDEX_EVERY_BLOCKS = 16
_INDEX_EVERY_TXS = 8192


def _upper_bound(prefix: bytes) -> bytes:
    # Keys are UTF-8 text, so 0xff never occurs in them and bounds every extension of prefix.
    return prefix + b"\xff"


class Reader(Protocol):
    def get_raw(self, key: bytes) -> bytes | None: ...
    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...


class KeyFilter:
    """The keys stored in `kv`, as a Bloom filter: "absent" is certain, "maybe" asks SQLite.

    A tx that creates something looks its new keys up first (is this practitioner, this
    key, this entry id taken?), and each such lookup missed the cache and cost an SQLite
    query (6-20 µs, three per registration, one per audit entry), the largest item of CheckTx
    after the signature. Three bit probes from the key's hash answer most of them in
    about 1 µs. Correctness needs no false "absent": every key is added before the commit
    that stores it (a rolled-back commit leaves only extra bits, i.e. more "maybe"), and
    only the store's single writer adds. Deletions leave their bits (more "maybe").
    Sized at open: 16 bits per stored key, at least 1 MiB; the share of "maybe" for absent
    keys grows slowly past that (a restart resizes).
    """

    def __init__(self, bits: int) -> None:
        size = 1 << max(23, (bits - 1).bit_length())
        self._mask = size - 1
        self._bits = bytearray(size >> 3)

    @classmethod
    def of(cls, keys: Iterator[bytes], count: int) -> KeyFilter:
        found = cls(16 * count)
        found.add_all(keys)
        return found

    def add_all(self, keys: Iterable[bytes]) -> None:
        """Set each key's three bits (the loop inlined: a block adds two to four keys per
        tx)."""
        bits, mask = self._bits, self._mask
        for key in keys:
            h = hash(key)
            step = (h >> 29) | 1
            pos = h & mask
            bits[pos >> 3] |= 1 << (pos & 7)
            pos = (h + step) & mask
            bits[pos >> 3] |= 1 << (pos & 7)
            pos = (h + 2 * step) & mask
            bits[pos >> 3] |= 1 << (pos & 7)

    def may_contain(self, key: bytes) -> bool:
        h = hash(key)
        step = (h >> 29) | 1
        bits, mask = self._bits, self._mask
        pos = h & mask
        if not bits[pos >> 3] >> (pos & 7) & 1:
            return False
        pos = (h + step) & mask
        if not bits[pos >> 3] >> (pos & 7) & 1:
            return False
        pos = (h + 2 * step) & mask
        return bool(bits[pos >> 3] >> (pos & 7) & 1)


class Store:
    """Committed state and history of one replica.

    `key_filter`: this is the one Store that commits to its file (`Application.open`): keep
    a `KeyFilter` of the stored keys, and write the tx index of several blocks at once
    (`_index_tail`). A second Store on the same file (verify's snapshot, the CLI) must not:
    another connection's commits would not reach its filter nor its tail.
    """

    def __init__(self, path: Path | str, key_filter: bool = False) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # Committed values read recently (None for a known absence). Only commit() changes
        # committed state, and it updates this cache in the same step.
        self._cache: dict[bytes, bytes | None] = {}
        self._meta_cache: dict[str, bytes | None] = {}
        self._filter: KeyFilter | None = None
        self._seen_height: bytes | None = None  # by reread()
        # The sole writer's committed txs not yet in `tx_index` (id -> height, index): those
        # of the blocks above meta `tx_indexed`; rebuilt from the block rows at open.
        self._tail: dict[bytes, tuple[int, int]] | None = None
        # Another Store's tail as this one last read it (`_read_tail`): (indexed, scanned up
        # to, the txs): a client polling for its tx decodes each block once, not every time.
        self._seen_tail: tuple[int, int, dict[bytes, tuple[int, int]]] = (0, 0, {})
        if key_filter:
            self._db.execute(f"PRAGMA cache_size = -{_WRITER_PAGE_CACHE_KIB}")
            (count,) = self._db.execute("SELECT count(*) FROM kv").fetchone()
            keys = (bytes(k) for (k,) in self._db.execute("SELECT k FROM kv"))
            self._filter = KeyFilter.of(keys, int(count))
            self._tail = self._unindexed()

    def close(self) -> None:
        """Close the file; the sole writer first writes its tail's index rows, so that a
        cleanly closed store is indexed whole (code that reads `tx_index` alone, an older
        release after a downgrade, then finds every tx; review 12b, finding 1)."""
        if self._tail:
            height = self.height
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO tx_index (id, height, idx) VALUES (?, ?, ?)",
                    sorted((k, h, i) for k, (h, i) in self._tail.items()),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (k, v) VALUES ('tx_indexed', ?)",
                    (str(height).encode(),),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._tail = {}
        self._db.close()

    def reread(self) -> None:
        """Forget cached values once another connection has committed a block since they were
        read: for a Store over a file another process commits to (`consensus.solo_shared`).
        Call it inside `snapshot()`, so that the height it compares is the one then read."""
        row = self._db.execute("SELECT v FROM meta WHERE k = 'height'").fetchone()
        height = None if row is None else bytes(row[0])
        if height != self._seen_height:
            self._cache.clear()
            self._meta_cache.clear()
            self._seen_height = height

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read one consistent state while another connection keeps committing (WAL)."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    # -- committed state ---------------------------------------------------------------
    def get_raw(self, key: bytes) -> bytes | None:
        try:
            return self._cache[key]
        except KeyError:
            pass
        if self._filter is not None and not self._filter.may_contain(key):
            value = None
        else:
            row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            value = None if row is None else bytes(row[0])
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = value
        return value

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        rows = self._db.execute(
            "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k",
            (prefix, _upper_bound(prefix)),
        ).fetchall()
        for k, v in rows:
            yield bytes(k), bytes(v)

    def state_digest(self) -> bytes:
        """SHA-256 over every key and value in order: compares two replicas' whole state."""
        h = hashlib.sha256()
        for k, v in self._db.execute("SELECT k, v FROM kv ORDER BY k"):
            h.update(codec.encode([bytes(k), bytes(v)]))
        return h.digest()

    # -- height and app hash -----------------------------------------------------------
    def _meta(self, key: str) -> bytes | None:
        # Read on every CheckTx: cached, and refreshed by commit() in the same step it writes.
        if key not in self._meta_cache:
            row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
            self._meta_cache[key] = None if row is None else bytes(row[0])
        return self._meta_cache[key]

    @property
    def initialized(self) -> bool:
        return self._meta("height") is not None

    @property
    def height(self) -> int:
        raw = self._meta("height")
        return 0 if raw is None else int(raw.decode())

    @property
    def app_hash(self) -> bytes:
        return self._meta("app_hash") or b""

    @property
    def last_time_ms(self) -> int | None:
        """The last committed block's time (None before the first block)."""
        raw = self._meta("time")
        return None if raw is None else int(raw.decode())

    # -- commit ------------------------------------------------------------------------
    def commit(
        self,
        writes: dict[bytes, bytes | None],
        height: int,
        app_hash: bytes,
        record: BlockRecord | None,
    ) -> None:
        """Persist a block's writes, its record and the new height in one transaction."""
        db = self._db
        puts = [(k, v) for k, v in writes.items() if v is not None]
        if self._filter is not None:  # before the commit makes them readable
            self._filter.add_all([k for k, _ in puts])
        db.execute("BEGIN IMMEDIATE")
        try:
            dels = [(k,) for k, v in writes.items() if v is None]
            if puts:
                db.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", puts)
            if dels:
                db.executemany("DELETE FROM kv WHERE k = ?", dels)
            meta: dict[str, bytes | None] = {"height": str(height).encode(), "app_hash": app_hash}
            indexed: _Indexed | None = None
            if record is not None:
                db.execute(
                    "INSERT INTO blocks (height, header, signature, txs, results)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        record.height,
                        record.header_bytes,
                        record.signature,
                        *_record_bytes(record),
                    ),
                )
                meta["time"] = str(record.header.time_ms).encode()
                indexed = self._index(record, meta)
            db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(meta.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._cache.clear()
            self._meta_cache.clear()
            raise
        if self._tail is not None and indexed is not None:  # before the height shows it
            if indexed.flushed:
                self._tail = {}
            else:
                for tx_id, place in indexed.located.items():
                    self._tail.setdefault(tx_id, place)
        self._meta_cache.update(meta)
        if len(self._cache) + len(writes) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache.update(writes)

    def _index(self, record: BlockRecord, meta: dict[str, bytes | None]) -> _Indexed:
        """Index a block's txs inside its commit's transaction.

        A Store that is not the sole writer writes their rows at once. The sole writer keeps
        them in its tail, and writes the tail's rows, sorted, once it holds
        `_INDEX_EVERY_BLOCKS` blocks or `_INDEX_EVERY_TXS` txs: rows of random ids written
        block by block each dirtied a page of the index of their own (≈ 7 µs per tx with the
        WAL's writes at 30,000 txs; ≈ 3 in batches of 16 blocks). Nothing is lost by waiting:
        the tail is a function of the block rows, committed with them (`_unindexed` rebuilds
        it at open)."""
        located: dict[bytes, tuple[int, int]] = {}
        for i, t in enumerate(record.txs):
            located.setdefault(codec.tx_id(t), (record.height, i))
        tail = self._tail
        if tail is None:
            rows = [(k, h, i) for k, (h, i) in located.items()]
        else:
            raw = self._meta("tx_indexed")
            if raw is None:  # the first deferred block: every block below it has its rows
                raw = meta["tx_indexed"] = str(record.height - 1).encode()
            waiting = len(tail) + len(located)
            if record.height - int(raw) < _INDEX_EVERY_BLOCKS and waiting < _INDEX_EVERY_TXS:
                return _Indexed(located, flushed=False)
            # a tx committed twice keeps its first place (INSERT OR IGNORE, as before)
            rows = sorted((k, h, i) for k, (h, i) in {**located, **tail}.items())
        self._db.executemany(
            "INSERT OR IGNORE INTO tx_index (id, height, idx) VALUES (?, ?, ?)", rows
        )
        if tail is not None:
            meta["tx_indexed"] = str(record.height).encode()
        return _Indexed(located, flushed=True)

    def _indexed_height(self) -> int:
        """The height up to which `tx_index` holds every tx, read from the file (another
        process may be writing it). A store written before the index was deferred has no
        `tx_indexed`: it indexed every block, so all of its height."""
        row = self._db.execute(  # one statement, one snapshot: 'tx_indexed' sorts first
            "SELECT k, v FROM meta WHERE k IN ('tx_indexed', 'height') ORDER BY k DESC"
        ).fetchone()
        return 0 if row is None else int(bytes(row[1]).decode())

    def _unindexed(self) -> dict[bytes, tuple[int, int]]:
        """The committed txs above `_indexed_height`, from their block rows."""
        located: dict[bytes, tuple[int, int]] = {}
        above = self._indexed_height()
        for height, txs in self._db.execute(
            "SELECT height, txs FROM blocks WHERE height > ? ORDER BY height", (above,)
        ):
            for i, t in enumerate(codec.decode_trusted(bytes(txs))):
                located.setdefault(codec.tx_id(bytes(t)), (int(height), i))
        return located

    # -- history -----------------------------------------------------------------------
    def block(self, height: int, strict: bool = False) -> BlockRecord | None:
        """A committed block's record (`strict`: with the canonical re-check, for verify)."""
        row = self._db.execute(
            "SELECT header, signature, txs, results FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            return None
        return decode_record(
            bytes(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3]), strict=strict
        )

    def block_hash(self, height: int) -> bytes | None:
        """The hash of a committed block's header, without decoding the block's txs."""
        row = self._db.execute("SELECT header FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else codec.sha256(bytes(row[0]))

    def raw_block(self, height: int) -> tuple[bytes, bytes, bytes, bytes] | None:
        row = self._db.execute(
            "SELECT header, signature, txs, results FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3]))

    def locate_tx(self, tx_id: bytes) -> tuple[int, int] | None:
        """Where a committed tx is: (height, index in its block): in `tx_index`, or in the
        tail of blocks not indexed yet (`_tail`, or read from the file by another Store)."""
        tail = self._tail  # taken first: a commit moving it into the index replaces it
        if tail is not None:
            row = self._indexed_place(tx_id)
            return row if row is not None else tail.get(tx_id)
        row = self._indexed_place(tx_id)
        if row is not None:  # the common case: one indexed lookup
            return row
        with self._one_read():  # the writer may move its tail into the index meanwhile
            row = self._indexed_place(tx_id)
            return row if row is not None else self._read_tail().get(tx_id)

    def tx_ids_with_prefix(self, prefix: bytes, limit: int = 2) -> list[bytes]:
        """Tx ids starting with prefix: lets people type the short ids `ledger show` prints."""
        with self._one_read():
            tail = self._tail if self._tail is not None else self._read_tail()
            rows = self._db.execute(
                "SELECT id FROM tx_index WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                (prefix, prefix + b"\xff" * (32 - len(prefix)) + b"\xff", limit),
            ).fetchall()
        found = {bytes(r[0]) for r in rows} | {k for k in list(tail) if k.startswith(prefix)}
        return sorted(found)[:limit]

    def _indexed_place(self, tx_id: bytes) -> tuple[int, int] | None:
        row = self._db.execute("SELECT height, idx FROM tx_index WHERE id = ?", (tx_id,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    @contextlib.contextmanager
    def _one_read(self) -> Iterator[None]:
        """The reads inside see one snapshot of the file (WAL): the index, `tx_indexed` and
        the block rows agree (inside `snapshot()` already, nothing more is needed)."""
        if self._db.in_transaction:
            yield
            return
        with self.snapshot():
            yield

    def _read_tail(self) -> dict[bytes, tuple[int, int]]:
        """Another Store's tail, read from the file (inside `_one_read`): only the blocks
        committed since the last call are decoded (review 12b, finding 2)."""
        indexed = self._indexed_height()
        seen_indexed, scanned, located = self._seen_tail
        if seen_indexed != indexed:
            scanned, located = indexed, {}
        fresh = self._db.execute(
            "SELECT height, txs FROM blocks WHERE height > ? ORDER BY height", (scanned,)
        ).fetchall()
        if fresh:
            located = dict(located)  # a caller may still hold the last one
            for height, txs in fresh:
                for i, t in enumerate(codec.decode_trusted(bytes(txs))):
                    located.setdefault(codec.tx_id(bytes(t)), (int(height), i))
                scanned = int(height)
        self._seen_tail = (indexed, scanned, located)
        return located

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Raw access for tooling and tamper tests; never used by the state machine."""
        return self._db.execute(sql, params).fetchall()


@dataclass(frozen=True)
class _Indexed:
    """A block's txs as `Store._index` left them: their places, and whether they (and the
    tail before them) are in `tx_index` now."""

    located: dict[bytes, tuple[int, int]]
    flushed: bool


def _record_bytes(record: BlockRecord) -> tuple[bytes, bytes]:
    """A block record's txs and outcome as stored: canonical CBOR of `txs` and of
    `[[r.to_obj() ...], [e.to_obj() ...]]`. Lists of bytes, ints and text, no map: canonical
    as plainly encoded. The txs go to cbor2's C encoder; the outcome is written by
    `_outcome_bytes`, the same bytes at less than half of cbor2's cost (five nested arrays
    per tx, which cbor2 encodes at ≈ 0.25 µs each)."""
    return codec.encode_ordered(record.txs), _outcome_bytes(record.results, record.events)


def _outcome_bytes(results: list[TxResult], events: tuple[Event, ...]) -> bytes:
    """CBOR of `[[[code, log, [[type, [[k, v] ...]] ...]] ...], [[type, [[k, v] ...]] ...]]`,
    byte for byte what `codec.encode_ordered` gives (tests/ledger/test_store.py compares
    them): array heads written here, short texts (event types, attribute names) from a
    table, anything but text and small ints through cbor2."""
    parts = [b"\x82", _array_head(len(results))]
    append = parts.append
    for r in results:
        code = r.code
        append(
            _RESULT_HEADS[code] if type(code) is int and 0 <= code < 24 else b"\x83" + _cbor(code)
        )
        append(_text(r.log))
        append(_array_head(len(r.events)))
        for e in r.events:
            _event_bytes(e, append)
    append(_array_head(len(events)))
    for e in events:
        _event_bytes(e, append)
    return b"".join(parts)


def _event_bytes(event: Event, append: Any) -> None:
    append(b"\x82")
    append(_name(event.type))
    append(_array_head(len(event.attrs)))
    for k, v in event.attrs:
        append(b"\x82")
        append(_name(k))
        append(_text(v))


def _array_head(n: int) -> bytes:
    if n < 24:
        return _ARRAY_HEADS[n]
    if n < 1 << 8:
        return bytes((0x98, n))
    if n < 1 << 16:
        return b"\x99" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\x9a" + n.to_bytes(4, "big")
    return b"\x9b" + n.to_bytes(8, "big")


def _text(value: Any) -> bytes:
    if type(value) is str and len(value) < 24 and value.isascii():
        return _TEXT_HEADS[len(value)] + value.encode()
    return _cbor(value)


def _name(value: Any) -> bytes:
    """A text met again and again (event types, attribute names): encoded once."""
    if type(value) is not str:
        return _cbor(value)
    found = _names.get(value)
    if found is None:
        found = _names[value] = _cbor(value)
        if len(_names) > 4096:
            _names.clear()
    return found


_cbor = codec.encode_ordered
_names: dict[str, bytes] = {}
_ARRAY_HEADS = [bytes((0x80 | n,)) for n in range(24)]
_TEXT_HEADS = [bytes((0x60 | n,)) for n in range(24)]
_RESULT_HEADS = [bytes((0x83, n)) for n in range(24)]


def decode_record(
    header: bytes, signature: bytes, txs: bytes, results: bytes, strict: bool = False
) -> BlockRecord:
    """A stored block record. This replica encoded it, so everyday reads skip the canonical
    re-check; `verify` reads strictly (`strict=True`), since it is looking for tampering."""
    decode = codec.decode if strict else codec.decode_trusted
    tx_list = decode(txs)
    outcome = decode(results)
    if not isinstance(tx_list, list) or not isinstance(outcome, list) or len(outcome) != 2:
        raise ValueError("block record is not well formed")
    result_list, events = outcome
    return BlockRecord(
        header=BlockHeader.decode(header),
        header_bytes=header,
        signature=signature,
        txs=[bytes(t) for t in tx_list],
        results=[TxResult.from_obj(r) for r in result_list],
        events=tuple(Event.from_obj(e) for e in events),
    )


_UNWRITTEN: Any = object()  # a key a view has not written (None is a deletion)
_loads = codec.decode_trusted  # the state's own bytes: no canonical re-check


class StateView:
    """A write-buffering view over a Reader: the state a block (or a tx) is executed against.

    Writes are kept in order in `log` for the app hash, and in `writes` (last value wins) for
    reads and for the commit. `merge_into` folds a tx's view into its block's view.
    """

    def __init__(self, parent: Reader) -> None:
        self.parent = parent
        self.writes: dict[bytes, bytes | None] = {}
        self.log: list[tuple[bytes, bytes | None]] = []

    def get_raw(self, key: bytes) -> bytes | None:
        value: bytes | None = self.writes.get(key, _UNWRITTEN)
        if value is _UNWRITTEN:
            return self.parent.get_raw(key)
        return value

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        local = sorted((k, v) for k, v in self.writes.items() if k.startswith(prefix))
        parent_items = self.parent.scan_raw(prefix)
        li = 0
        for pk, pv in parent_items:
            while li < len(local) and local[li][0] < pk:
                lk, lv = local[li]
                if lv is not None:
                    yield lk, lv
                li += 1
            if li < len(local) and local[li][0] == pk:
                lk, lv = local[li]
                if lv is not None:
                    yield lk, lv
                li += 1
                continue
            yield pk, pv
        for lk, lv in local[li:]:
            if lv is not None:
                yield lk, lv

    def put_raw(self, key: bytes, value: bytes | None) -> None:
        self.writes[key] = value
        self.log.append((key, value))

    def merge_into(self, other: StateView) -> None:
        other.writes.update(self.writes)
        other.log.extend(self.log)

    # -- typed helpers used by contracts ----------------------------------------------
    def get(self, key: str) -> Any:
        raw = self.get_raw(key.encode())
        return None if raw is None else _loads(raw)

    def put(self, key: str, value: Any) -> None:
        raw_key = key.encode()
        raw = codec.encode_trusted(value)
        self.writes[raw_key] = raw
        self.log.append((raw_key, raw))

    def delete(self, key: str) -> None:
        self.put_raw(key.encode(), None)

    def has(self, key: str) -> bool:
        return self.get_raw(key.encode()) is not None

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        for k, v in self.scan_raw(prefix.encode()):
            yield k.decode(), codec.decode_trusted(v)


def writes_digest(log: list[tuple[bytes, bytes | None]]) -> bytes:
    """H(ordered writes of a block).

    Each write is hashed as len(key) key, then len(value) value or 0xffffffff for a deletion
    (lengths as 4-byte big-endian): unambiguous. The parts are joined and hashed in one call,
    the usual lengths taken from a table: the same bytes as hashing them one by one, at about
    two thirds of the cost (every node runs it on every write).
    """
    parts: list[bytes] = []
    append = parts.append
    lengths = _LENGTHS
    for k, v in log:
        n = len(k)
        append(lengths[n] if n < _TABLED else n.to_bytes(4, "big"))
        append(k)
        if v is None:
            append(_DELETED)
        else:
            n = len(v)
            append(lengths[n] if n < _TABLED else n.to_bytes(4, "big"))
            append(v)
    return hashlib.sha256(b"".join(parts)).digest()


_TABLED = 4096
_LENGTHS = [n.to_bytes(4, "big") for n in range(_TABLED)]
_DELETED = b"\xff\xff\xff\xff"
