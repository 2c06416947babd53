"""SQLite backend: one file under the hospital's home, WAL, secure_delete.

All of this backend's SQL is in this module. `PRAGMA secure_delete=ON` makes
SQLite overwrite deleted rows and freed pages with zeros, so a purged
ciphertext or a destroyed key row leaves no bytes behind in the database file;
the WAL, which still holds older page images, is truncated by compact().
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medledger.vault.backend import (
    SCHEMA_REFUSAL,
    SCHEMA_VERSION,
    copy_erasure_from_row,
    info_from_row,
    provisional_from_row,
    record_from_row,
    set_from_row,
)
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS patient_keys (
    pid        TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    wrapped    BLOB NOT NULL,
    n_records  INTEGER NOT NULL,
    n_copies   INTEGER NOT NULL,
    manifest   BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS erasures (
    pid        TEXT NOT NULL,
    generation INTEGER NOT NULL,
    erased_at  TEXT NOT NULL,
    n_records  INTEGER NOT NULL,
    n_copies   INTEGER NOT NULL,
    digest     BLOB NOT NULL,
    purged     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pid, generation)
) STRICT;
CREATE INDEX IF NOT EXISTS erasures_pending ON erasures (pid, generation) WHERE purged = 0;
CREATE TABLE IF NOT EXISTS key_sets (
    kid        TEXT PRIMARY KEY,
    pid        TEXT NOT NULL,
    generation INTEGER NOT NULL,
    custodian  TEXT NOT NULL,
    is_copy    INTEGER NOT NULL,
    wrapped    BLOB NOT NULL,
    n_records  INTEGER NOT NULL,
    manifest   BLOB NOT NULL,
    UNIQUE (pid, generation, custodian, is_copy)
) STRICT;
CREATE TABLE IF NOT EXISTS copy_erasures (
    kid        TEXT PRIMARY KEY,
    pid        TEXT NOT NULL,
    generation INTEGER NOT NULL,
    custodian  TEXT NOT NULL,
    erased_at  TEXT NOT NULL,
    n_copies   INTEGER NOT NULL,
    digest     BLOB NOT NULL,
    purged     INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS copy_erasures_by_patient ON copy_erasures (pid, generation, custodian);
CREATE INDEX IF NOT EXISTS copy_erasures_pending ON copy_erasures (kid) WHERE purged = 0;
CREATE TABLE IF NOT EXISTS records (
    rid           TEXT NOT NULL,
    version       INTEGER NOT NULL,
    pid           TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    custodian     TEXT NOT NULL,
    is_copy       INTEGER NOT NULL,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    salt_ct       BLOB,
    kid           TEXT NOT NULL,
    PRIMARY KEY (rid, version)
) STRICT;
CREATE INDEX IF NOT EXISTS records_by_patient ON records (pid, generation, is_copy);
CREATE INDEX IF NOT EXISTS records_by_set ON records (kid);
CREATE TABLE IF NOT EXISTS shredded_rids (
    rid TEXT PRIMARY KEY,
    pid TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS provisional_units (
    unit       TEXT PRIMARY KEY,
    claim      BLOB,
    records    BLOB NOT NULL,
    updated_at REAL NOT NULL
) STRICT;
"""

_RECORD_COLS = (
    "r.rid, r.version, r.pid, r.generation, r.resource_type, r.custodian, r.is_copy, "
    "r.nonce, r.ciphertext, r.salt_ct, r.kid"
)
_KEY_COLS = "pid, generation, wrapped, n_records, n_copies, manifest"
_SET_COLS = "kid, pid, generation, custodian, is_copy, wrapped, n_records, manifest"
_COPY_ERASURE_COLS = "kid, pid, generation, custodian, erased_at, n_copies, digest, purged"

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


def _key_row(row: tuple[Any, ...] | None) -> KeyRow | None:
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


