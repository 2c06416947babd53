"""The vault's SQL, written once for both databases.

`SQLBackend` implements every operation of the `Backend` interface (backend.py)
with one body of SQL. What truly differs between SQLite and PostgreSQL lives in
a small `Dialect` object per database (sqlite_backend.py, postgres_backend.py):
connecting, opening transactions, placeholder syntax, "insert unless it is
already there", boolean literals and column types, row locks, and compaction.
So the two backends cannot drift apart: a new query is written here once.

Queries are written with `?` placeholders; `Dialect.sql()` turns them into the
database's own syntax. Booleans are bound as Python bools (SQLite stores them
as 0/1 in its INTEGER columns) and decoded with bool().
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import orjson

from medledger.vault.backend import MIGRATES_FROM, SCHEMA_REFUSAL, SCHEMA_VERSION
from medledger.vault.errors import VaultConfigError
from medledger.vault.models import (
    CopyErasureRow,
    ErasureRow,
    KeyRow,
    ProvisionalUnit,
    RecordInfo,
    RecordRow,
    RidState,
    SetRow,
)
from medledger.vault.replication import item_name, parse_item_name


class Cursor(Protocol):
    """The part of a DB-API cursor the backend reads (sqlite3 and psycopg alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Dialect(Protocol):
    """What differs between the databases; everything else is in SQLBackend."""

    name: str
    # Literals and column types substituted into the schema and the queries.
    true: str
    false: str
    types: dict[str, str]  # keys: int, blob, bool, real, serial (a rising primary key),
    #                        strict (a table suffix)
    for_update: str  # appended to a SELECT that must hold its rows ("" where a
    #                  transaction already holds the database's write lock)
    meta_exists: str  # a query returning a row iff the meta table exists
    location: str  # names the vault in a refusal ("" when that could leak a secret)

    def sql(self, statement: str) -> str:
        """Rewrite `?` placeholders into the database's own syntax."""
        ...

    def execute(self, statement: str, params: Sequence[Any]) -> Cursor:
        """Run one statement (already rewritten by sql()) on the connection."""
        ...

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement (already rewritten by sql()) for each row; the rows changed."""
        ...

    def transaction(self, durable: bool = True) -> AbstractContextManager[None]:
        """Outermost level: a real transaction; nested levels: savepoints. `durable=False`
        (outermost level only): the commit does not wait for the disk (see
        `Backend.transaction`)."""
        ...

    def insert_or_ignore(self, body: str, conflict: str) -> str:
        """`INSERT INTO <body>` that skips rows clashing with `conflict` (a unique key,
        or "" for any)."""
        ...

    def lock_schema(self) -> None:
        """Serialise schema creation between processes (inside the first transaction)."""
        ...

    def lock_rid(self, rid: str) -> None:
        """Serialise puts of one rid until the transaction ends."""
        ...

    def lock_journal(self) -> None:
        """Serialise writers of the replication journal until the transaction ends, so that
        its sequence numbers commit in order (a reader never skips one committed late)."""
        ...

    def compact(self) -> bool:
        """Drop residual copies of freed bytes (see Backend.compact)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


# One schema (version 3) for both databases; {…} are the dialect's types and literals.
# `research_digest_rows` (derived rows, vault/digest.py) came later in version 3: created when
# missing on open, and an older reader simply ignores it; the one-row-per-patient table before
# it (`research_digests`) is dropped on open (derived: nothing is lost).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value {blob} NOT NULL
){strict};
CREATE TABLE IF NOT EXISTS patient_keys (
    pid        TEXT PRIMARY KEY,
    generation {int} NOT NULL,
    wrapped    {blob} NOT NULL,
    n_records  {int} NOT NULL,
    n_copies   {int} NOT NULL,
    manifest   {blob} NOT NULL
){strict};
CREATE TABLE IF NOT EXISTS erasures (
    pid        TEXT NOT NULL,
    generation {int} NOT NULL,
    erased_at  TEXT NOT NULL,
    n_records  {int} NOT NULL,
    n_copies   {int} NOT NULL,
    digest     {blob} NOT NULL,
    purged     {bool} NOT NULL DEFAULT {false},
    PRIMARY KEY (pid, generation)
){strict};
CREATE INDEX IF NOT EXISTS erasures_pending ON erasures (pid, generation) WHERE purged = {false};
CREATE TABLE IF NOT EXISTS key_sets (
    kid        TEXT PRIMARY KEY,
    pid        TEXT NOT NULL,
    generation {int} NOT NULL,
    custodian  TEXT NOT NULL,
    is_copy    {bool} NOT NULL,
    wrapped    {blob} NOT NULL,
    n_records  {int} NOT NULL,
    manifest   {blob} NOT NULL,
    UNIQUE (pid, generation, custodian, is_copy)
){strict};
CREATE TABLE IF NOT EXISTS copy_erasures (
    kid        TEXT PRIMARY KEY,
    pid        TEXT NOT NULL,
    generation {int} NOT NULL,
    custodian  TEXT NOT NULL,
    erased_at  TEXT NOT NULL,
    n_copies   {int} NOT NULL,
    digest     {blob} NOT NULL,
    purged     {bool} NOT NULL DEFAULT {false}
){strict};
CREATE INDEX IF NOT EXISTS copy_erasures_by_patient ON copy_erasures (pid, generation, custodian);
CREATE INDEX IF NOT EXISTS copy_erasures_pending ON copy_erasures (kid) WHERE purged = {false};
CREATE TABLE IF NOT EXISTS records (
    rid           TEXT NOT NULL,
    version       {int} NOT NULL,
    pid           TEXT NOT NULL,
    generation    {int} NOT NULL,
    resource_type TEXT NOT NULL,
    custodian     TEXT NOT NULL,
    is_copy       {bool} NOT NULL,
    nonce         {blob} NOT NULL,
    ciphertext    {blob} NOT NULL,
    salt_ct       {blob},
    kid           TEXT NOT NULL,
    PRIMARY KEY (rid, version)
){strict};
CREATE INDEX IF NOT EXISTS records_by_patient ON records (pid, generation, is_copy);
CREATE INDEX IF NOT EXISTS records_by_set ON records (kid);
CREATE TABLE IF NOT EXISTS shredded_rids (
    rid TEXT PRIMARY KEY,
    pid TEXT NOT NULL
){strict};
CREATE TABLE IF NOT EXISTS aliases (
    alias   {blob} NOT NULL,
    rid     TEXT NOT NULL,
    version {int} NOT NULL,
    pid     TEXT NOT NULL,
    PRIMARY KEY (alias, rid)
){strict};
CREATE INDEX IF NOT EXISTS aliases_by_rid ON aliases (rid, version);
CREATE INDEX IF NOT EXISTS aliases_by_patient ON aliases (pid);
CREATE TABLE IF NOT EXISTS provisional_units (
    unit       TEXT PRIMARY KEY,
    claim      {blob},
    records    {blob} NOT NULL,
    updated_at {real} NOT NULL
){strict};
CREATE TABLE IF NOT EXISTS replication_journal (
    seq  {serial},
    item TEXT NOT NULL,
    at   {real} NOT NULL
){strict};
DROP TABLE IF EXISTS research_digests;
CREATE TABLE IF NOT EXISTS research_digest_rows (
    pid        TEXT NOT NULL,
    category   TEXT NOT NULL,
    generation {int} NOT NULL,
    sealed     {blob} NOT NULL,
    PRIMARY KEY (pid, category)
){strict};
CREATE TABLE IF NOT EXISTS replica_peers (
    peer      TEXT PRIMARY KEY,
    acked_seq {int} NOT NULL,
    acked_at  {real} NOT NULL,
    held      {int} NOT NULL
){strict};
"""

_RECORD_COLS = (
    "r.rid, r.version, r.pid, r.generation, r.resource_type, r.custodian, r.is_copy, "
    "r.nonce, r.ciphertext, r.salt_ct, r.kid"
)
_KEY_COLS = "pid, generation, wrapped, n_records, n_copies, manifest"
_SET_COLS = "kid, pid, generation, custodian, is_copy, wrapped, n_records, manifest"
_COPY_ERASURE_COLS = "kid, pid, generation, custodian, erased_at, n_copies, digest, purged"
_ERASURE_COLS = "pid, generation, erased_at, n_records, n_copies, digest, purged"
_PROVISIONAL_COLS = "unit, claim, records, updated_at"


def schema_statements(dialect: Dialect) -> list[str]:
    """The schema's statements in the dialect's types, one by one (SQLite's executescript
    would COMMIT the surrounding transaction)."""
    script = _SCHEMA.format(false=dialect.false, **dialect.types)
    return [s.strip() for s in script.split(";") if s.strip()]


class SQLBackend:
    """The `Backend` operations over one connection, in the SQL of `dialect`.

    One connection, used under a lock by the Vault (and by compact(), which
    runs outside the Vault's transactions).
    """

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self.name = dialect.name
        self.row_locks = bool(dialect.for_update)
        self._lock = threading.RLock()
        # Items already journaled in the open transaction (one row each is enough), and its
        # nesting depth; a savepoint rolled back restores the set it started with.
        self._journaled: set[str] = set()
        self._depth = 0
        try:
            with self.transaction():
                dialect.lock_schema()
                found = self._check_schema_version()
                for statement in schema_statements(dialect):
                    dialect.execute(statement, ())
                self.set_meta_if_absent("schema_version", str(SCHEMA_VERSION).encode())
                if found is not None and found != str(SCHEMA_VERSION):
                    # Migrated: the new tables were created above, empty.
                    self._run(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                        (str(SCHEMA_VERSION).encode(),),
                    )
        except BaseException:
            dialect.close()
            raise

    def _run(self, statement: str, params: Sequence[Any] = ()) -> Cursor:
        return self.dialect.execute(self.dialect.sql(statement), params)

    def _many(self, statement: str, rows: Sequence[Sequence[Any]]) -> int:
        return self.dialect.executemany(self.dialect.sql(statement), rows) if rows else 0

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._run(statement, params).fetchone()

    def _all(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._run(statement, params).fetchall()

    def _check_schema_version(self) -> str | None:
        """The schema version found (None: a new vault); refuse one that cannot be migrated
        (see SCHEMA_REFUSAL) before touching it."""
        if self._one(self.dialect.meta_exists) is None:
            return None
        row = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
        found = None if row is None else bytes(row[0]).decode()
        if found is not None and found != str(SCHEMA_VERSION) and int(found) not in MIGRATES_FROM:
            where = f"{self.dialect.location}: " if self.dialect.location else ""
            raise VaultConfigError(
                where + SCHEMA_REFUSAL.format(found=found, needed=SCHEMA_VERSION)
            )
        return found

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """Open a (possibly nested) transaction; commit on success, roll back on error.
        `durable` counts at the outermost level only (see `Backend.transaction`)."""
        with self._lock:
            saved = set(self._journaled)
            self._depth += 1
            try:
                with self.dialect.transaction(durable):
                    yield
            except BaseException:
                self._journaled = saved
                raise
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._journaled.clear()

    def close(self) -> None:
        """Release the connection."""
        self.dialect.close()

    def get_meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    def set_meta_if_absent(self, key: str, value: bytes) -> None:
        self._run(
            self.dialect.insert_or_ignore("meta (key, value) VALUES (?, ?)", "(key)"),
            (key, value),
        )

    def touch(self) -> None:
        # A new value: SQLite writes nothing for a row rewritten as it was.
        self.set_meta_if_absent("touched", b"0")
        self._run(
            "UPDATE meta SET value = ? WHERE key = 'touched'", (str(time.time_ns()).encode(),)
        )

    # ---------------------------------------------------------------- keys

    def lock_key(self, pid: str) -> KeyRow | None:
        return key_from_row(
            self._one(
                f"SELECT {_KEY_COLS} FROM patient_keys WHERE pid = ?{self.dialect.for_update}",
                (pid,),
            )
        )

    def read_key(self, pid: str) -> KeyRow | None:
        return key_from_row(
            self._one(f"SELECT {_KEY_COLS} FROM patient_keys WHERE pid = ?", (pid,))
        )

    def insert_key(self, row: KeyRow) -> bool:
        cur = self._run(
            self.dialect.insert_or_ignore(
                f"patient_keys ({_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?)", "(pid)"
            ),
            (row.pid, row.generation, row.wrapped, row.n_records, row.n_copies, row.manifest),
        )
        if cur.rowcount == 1:
            self._changed(item_name("key", row.pid))
        return cur.rowcount == 1

    def update_key_counters(
        self, pid: str, generation: int, n_records: int, n_copies: int, manifest: bytes
    ) -> None:
        self._run(
            "UPDATE patient_keys SET n_records = ?, n_copies = ?, manifest = ? "
            "WHERE pid = ? AND generation = ?",
            (n_records, n_copies, manifest, pid, generation),
        )
        self._changed(item_name("key", pid))

    def delete_key(self, pid: str, generation: int) -> bool:
        cur = self._run(
            "DELETE FROM patient_keys WHERE pid = ? AND generation = ?", (pid, generation)
        )
        self._changed(item_name("key", pid))
        return cur.rowcount == 1

    # ------------------------------------------------------------ key sets

    def lock_set(self, pid: str, generation: int, custodian: str, is_copy: bool) -> SetRow | None:
        return set_from_row(
            self._one(
                f"SELECT {_SET_COLS} FROM key_sets "
                "WHERE pid = ? AND generation = ? AND custodian = ? AND is_copy = ?"
                + self.dialect.for_update,
                (pid, generation, custodian, is_copy),
            )
        )

    def read_set(self, kid: str) -> SetRow | None:
        return set_from_row(self._one(f"SELECT {_SET_COLS} FROM key_sets WHERE kid = ?", (kid,)))

    def sets_of(self, pid: str, generation: int) -> list[SetRow]:
        rows = self._all(
            f"SELECT {_SET_COLS} FROM key_sets WHERE pid = ? AND generation = ? "
            "ORDER BY is_copy, custodian",
            (pid, generation),
        )
        return [r for r in map(set_from_row, rows) if r is not None]

    def insert_set(self, row: SetRow) -> bool:
        # No conflict target: the kid and the (pid, generation, custodian, copy flag) are
        # both unique, and a clash on either means a concurrent put made the set.
        cur = self._run(
            self.dialect.insert_or_ignore(
                f"key_sets ({_SET_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ""
            ),
            (
                row.kid,
                row.pid,
                row.generation,
                row.custodian,
                row.is_copy,
                row.wrapped,
                row.n_records,
                row.manifest,
            ),
        )
        if cur.rowcount == 1:
            self._changed(item_name("set", row.kid))
        return cur.rowcount == 1

    def update_set_counters(self, kid: str, n_records: int, manifest: bytes) -> None:
        self._run(
            "UPDATE key_sets SET n_records = ?, manifest = ? WHERE kid = ?",
            (n_records, manifest, kid),
        )
        self._changed(item_name("set", kid))

    def delete_set(self, kid: str) -> bool:
        cur = self._run("DELETE FROM key_sets WHERE kid = ?", (kid,))
        self._changed(item_name("set", kid))
        return cur.rowcount == 1

    def delete_sets(self, pid: str, generation: int) -> None:
        self._changed_rows(
            "set", "SELECT kid FROM key_sets WHERE pid = ? AND generation = ?", (pid, generation)
        )
        self._run("DELETE FROM key_sets WHERE pid = ? AND generation = ?", (pid, generation))

    def insert_copy_erasure(self, row: CopyErasureRow) -> None:
        self._run(
            f"INSERT INTO copy_erasures ({_COPY_ERASURE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.kid,
                row.pid,
                row.generation,
                row.custodian,
                row.erased_at,
                row.n_copies,
                row.digest,
                row.purged,
            ),
        )
        self._changed(item_name("copy-erasure", row.kid))

    def copy_erasures(
        self, pid: str, generation: int, custodian: str | None
    ) -> list[CopyErasureRow]:
        sql = f"SELECT {_COPY_ERASURE_COLS} FROM copy_erasures WHERE pid = ? AND generation = ?"
        params: tuple[Any, ...] = (pid, generation)
        if custodian is not None:
            sql += " AND custodian = ?"
            params += (custodian,)
        return [
            copy_erasure_from_row(r) for r in self._all(sql + " ORDER BY erased_at, kid", params)
        ]

    # ------------------------------------------------------------ erasures

    def latest_erasure(self, pid: str) -> ErasureRow | None:
        row = self._one(
            f"SELECT {_ERASURE_COLS} FROM erasures WHERE pid = ? ORDER BY generation DESC LIMIT 1",
            (pid,),
        )
        if row is None:
            return None
        return ErasureRow(
            pid=row[0],
            generation=int(row[1]),
            erased_at=row[2],
            n_records=int(row[3]),
            n_copies=int(row[4]),
            digest=bytes(row[5]),
            purged=bool(row[6]),
        )

    def insert_erasure(self, row: ErasureRow) -> None:
        self._run(
            f"INSERT INTO erasures ({_ERASURE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.pid,
                row.generation,
                row.erased_at,
                row.n_records,
                row.n_copies,
                row.digest,
                row.purged,
            ),
        )
        self._changed(item_name("erasure", row.pid, row.generation))

    # ------------------------------------------------------------- records

    def rid_state(self, rid: str) -> RidState | None:
        self.dialect.lock_rid(rid)
        row = self._one(
            "SELECT pid, generation, version, kid FROM records WHERE rid = ? "
            "ORDER BY version DESC LIMIT 1",
            (rid,),
        )
        if row is None:
            return None
        return RidState(
            pid=row[0], generation=int(row[1]), max_version=int(row[2]), kid=str(row[3])
        )

    def rid_states(self, rids: list[str]) -> dict[str, RidState]:
        """`rid_state` of each rid that has records, in a query per 500 rids."""
        for rid in rids:
            self.dialect.lock_rid(rid)
        found: dict[str, RidState] = {}
        for i in range(0, len(rids), 500):
            chunk = rids[i : i + 500]
            rows = self._all(
                "SELECT rid, pid, generation, version, kid FROM records "
                f"WHERE rid IN ({', '.join('?' * len(chunk))}) ORDER BY rid, version",
                chunk,
            )
            for rid, pid, generation, version, kid in rows:  # the latest version last
                found[str(rid)] = RidState(
                    pid=pid, generation=int(generation), max_version=int(version), kid=str(kid)
                )
        return found

    def shredded_owners(self, rids: list[str]) -> dict[str, str]:
        """`shredded_owner` of each rid that has one."""
        found: dict[str, str] = {}
        for i in range(0, len(rids), 500):
            chunk = rids[i : i + 500]
            rows = self._all(
                f"SELECT rid, pid FROM shredded_rids WHERE rid IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found.update((str(rid), str(pid)) for rid, pid in rows)
        return found

    def shredded_owner(self, rid: str) -> str | None:
        row = self._one("SELECT pid FROM shredded_rids WHERE rid = ?", (rid,))
        return None if row is None else str(row[0])

    def insert_records(self, rows: list[RecordRow]) -> bool:
        """Insert record versions in one statement; False if any (rid, version) existed (the
        caller rolls the transaction back)."""
        inserted = self._many(
            self.dialect.insert_or_ignore(
                "records (rid, version, pid, generation, resource_type, custodian, is_copy, "
                "nonce, ciphertext, salt_ct, kid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                "(rid, version)",
            ),
            [
                (
                    r.rid,
                    r.version,
                    r.pid,
                    r.generation,
                    r.resource_type,
                    r.custodian,
                    r.is_copy,
                    r.nonce,
                    r.ciphertext,
                    r.salt_ct,
                    r.kid,
                )
                for r in rows
            ],
        )
        self._changed(*(item_name("record", r.rid, r.version) for r in rows))
        return inserted == len(rows)

    def fetch_record(
        self, rid: str, version: int | None
    ) -> tuple[RecordRow, bytes | None, bytes | None] | None:
        base = (
            f"SELECT {_RECORD_COLS}, k.wrapped, s.wrapped FROM records r LEFT JOIN patient_keys k "
            "ON k.pid = r.pid AND k.generation = r.generation "
            "LEFT JOIN key_sets s ON s.kid = r.kid WHERE r.rid = ?"
        )
        if version is None:
            row = self._one(base + " ORDER BY r.version DESC LIMIT 1", (rid,))
        else:
            row = self._one(base + " AND r.version = ?", (rid, version))
        if row is None:
            return None
        return record_from_row(row)

    def fetch_records(
        self, versions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[RecordRow, bytes | None, bytes | None]]:
        """`fetch_record` of each (rid, version) found, in a statement per 400."""
        found: dict[tuple[str, int], tuple[RecordRow, bytes | None, bytes | None]] = {}
        for i in range(0, len(versions), 400):
            chunk = versions[i : i + 400]
            rows = self._all(
                f"SELECT {_RECORD_COLS}, k.wrapped, s.wrapped FROM records r LEFT JOIN "
                "patient_keys k ON k.pid = r.pid AND k.generation = r.generation "
                "LEFT JOIN key_sets s ON s.kid = r.kid WHERE (r.rid, r.version) IN "
                f"(VALUES {', '.join(['(?, ?)'] * len(chunk))})",
                [value for pair in chunk for value in pair],
            )
            for row in rows:
                record = record_from_row(row)
                found[(record[0].rid, record[0].version)] = record
        return found

    def fetch_latest(
        self,
        pids: list[str],
        types: list[str] | None,
        decrypt: list[str] | None,
        include_copies: bool,
    ) -> list[tuple[RecordRow, bytes, bytes]]:
        # One statement per 400 patients: the rows of the live generation (inner joins: no
        # key row once erased, no set row once shredded) that no live newer version of the
        # same rid follows; the ciphertexts of the types not to decrypt stay in the database.
        copies = "" if include_copies else f" AND {{t}}.is_copy = {self.dialect.false}"
        kept = f"r.resource_type IN ({', '.join('?' * len(decrypt))})" if decrypt else "1 = 0"
        typed = "" if types is None else f" AND r.resource_type IN ({', '.join('?' * len(types))})"
        columns = (
            _RECORD_COLS
            if decrypt is None
            else _RECORD_COLS.replace("r.ciphertext", f"CASE WHEN {kept} THEN r.ciphertext END")
        )
        decrypt = decrypt or []
        found: list[tuple[RecordRow, bytes, bytes]] = []
        for i in range(0, len(pids), 400):
            chunk = pids[i : i + 400]
            rows = self._all(
                f"SELECT {columns}, k.wrapped, s.wrapped FROM records r JOIN patient_keys k "
                "ON k.pid = r.pid AND k.generation = r.generation "
                "JOIN key_sets s ON s.kid = r.kid WHERE r.pid IN "
                f"({', '.join('?' * len(chunk))}){copies.format(t='r')}{typed} AND NOT EXISTS "
                "(SELECT 1 FROM records n JOIN key_sets ns ON ns.kid = n.kid WHERE n.rid = r.rid "
                f"AND n.version > r.version AND n.generation = r.generation{copies.format(t='n')})",
                [*decrypt, *chunk, *(types or ())],
            )
            # `record_from_row`'s decoding, spelt out: thousands of rows per query.
            found += [
                (
                    RecordRow(
                        row[0],
                        int(row[1]),
                        row[2],
                        int(row[3]),
                        row[4],
                        row[5],
                        bool(row[6]),
                        bytes(row[7]),
                        b"" if row[8] is None else bytes(row[8]),
                        None if row[9] is None else bytes(row[9]),
                        str(row[10]),
                    ),
                    bytes(row[11]),  # inner joins: the wrapped keys are never NULL
                    bytes(row[12]),
                )
                for row in rows
            ]
        return found

    # ------------------------------------------------------ research digests
    # Derived rows (vault/digest.py): never journaled, so neither replicated nor backed up.

    def digest_sources(
        self, pids: list[str], categories: list[str]
    ) -> list[tuple[str, int, bytes, str, bytes, int, dict[str, bytes]]]:
        rows: list[Any] = []
        marks = ", ".join("?" * len(categories))
        for i in range(0, len(pids), 400):
            chunk = pids[i : i + 400]
            rows += self._all(
                "SELECT k.pid, k.generation, k.wrapped, s.kid, s.manifest, s.n_records, "
                "d.category, d.sealed "
                "FROM patient_keys k JOIN key_sets s ON s.pid = k.pid "
                f"AND s.generation = k.generation AND s.is_copy = {self.dialect.false} "
                "LEFT JOIN research_digest_rows d ON d.pid = k.pid "
                f"AND d.generation = k.generation AND d.category IN ({marks}) "
                f"WHERE k.pid IN ({', '.join('?' * len(chunk))})",
                [*categories, *chunk],
            )
        found: dict[str, tuple[str, int, bytes, str, bytes, int, dict[str, bytes]]] = {}
        for r in rows:
            pid = str(r[0])
            if pid not in found:
                found[pid] = (pid, int(r[1]), bytes(r[2]), str(r[3]), bytes(r[4]), int(r[5]), {})
            if r[6] is not None:
                found[pid][6][str(r[6])] = bytes(r[7])
        return list(found.values())

    def own_states(self, pids: list[str]) -> dict[str, tuple[int, str, bytes]]:
        found: dict[str, tuple[int, str, bytes]] = {}
        for i in range(0, len(pids), 400):
            chunk = pids[i : i + 400]
            for r in self._all(
                "SELECT k.pid, k.generation, s.kid, s.manifest "
                "FROM patient_keys k JOIN key_sets s ON s.pid = k.pid "
                f"AND s.generation = k.generation AND s.is_copy = {self.dialect.false} "
                f"WHERE k.pid IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                found[str(r[0])] = (int(r[1]), str(r[2]), bytes(r[3]))
        return found

    def read_digests(
        self, pid: str, generation: int, categories: list[str] | None, limit: int | None = None
    ) -> dict[str, bytes | None]:
        where = (
            "" if categories is None else f" AND category IN ({', '.join('?' * len(categories))})"
        )
        # a row longer than `limit` is named, its bytes not read
        sealed = "sealed" if limit is None else "CASE WHEN length(sealed) <= ? THEN sealed END"
        rows = self._all(
            f"SELECT category, {sealed} FROM research_digest_rows "
            "WHERE pid = ? AND generation = ?" + where,
            [*(() if limit is None else (limit,)), pid, generation, *(categories or ())],
        )
        return {str(r[0]): None if r[1] is None else bytes(r[1]) for r in rows}

    def put_digests(
        self, pid: str, generation: int, rows: dict[str, bytes | None], only: bool
    ) -> None:
        if only:
            self._run("DELETE FROM research_digest_rows WHERE pid = ?", (pid,))
        for category, sealed in rows.items():
            if sealed is None:
                self._run(
                    "DELETE FROM research_digest_rows WHERE pid = ? AND category = ?",
                    (pid, category),
                )
                continue
            # an upsert: two readers of one database storing the same row both succeed
            self._run(
                "INSERT INTO research_digest_rows (pid, category, generation, sealed) "
                "SELECT ?, ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM patient_keys WHERE pid = ? AND generation = ?) "
                "ON CONFLICT (pid, category) DO UPDATE "
                "SET generation = excluded.generation, sealed = excluded.sealed",
                (pid, category, generation, sealed, pid, generation),
            )

    def delete_digest(self, pid: str) -> None:
        self._run("DELETE FROM research_digest_rows WHERE pid = ?", (pid,))

    def count_digests(self) -> int:
        return int(
            self._one("SELECT COUNT(*) FROM research_digest_rows WHERE category = ?", ("*",))[0]
        )

    def versions(self, rid: str) -> list[int]:
        rows = self._all("SELECT version FROM records WHERE rid = ? ORDER BY version", (rid,))
        return [int(r[0]) for r in rows]

    def list_records(self, pid: str, generation: int, include_copies: bool) -> list[RecordInfo]:
        sql = (
            "SELECT r.pid, r.rid, r.version, r.resource_type, r.custodian, r.is_copy "
            "FROM records r JOIN key_sets s ON s.kid = r.kid "
            "WHERE r.pid = ? AND r.generation = ?"
        )
        if not include_copies:
            sql += f" AND r.is_copy = {self.dialect.false}"
        rows = self._all(sql + " ORDER BY r.rid, r.version", (pid, generation))
        return [info_from_row(r) for r in rows]

    def patients(self) -> list[str]:
        return [str(r[0]) for r in self._all("SELECT pid FROM patient_keys ORDER BY pid")]

    def has_patient_besides(self, pid: str) -> bool:
        return self._one("SELECT 1 FROM patient_keys WHERE pid <> ? LIMIT 1", (pid,)) is not None

    def delete_record(self, rid: str, version: int) -> RecordRow | None:
        row = self._one(
            "DELETE FROM records WHERE rid = ? AND version = ? RETURNING "
            "rid, version, pid, generation, resource_type, custodian, is_copy, nonce, "
            "ciphertext, salt_ct, kid, NULL, NULL",
            (rid, version),
        )
        self._changed(item_name("record", rid, version))
        return None if row is None else record_from_row(row)[0]

    # ------------------------------------------------------------- aliases

    def insert_aliases(self, rows: list[tuple[bytes, str, int, str]]) -> None:
        statement = self.dialect.insert_or_ignore(
            "aliases (alias, rid, version, pid) VALUES (?, ?, ?, ?)", "(alias, rid)"
        )
        self._many(statement, rows)
        self._changed(*(item_name("record", rid, version) for _, rid, version, _ in rows))

    def find_aliases(self, aliases: list[bytes]) -> list[tuple[bytes, str]]:
        found: list[tuple[bytes, str]] = []
        for i in range(0, len(aliases), 500):
            chunk = aliases[i : i + 500]
            rows = self._all(
                "SELECT a.alias, a.rid FROM aliases a JOIN patient_keys k ON k.pid = a.pid "
                f"WHERE a.alias IN ({', '.join('?' * len(chunk))}) ORDER BY a.rid",
                chunk,
            )
            found += [(bytes(r[0]), str(r[1])) for r in rows]
        return found

    def delete_aliases(self, rid: str, version: int) -> None:
        self._run("DELETE FROM aliases WHERE rid = ? AND version = ?", (rid, version))
        self._changed(item_name("record", rid, version))

    # -------------------------------------------------------- provisional

    def insert_provisional(self, unit: str, records: bytes, updated_at: float) -> None:
        self._run(
            f"INSERT INTO provisional_units ({_PROVISIONAL_COLS}) VALUES (?, NULL, ?, ?)",
            (unit, records, updated_at),
        )
        self._changed(item_name("unit", unit))

    def set_provisional_claim(self, unit: str, claim: bytes, updated_at: float) -> bool:
        cur = self._run(
            "UPDATE provisional_units SET claim = ?, updated_at = ? WHERE unit = ?",
            (claim, updated_at, unit),
        )
        self._changed(item_name("unit", unit))
        return cur.rowcount == 1

    def lock_provisional(self, unit: str) -> ProvisionalUnit | None:
        row = self._one(
            f"SELECT {_PROVISIONAL_COLS} FROM provisional_units WHERE unit = ?"
            + self.dialect.for_update,
            (unit,),
        )
        return None if row is None else provisional_from_row(row)

    def forget_shredded(self, rid: str) -> None:
        self._run("DELETE FROM shredded_rids WHERE rid = ?", (rid,))
        self._changed(item_name("shredded", rid))

    def delete_provisional(self, unit: str) -> bool:
        cur = self._run("DELETE FROM provisional_units WHERE unit = ?", (unit,))
        self._changed(item_name("unit", unit))
        return cur.rowcount == 1

    def list_provisional(self) -> list[ProvisionalUnit]:
        rows = self._all(
            f"SELECT {_PROVISIONAL_COLS} FROM provisional_units ORDER BY updated_at, unit"
        )
        return [provisional_from_row(r) for r in rows]

    # --------------------------------------------------------------- purge

    def pending_erasures(self) -> list[tuple[str, int]]:
        rows = self._all(
            f"SELECT pid, generation FROM erasures WHERE purged = {self.dialect.false} "
            "ORDER BY pid, generation"
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    def purge(self, pid: str, generation: int) -> int:
        self._changed_purged("pid = ? AND generation = ?", (pid, generation))
        self._changed_rows(
            "set", "SELECT kid FROM key_sets WHERE pid = ? AND generation = ?", (pid, generation)
        )
        self._changed_rows(
            "copy-erasure",
            "SELECT kid FROM copy_erasures WHERE pid = ? AND generation = ?",
            (pid, generation),
        )
        self._changed(item_name("erasure", pid, generation))
        self._run(
            "DELETE FROM aliases WHERE pid = ? AND rid IN "
            "(SELECT rid FROM records WHERE pid = ? AND generation = ?)",
            (pid, pid, generation),
        )
        self._run(
            self.dialect.insert_or_ignore(
                "shredded_rids (rid, pid) "
                "SELECT DISTINCT rid, pid FROM records WHERE pid = ? AND generation = ?",
                "(rid)",
            ),
            (pid, generation),
        )
        cur = self._run("DELETE FROM records WHERE pid = ? AND generation = ?", (pid, generation))
        self._run("DELETE FROM key_sets WHERE pid = ? AND generation = ?", (pid, generation))
        self._run(
            "DELETE FROM research_digest_rows WHERE pid = ? AND generation = ?", (pid, generation)
        )
        for table in ("erasures", "copy_erasures"):
            self._run(
                f"UPDATE {table} SET purged = {self.dialect.true} WHERE pid = ? AND generation = ?",
                (pid, generation),
            )
        return int(cur.rowcount)

    def pending_copy_erasures(self) -> list[tuple[str, str]]:
        rows = self._all(
            f"SELECT kid, pid FROM copy_erasures WHERE purged = {self.dialect.false} "
            "ORDER BY pid, kid"
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def purge_set(self, kid: str) -> int:
        self._changed_purged("kid = ?", (kid,))
        self._changed(item_name("copy-erasure", kid))
        self._run(
            "DELETE FROM aliases WHERE rid IN (SELECT rid FROM records WHERE kid = ?)", (kid,)
        )
        self._run(
            self.dialect.insert_or_ignore(
                "shredded_rids (rid, pid) SELECT DISTINCT rid, pid FROM records WHERE kid = ?",
                "(rid)",
            ),
            (kid,),
        )
        cur = self._run("DELETE FROM records WHERE kid = ?", (kid,))
        self._run(f"UPDATE copy_erasures SET purged = {self.dialect.true} WHERE kid = ?", (kid,))
        return int(cur.rowcount)

    def compact(self) -> bool:
        with self._lock:
            return self.dialect.compact()

    # ------------------------------------------------- replication journal
    # Every write above notes the replicated item it changed (vault/replication.py names them)
    # in `replication_journal`, in the same transaction: a change committed is a change to
    # send, whatever crashes after. The replicator reads the item's rows when it sends it.

    def _changed(self, *items: str) -> None:
        new = [i for i in dict.fromkeys(items) if i not in self._journaled]
        if not new:
            return
        self.dialect.lock_journal()
        now = time.time()
        self._many(
            "INSERT INTO replication_journal (item, at) VALUES (?, ?)", [(i, now) for i in new]
        )
        if self._depth:
            self._journaled.update(new)

    def _changed_rows(self, kind: str, query: str, params: Sequence[Any]) -> None:
        self._changed(*(item_name(kind, *row) for row in self._all(query, params)))

    def _changed_purged(self, where: str, params: Sequence[Any]) -> None:
        """The records a purge deletes, and the tombstones it writes for their rids."""
        rows = self._all(f"SELECT rid, version FROM records WHERE {where}", params)
        self._changed(
            *(item_name("record", rid, int(version)) for rid, version in rows),
            *(item_name("shredded", rid) for rid, _ in rows),
        )

    def journal_head(self) -> int:
        """The last sequence number written (0: none)."""
        row = self._one("SELECT MAX(seq) FROM replication_journal")
        return 0 if row is None or row[0] is None else int(row[0])

    def changes(self, after: int, limit: int) -> list[tuple[int, str, float]]:
        """(seq, item, time) of the changes after `after`, oldest first."""
        rows = self._all(
            "SELECT seq, item, at FROM replication_journal WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    def lag(self, after: int) -> tuple[int, float | None]:
        """How many changes follow `after`, and when the oldest of them was written."""
        row = self._one("SELECT COUNT(*), MIN(at) FROM replication_journal WHERE seq > ?", (after,))
        return int(row[0]), None if row[1] is None else float(row[1])

    def prune_journal(self, upto: int) -> None:
        """Forget the changes every replica peer has acknowledged."""
        self._run("DELETE FROM replication_journal WHERE seq <= ?", (upto,))

    def replica_peers(self) -> dict[str, tuple[int, float, int]]:
        """peer -> (last sequence acknowledged, when, bytes held there)."""
        rows = self._all("SELECT peer, acked_seq, acked_at, held FROM replica_peers")
        return {str(r[0]): (int(r[1]), float(r[2]), int(r[3])) for r in rows}

    def set_replica_peer(self, peer: str, acked_seq: int, acked_at: float, held: int) -> None:
        self._run("DELETE FROM replica_peers WHERE peer = ?", (peer,))
        self._run(
            "INSERT INTO replica_peers (peer, acked_seq, acked_at, held) VALUES (?, ?, ?, ?)",
            (peer, acked_seq, acked_at, held),
        )

    def item_names(self) -> list[str]:
        """Every replicated item the vault holds now (a new peer's first full copy)."""
        names: list[str] = []
        for kind, (table, key, _) in ((k, t[0]) for k, t in _ITEM_TABLES.items()):
            rows = self._all(f"SELECT DISTINCT {', '.join(key)} FROM {table}")
            names += [item_name(kind, *row) for row in rows]
        return names

    def read_item(self, name: str) -> dict[str, list[list[Any]]] | None:
        """The rows of a replicated item, {table: [row]}; None when it no longer exists."""
        kind, key = parse_item_name(name)
        out: dict[str, list[list[Any]]] = {}
        for i, (table, key_cols, cols) in enumerate(_ITEM_TABLES[kind]):
            where = " AND ".join(f"{c} = ?" for c in key_cols)
            rows = self._all(f"SELECT {cols} FROM {table} WHERE {where}", key)
            if i == 0 and not rows:
                return None
            out[table] = [[_plain(v) for v in row] for row in rows]
        return out

    def delete_item(self, name: str) -> None:
        """Delete a replicated item's rows: a restore trying another version of it."""
        kind, key = parse_item_name(name)
        for table, key_cols, _ in _ITEM_TABLES[kind]:
            where = " AND ".join(f"{c} = ?" for c in key_cols)
            self._run(f"DELETE FROM {table} WHERE {where}", key)

    def write_item(self, name: str, content: dict[str, list[list[Any]]]) -> None:
        """Write a replicated item's rows into this (fresh) vault: a restore."""
        kind, _ = parse_item_name(name)
        for table, _key, cols in _ITEM_TABLES[kind]:
            n = len(cols.split(","))
            statement = self.dialect.insert_or_ignore(
                f"{table} ({cols}) VALUES ({', '.join('?' * n)})", ""
            )
            for row in content.get(table, []):
                if len(row) != n:
                    raise ValueError(f"item {kind}: {table} row of {len(row)} columns, not {n}")
                self._run(statement, row)


#: Each kind of replicated item: (table, key columns, columns) of the rows it carries; the
#: first table's row is the item (absent: the item is deleted). A record carries its aliases.
_ITEM_TABLES: dict[str, tuple[tuple[str, tuple[str, ...], str], ...]] = {
    "key": (("patient_keys", ("pid",), _KEY_COLS),),
    "set": (("key_sets", ("kid",), _SET_COLS),),
    "copy-erasure": (("copy_erasures", ("kid",), _COPY_ERASURE_COLS),),
    "erasure": (("erasures", ("pid", "generation"), _ERASURE_COLS),),
    "record": (
        (
            "records",
            ("rid", "version"),
            "rid, version, pid, generation, resource_type, custodian, is_copy, nonce, "
            "ciphertext, salt_ct, kid",
        ),
        ("aliases", ("rid", "version"), "alias, rid, version, pid"),
    ),
    "shredded": (("shredded_rids", ("rid",), "rid, pid"),),
    "unit": (("provisional_units", ("unit",), _PROVISIONAL_COLS),),
}


def _plain(value: Any) -> Any:
    """A column value as CBOR carries it (memoryview from PostgreSQL -> bytes)."""
    return bytes(value) if isinstance(value, memoryview) else value


# ------------------------------------------------------------------ row decoding


def key_from_row(row: Sequence[Any] | None) -> KeyRow | None:
    """Decode (pid, generation, wrapped, n_records, n_copies, manifest)."""
    if row is None:
        return None
    return KeyRow(
        pid=row[0],
        generation=int(row[1]),
        wrapped=bytes(row[2]),
        n_records=int(row[3]),
        n_copies=int(row[4]),
        manifest=bytes(row[5]),
    )


def record_from_row(row: Sequence[Any]) -> tuple[RecordRow, bytes | None, bytes | None]:
    """Decode the record query: (rid, version, pid, generation, resource_type,
    custodian, is_copy, nonce, ciphertext, salt_ct, kid, wrapped patient key or NULL once
    erased, wrapped set key or NULL once erased)."""
    record = RecordRow(
        rid=row[0],
        version=int(row[1]),
        pid=row[2],
        generation=int(row[3]),
        resource_type=row[4],
        custodian=row[5],
        is_copy=bool(row[6]),
        nonce=bytes(row[7]),
        ciphertext=bytes(row[8]),
        salt_ct=None if row[9] is None else bytes(row[9]),
        kid=str(row[10]),
    )
    return (
        record,
        None if row[11] is None else bytes(row[11]),
        None if row[12] is None else bytes(row[12]),
    )


def set_from_row(row: Sequence[Any] | None) -> SetRow | None:
    """Decode (kid, pid, generation, custodian, is_copy, wrapped, n_records, manifest)."""
    if row is None:
        return None
    return SetRow(
        kid=str(row[0]),
        pid=str(row[1]),
        generation=int(row[2]),
        custodian=str(row[3]),
        is_copy=bool(row[4]),
        wrapped=bytes(row[5]),
        n_records=int(row[6]),
        manifest=bytes(row[7]),
    )


def copy_erasure_from_row(row: Sequence[Any]) -> CopyErasureRow:
    """Decode (kid, pid, generation, custodian, erased_at, n_copies, digest, purged)."""
    return CopyErasureRow(
        kid=str(row[0]),
        pid=str(row[1]),
        generation=int(row[2]),
        custodian=str(row[3]),
        erased_at=str(row[4]),
        n_copies=int(row[5]),
        digest=bytes(row[6]),
        purged=bool(row[7]),
    )


def info_from_row(row: Sequence[Any]) -> RecordInfo:
    """Decode (pid, rid, version, resource_type, custodian, is_copy)."""
    return RecordInfo(
        pid=row[0],
        rid=row[1],
        version=int(row[2]),
        resource_type=row[3],
        custodian=row[4],
        is_copy=bool(row[5]),
    )


def provisional_from_row(row: Sequence[Any]) -> ProvisionalUnit:
    """Decode (unit, claim or NULL, records JSON, updated_at)."""
    records = tuple((str(rid), int(version)) for rid, version in orjson.loads(bytes(row[2])))
    return ProvisionalUnit(
        unit=str(row[0]),
        claim=None if row[1] is None else bytes(row[1]),
        records=records,
        updated_at=float(row[3]),
    )