class SQLiteBackend:
    """Vault rows in one SQLite file (WAL mode, secure_delete, foreign processes welcome).

    One connection, used under a lock by the Vault; writes take the write lock
    at BEGIN (BEGIN IMMEDIATE) so two processes never deadlock on a lock upgrade.
    """

    name = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000):
        sync = synchronous.upper()
        if sync not in _SYNCHRONOUS:
            raise VaultConfigError(f"sqlite synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Create the file 0600 before SQLite does: its -wal and -shm files copy this mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1e3
        )
        self._depth = 0
        self._lock = threading.RLock()
        c = self._conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA secure_delete=ON")
        c.execute(f"PRAGMA synchronous={sync}")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if c.execute("PRAGMA secure_delete").fetchone()[0] != 1:
            raise VaultConfigError("this SQLite build refuses secure_delete; refusing to run")
        try:
            with self.transaction():
                self._check_schema_version()
                for statement in _split(_SCHEMA):
                    c.execute(statement)
                c.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION).encode(),),
                )
        except BaseException:
            c.close()
            raise

    def _check_schema_version(self) -> None:
        """Refuse a vault written by an older schema (see SCHEMA_REFUSAL) before touching it."""
        c = self._conn
        if c.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone():
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = None if row is None else bytes(row[0]).decode()
            if found is not None and found != str(SCHEMA_VERSION):
                raise VaultConfigError(
                    f"{self.path}: " + SCHEMA_REFUSAL.format(found=found, needed=SCHEMA_VERSION)
                )

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Outermost level: BEGIN IMMEDIATE ... COMMIT; nested levels: savepoints."""
        with self._lock:
            depth = self._depth
            name = f"sp{depth}"
            self._conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if depth == 0:
                    self._conn.execute("ROLLBACK")
                else:
                    self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    self._conn.execute(f"RELEASE SAVEPOINT {name}")
                raise
            self._depth -= 1
            self._conn.execute("COMMIT" if depth == 0 else f"RELEASE SAVEPOINT {name}")

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL on the last close)."""
        self._conn.close()

    def get_meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta_if_absent(self, key: str, value: bytes) -> None:
        self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ---------------------------------------------------------------- keys

    def lock_key(self, pid: str) -> KeyRow | None:
        # The write lock taken by BEGIN IMMEDIATE already serialises writers.
        return self.read_key(pid)

    def read_key(self, pid: str) -> KeyRow | None:
        return _key_row(
            self._conn.execute(
                f"SELECT {_KEY_COLS} FROM patient_keys WHERE pid = ?", (pid,)
            ).fetchone()
        )

    def insert_key(self, row: KeyRow) -> bool:
        cur = self._conn.execute(
            f"INSERT OR IGNORE INTO patient_keys ({_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (row.pid, row.generation, row.wrapped, row.n_records, row.n_copies, row.manifest),
        )
        return cur.rowcount == 1

    def update_key_counters(
        self, pid: str, generation: int, n_records: int, n_copies: int, manifest: bytes
    ) -> None:
        self._conn.execute(
            "UPDATE patient_keys SET n_records = ?, n_copies = ?, manifest = ? "
            "WHERE pid = ? AND generation = ?",
            (n_records, n_copies, manifest, pid, generation),
        )

    def delete_key(self, pid: str, generation: int) -> bool:
        cur = self._conn.execute(
            "DELETE FROM patient_keys WHERE pid = ? AND generation = ?", (pid, generation)
        )
        return cur.rowcount == 1

    # ------------------------------------------------------------ key sets

    def lock_set(self, pid: str, generation: int, custodian: str, is_copy: bool) -> SetRow | None:
        return set_from_row(
            self._conn.execute(
                f"SELECT {_SET_COLS} FROM key_sets "
                "WHERE pid = ? AND generation = ? AND custodian = ? AND is_copy = ?",
                (pid, generation, custodian, int(is_copy)),
            ).fetchone()
        )

    def read_set(self, kid: str) -> SetRow | None:
        return set_from_row(
            self._conn.execute(f"SELECT {_SET_COLS} FROM key_sets WHERE kid = ?", (kid,)).fetchone()
        )

    def sets_of(self, pid: str, generation: int) -> list[SetRow]:
        rows = self._conn.execute(
            f"SELECT {_SET_COLS} FROM key_sets WHERE pid = ? AND generation = ? "
            "ORDER BY is_copy, custodian",
            (pid, generation),
        ).fetchall()
        return [r for r in map(set_from_row, rows) if r is not None]

    def insert_set(self, row: SetRow) -> bool:
        cur = self._conn.execute(
            f"INSERT OR IGNORE INTO key_sets ({_SET_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.kid,
                row.pid,
                row.generation,
                row.custodian,
                int(row.is_copy),
                row.wrapped,
                row.n_records,
                row.manifest,
            ),
        )
        return cur.rowcount == 1

    def update_set_counters(self, kid: str, n_records: int, manifest: bytes) -> None:
        self._conn.execute(
            "UPDATE key_sets SET n_records = ?, manifest = ? WHERE kid = ?",
            (n_records, manifest, kid),
        )

    def delete_set(self, kid: str) -> bool:
        cur = self._conn.execute("DELETE FROM key_sets WHERE kid = ?", (kid,))
        return cur.rowcount == 1

    def delete_sets(self, pid: str, generation: int) -> None:
        self._conn.execute(
            "DELETE FROM key_sets WHERE pid = ? AND generation = ?", (pid, generation)
        )

    def insert_copy_erasure(self, row: CopyErasureRow) -> None:
        self._conn.execute(
            f"INSERT INTO copy_erasures ({_COPY_ERASURE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.kid,
                row.pid,
                row.generation,
                row.custodian,
                row.erased_at,
                row.n_copies,
                row.digest,
                int(row.purged),
            ),
        )

    def copy_erasures(
        self, pid: str, generation: int, custodian: str | None
    ) -> list[CopyErasureRow]:
        sql = f"SELECT {_COPY_ERASURE_COLS} FROM copy_erasures WHERE pid = ? AND generation = ?"
        params: tuple[Any, ...] = (pid, generation)
        if custodian is not None:
            sql += " AND custodian = ?"
            params += (custodian,)
        rows = self._conn.execute(sql + " ORDER BY erased_at, kid", params).fetchall()
        return [copy_erasure_from_row(r) for r in rows]

    # ------------------------------------------------------------ erasures

    def latest_erasure(self, pid: str) -> ErasureRow | None:
        row = self._conn.execute(
            "SELECT pid, generation, erased_at, n_records, n_copies, digest, purged "
            "FROM erasures WHERE pid = ? ORDER BY generation DESC LIMIT 1",
            (pid,),
        ).fetchone()
        if row is None:
            return None
        return ErasureRow(
            pid=row[0],
            generation=row[1],
            erased_at=row[2],
            n_records=row[3],
            n_copies=row[4],
            digest=bytes(row[5]),
            purged=bool(row[6]),
        )

    def insert_erasure(self, row: ErasureRow) -> None:
        self._conn.execute(
            "INSERT INTO erasures (pid, generation, erased_at, n_records, n_copies, digest, "
            "purged) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.pid,
                row.generation,
                row.erased_at,
                row.n_records,
                row.n_copies,
                row.digest,
                int(row.purged),
            ),
        )

    # ------------------------------------------------------------- records

    def rid_state(self, rid: str) -> RidState | None:
        row = self._conn.execute(
            "SELECT pid, generation, version, kid FROM records WHERE rid = ? "
            "ORDER BY version DESC LIMIT 1",
            (rid,),
        ).fetchone()
        if row is None:
            return None
        return RidState(pid=row[0], generation=row[1], max_version=row[2], kid=row[3])

    def shredded_owner(self, rid: str) -> str | None:
        row = self._conn.execute("SELECT pid FROM shredded_rids WHERE rid = ?", (rid,)).fetchone()
        return None if row is None else str(row[0])

    def insert_record(self, row: RecordRow) -> bool:
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO records (rid, version, pid, generation, resource_type, "
            "custodian, is_copy, nonce, ciphertext, salt_ct, kid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.rid,
                row.version,
                row.pid,
                row.generation,
                row.resource_type,
                row.custodian,
                int(row.is_copy),
                row.nonce,
                row.ciphertext,
                row.salt_ct,
                row.kid,
            ),
        )
        return cur.rowcount == 1

    def fetch_record(
        self, rid: str, version: int | None
    ) -> tuple[RecordRow, bytes | None, bytes | None] | None:
        base = (
            f"SELECT {_RECORD_COLS}, k.wrapped, s.wrapped FROM records r LEFT JOIN patient_keys k "
            "ON k.pid = r.pid AND k.generation = r.generation "
            "LEFT JOIN key_sets s ON s.kid = r.kid WHERE r.rid = ?"
        )
        if version is None:
            row = self._conn.execute(base + " ORDER BY r.version DESC LIMIT 1", (rid,)).fetchone()
        else:
            row = self._conn.execute(base + " AND r.version = ?", (rid, version)).fetchone()
        if row is None:
            return None
        return record_from_row(row)

    def versions(self, rid: str) -> list[int]:
        rows = self._conn.execute(
            "SELECT version FROM records WHERE rid = ? ORDER BY version", (rid,)
        ).fetchall()
        return [int(r[0]) for r in rows]

    def list_records(self, pid: str, generation: int, include_copies: bool) -> list[RecordInfo]:
        sql = (
            "SELECT r.pid, r.rid, r.version, r.resource_type, r.custodian, r.is_copy "
            "FROM records r JOIN key_sets s ON s.kid = r.kid "
            "WHERE r.pid = ? AND r.generation = ?"
        )
        if not include_copies:
            sql += " AND r.is_copy = 0"
        rows = self._conn.execute(sql + " ORDER BY r.rid, r.version", (pid, generation)).fetchall()
        return [info_from_row(r) for r in rows]

    def patients(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT pid FROM patient_keys ORDER BY pid")]

    def delete_record(self, rid: str, version: int) -> RecordRow | None:
        row = self._conn.execute(
            "DELETE FROM records WHERE rid = ? AND version = ? RETURNING "
            "rid, version, pid, generation, resource_type, custodian, is_copy, nonce, "
            "ciphertext, salt_ct, kid, NULL, NULL",
            (rid, version),
        ).fetchone()
        return None if row is None else record_from_row(row)[0]

    # -------------------------------------------------------- provisional

    def insert_provisional(self, unit: str, records: bytes, updated_at: float) -> None:
        self._conn.execute(
            "INSERT INTO provisional_units (unit, claim, records, updated_at) "
            "VALUES (?, NULL, ?, ?)",
            (unit, records, updated_at),
        )

    def set_provisional_claim(self, unit: str, claim: bytes, updated_at: float) -> bool:
        cur = self._conn.execute(
            "UPDATE provisional_units SET claim = ?, updated_at = ? WHERE unit = ?",
            (claim, updated_at, unit),
        )
        return cur.rowcount == 1

    def lock_provisional(self, unit: str) -> ProvisionalUnit | None:
        row = self._conn.execute(
            "SELECT unit, claim, records, updated_at FROM provisional_units WHERE unit = ?",
            (unit,),
        ).fetchone()
        return None if row is None else provisional_from_row(row)

    def forget_shredded(self, rid: str) -> None:
        self._conn.execute("DELETE FROM shredded_rids WHERE rid = ?", (rid,))

    def delete_provisional(self, unit: str) -> bool:
        cur = self._conn.execute("DELETE FROM provisional_units WHERE unit = ?", (unit,))
        return cur.rowcount == 1

    def list_provisional(self) -> list[ProvisionalUnit]:
        rows = self._conn.execute(
            "SELECT unit, claim, records, updated_at FROM provisional_units "
            "ORDER BY updated_at, unit"
        ).fetchall()
        return [provisional_from_row(r) for r in rows]

    # --------------------------------------------------------------- purge

    def pending_erasures(self) -> list[tuple[str, int]]:
        rows = self._conn.execute(
            "SELECT pid, generation FROM erasures WHERE purged = 0 ORDER BY pid, generation"
        ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def purge(self, pid: str, generation: int) -> int:
        self._conn.execute(
            "INSERT OR IGNORE INTO shredded_rids (rid, pid) "
            "SELECT DISTINCT rid, pid FROM records WHERE pid = ? AND generation = ?",
            (pid, generation),
        )
        cur = self._conn.execute(
            "DELETE FROM records WHERE pid = ? AND generation = ?", (pid, generation)
        )
        self._conn.execute(
            "DELETE FROM key_sets WHERE pid = ? AND generation = ?", (pid, generation)
        )
        self._conn.execute(
            "UPDATE erasures SET purged = 1 WHERE pid = ? AND generation = ?", (pid, generation)
        )
        self._conn.execute(
            "UPDATE copy_erasures SET purged = 1 WHERE pid = ? AND generation = ?",
            (pid, generation),
        )
        return int(cur.rowcount)

    def pending_copy_erasures(self) -> list[tuple[str, str]]:
        rows = self._conn.execute(
            "SELECT kid, pid FROM copy_erasures WHERE purged = 0 ORDER BY pid, kid"
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def purge_set(self, kid: str) -> int:
        self._conn.execute(
            "INSERT OR IGNORE INTO shredded_rids (rid, pid) "
            "SELECT DISTINCT rid, pid FROM records WHERE kid = ?",
            (kid,),
        )
        cur = self._conn.execute("DELETE FROM records WHERE kid = ?", (kid,))
        self._conn.execute("UPDATE copy_erasures SET purged = 1 WHERE kid = ?", (kid,))
        return int(cur.rowcount)

    def compact(self) -> bool:
        with self._lock:
            busy, _log, _done = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return int(busy) == 0


def _split(script: str) -> list[str]:
    """Split the schema script into statements (executescript would COMMIT our transaction)."""
    return [s.strip() for s in script.split(";") if s.strip()]
