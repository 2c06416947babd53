"""PostgreSQL backend (psycopg 3): the same rows as SQLite, for hospitals that run a server.

All of this backend's SQL is in this module. The connection runs in autocommit
mode and psycopg's `Connection.transaction()` provides the nesting (BEGIN, then
savepoints). Concurrency between several nodes or workers on one database:
puts and erasures of a patient serialise on `SELECT ... FOR UPDATE` of its key
row, and puts of one rid on a transaction-scoped advisory lock.

PostgreSQL's MVCC keeps a deleted row as a dead tuple until VACUUM, and its
WAL segments until they are recycled; compact() VACUUMs the tables after a
purge, but the erased key only ever existed wrapped under the KEK, which is
what makes those residues useless.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

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

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS patient_keys (
        pid        TEXT PRIMARY KEY,
        generation BIGINT NOT NULL,
        wrapped    BYTEA NOT NULL,
        n_records  BIGINT NOT NULL,
        n_copies   BIGINT NOT NULL,
        manifest   BYTEA NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS erasures (
        pid        TEXT NOT NULL,
        generation BIGINT NOT NULL,
        erased_at  TEXT NOT NULL,
        n_records  BIGINT NOT NULL,
        n_copies   BIGINT NOT NULL,
        digest     BYTEA NOT NULL,
        purged     BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (pid, generation)
    )""",
    "CREATE INDEX IF NOT EXISTS erasures_pending ON erasures (pid, generation) WHERE NOT purged",
    """CREATE TABLE IF NOT EXISTS key_sets (
        kid        TEXT PRIMARY KEY,
        pid        TEXT NOT NULL,
        generation BIGINT NOT NULL,
        custodian  TEXT NOT NULL,
        is_copy    BOOLEAN NOT NULL,
        wrapped    BYTEA NOT NULL,
        n_records  BIGINT NOT NULL,
        manifest   BYTEA NOT NULL,
        UNIQUE (pid, generation, custodian, is_copy)
    )""",
    """CREATE TABLE IF NOT EXISTS copy_erasures (
        kid        TEXT PRIMARY KEY,
        pid        TEXT NOT NULL,
        generation BIGINT NOT NULL,
        custodian  TEXT NOT NULL,
        erased_at  TEXT NOT NULL,
        n_copies   BIGINT NOT NULL,
        digest     BYTEA NOT NULL,
        purged     BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    "CREATE INDEX IF NOT EXISTS copy_erasures_by_patient "
    "ON copy_erasures (pid, generation, custodian)",
    "CREATE INDEX IF NOT EXISTS copy_erasures_pending ON copy_erasures (kid) WHERE NOT purged",
    """CREATE TABLE IF NOT EXISTS records (
        rid           TEXT NOT NULL,
        version       BIGINT NOT NULL,
        pid           TEXT NOT NULL,
        generation    BIGINT NOT NULL,
        resource_type TEXT NOT NULL,
        custodian     TEXT NOT NULL,
        is_copy       BOOLEAN NOT NULL,
        nonce         BYTEA NOT NULL,
        ciphertext    BYTEA NOT NULL,
        salt_ct       BYTEA,
        kid           TEXT NOT NULL,
        PRIMARY KEY (rid, version)
    )""",
    "CREATE INDEX IF NOT EXISTS records_by_patient ON records (pid, generation, is_copy)",
    "CREATE INDEX IF NOT EXISTS records_by_set ON records (kid)",
    """CREATE TABLE IF NOT EXISTS shredded_rids (
        rid TEXT PRIMARY KEY,
        pid TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS provisional_units (
        unit       TEXT PRIMARY KEY,
        claim      BYTEA,
        records    BYTEA NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
)

# Advisory-lock namespaces (first int of pg_advisory_xact_lock(int, int)).
_LOCK_SCHEMA = 0x6D6C0001
_LOCK_RID = 0x6D6C0002

_RECORD_COLS = (
    "r.rid, r.version, r.pid, r.generation, r.resource_type, r.custodian, r.is_copy, "
    "r.nonce, r.ciphertext, r.salt_ct, r.kid"
)
_KEY_COLS = "pid, generation, wrapped, n_records, n_copies, manifest"
_SET_COLS = "kid, pid, generation, custodian, is_copy, wrapped, n_records, manifest"
_COPY_ERASURE_COLS = "kid, pid, generation, custodian, erased_at, n_copies, digest, purged"


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


class PostgresBackend:
    """Vault rows in a PostgreSQL database reached by a libpq DSN."""

    name = "postgres"

    def __init__(self, dsn: str, *, connect_timeout: int = 10):
        self._conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout
        )
        self._lock = threading.RLock()
        try:
            with self.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_SCHEMA,))
                self._check_schema_version()
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION).encode(),),
                )
        except BaseException:
            self._conn.close()
            raise

    def _check_schema_version(self) -> None:
        """Refuse a vault written by an older schema (see SCHEMA_REFUSAL) before touching it."""
        exists = self._one("SELECT to_regclass('meta') IS NOT NULL", ())
        if exists is None or not exists[0]:
            return
        row = self._one("SELECT value FROM meta WHERE key = 'schema_version'", ())
        found = None if row is None else bytes(row[0]).decode()
        if found is not None and found != str(SCHEMA_VERSION):
            raise VaultConfigError(SCHEMA_REFUSAL.format(found=found, needed=SCHEMA_VERSION))

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN at the outermost level, savepoints inside (psycopg's own nesting)."""
        with self._lock, self._conn.transaction():
            yield

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return self._conn.execute(sql, params).fetchone()

    def get_meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return None if row is None else bytes(row[0])

    def set_meta_if_absent(self, key: str, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (key, value),
        )

    # ---------------------------------------------------------------- keys

    def lock_key(self, pid: str) -> KeyRow | None:
        return _key_row(
            self._one(f"SELECT {_KEY_COLS} FROM patient_keys WHERE pid = %s FOR UPDATE", (pid,))
        )

    def read_key(self, pid: str) -> KeyRow | None:
        return _key_row(self._one(f"SELECT {_KEY_COLS} FROM patient_keys WHERE pid = %s", (pid,)))

    def insert_key(self, row: KeyRow) -> bool:
        cur = self._conn.execute(
            f"INSERT INTO patient_keys ({_KEY_COLS}) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (pid) DO NOTHING",
            (row.pid, row.generation, row.wrapped, row.n_records, row.n_copies, row.manifest),
        )
        return cur.rowcount == 1

    def update_key_counters(
        self, pid: str, generation: int, n_records: int, n_copies: int, manifest: bytes
    ) -> None:
        self._conn.execute(
            "UPDATE patient_keys SET n_records = %s, n_copies = %s, manifest = %s "
            "WHERE pid = %s AND generation = %s",
            (n_records, n_copies, manifest, pid, generation),
        )

    def delete_key(self, pid: str, generation: int) -> bool:
        cur = self._conn.execute(
            "DELETE FROM patient_keys WHERE pid = %s AND generation = %s", (pid, generation)
        )
        return cur.rowcount == 1

    # ------------------------------------------------------------ key sets

    def lock_set(self, pid: str, generation: int, custodian: str, is_copy: bool) -> SetRow | None:
        return set_from_row(
            self._one(
                f"SELECT {_SET_COLS} FROM key_sets "
                "WHERE pid = %s AND generation = %s AND custodian = %s AND is_copy = %s "
                "FOR UPDATE",
                (pid, generation, custodian, is_copy),
            )
        )

    def read_set(self, kid: str) -> SetRow | None:
        return set_from_row(self._one(f"SELECT {_SET_COLS} FROM key_sets WHERE kid = %s", (kid,)))

    def sets_of(self, pid: str, generation: int) -> list[SetRow]:
        rows = self._conn.execute(
            f"SELECT {_SET_COLS} FROM key_sets WHERE pid = %s AND generation = %s "
            "ORDER BY is_copy, custodian",
            (pid, generation),
        ).fetchall()
        return [r for r in map(set_from_row, rows) if r is not None]

    def insert_set(self, row: SetRow) -> bool:
        cur = self._conn.execute(
            f"INSERT INTO key_sets ({_SET_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
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
        return cur.rowcount == 1

    def update_set_counters(self, kid: str, n_records: int, manifest: bytes) -> None:
        self._conn.execute(
            "UPDATE key_sets SET n_records = %s, manifest = %s WHERE kid = %s",
            (n_records, manifest, kid),
        )

    def delete_set(self, kid: str) -> bool:
        cur = self._conn.execute("DELETE FROM key_sets WHERE kid = %s", (kid,))
        return cur.rowcount == 1

    def delete_sets(self, pid: str, generation: int) -> None:
        self._conn.execute(
            "DELETE FROM key_sets WHERE pid = %s AND generation = %s", (pid, generation)
        )

    def insert_copy_erasure(self, row: CopyErasureRow) -> None:
        self._conn.execute(
            f"INSERT INTO copy_erasures ({_COPY_ERASURE_COLS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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

    def copy_erasures(
        self, pid: str, generation: int, custodian: str | None
    ) -> list[CopyErasureRow]:
        sql = f"SELECT {_COPY_ERASURE_COLS} FROM copy_erasures WHERE pid = %s AND generation = %s"
        params: tuple[Any, ...] = (pid, generation)
        if custodian is not None:
            sql += " AND custodian = %s"
            params += (custodian,)
        rows = self._conn.execute(sql + " ORDER BY erased_at, kid", params).fetchall()
        return [copy_erasure_from_row(r) for r in rows]

    # ------------------------------------------------------------ erasures

    def latest_erasure(self, pid: str) -> ErasureRow | None:
        row = self._one(
            "SELECT pid, generation, erased_at, n_records, n_copies, digest, purged "
            "FROM erasures WHERE pid = %s ORDER BY generation DESC LIMIT 1",
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
        self._conn.execute(
            "INSERT INTO erasures (pid, generation, erased_at, n_records, n_copies, digest, "
            "purged) VALUES (%s, %s, %s, %s, %s, %s, %s)",
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

    # ------------------------------------------------------------- records

    def rid_state(self, rid: str) -> RidState | None:
        # Serialise concurrent puts of one rid (whatever their pid) until commit.
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_RID, rid))
        row = self._one(
            "SELECT pid, generation, version, kid FROM records WHERE rid = %s "
            "ORDER BY version DESC LIMIT 1",
            (rid,),
        )
        if row is None:
            return None
        return RidState(
            pid=row[0], generation=int(row[1]), max_version=int(row[2]), kid=str(row[3])
        )

    def shredded_owner(self, rid: str) -> str | None:
        row = self._one("SELECT pid FROM shredded_rids WHERE rid = %s", (rid,))
        return None if row is None else str(row[0])

    def insert_record(self, row: RecordRow) -> bool:
        cur = self._conn.execute(
            "INSERT INTO records (rid, version, pid, generation, resource_type, custodian, "
            "is_copy, nonce, ciphertext, salt_ct, kid) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (rid, version) DO NOTHING",
            (
                row.rid,
                row.version,
                row.pid,
                row.generation,
                row.resource_type,
                row.custodian,
                row.is_copy,
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
            "LEFT JOIN key_sets s ON s.kid = r.kid WHERE r.rid = %s"
        )
        if version is None:
            row = self._one(base + " ORDER BY r.version DESC LIMIT 1", (rid,))
        else:
            row = self._one(base + " AND r.version = %s", (rid, version))
        if row is None:
            return None
        return record_from_row(row)

    def versions(self, rid: str) -> list[int]:
        rows = self._conn.execute(
            "SELECT version FROM records WHERE rid = %s ORDER BY version", (rid,)
        ).fetchall()
        return [int(r[0]) for r in rows]

    def list_records(self, pid: str, generation: int, include_copies: bool) -> list[RecordInfo]:
        sql = (
            "SELECT r.pid, r.rid, r.version, r.resource_type, r.custodian, r.is_copy "
            "FROM records r JOIN key_sets s ON s.kid = r.kid "
            "WHERE r.pid = %s AND r.generation = %s"
        )
        if not include_copies:
            sql += " AND NOT r.is_copy"
        rows = self._conn.execute(sql + " ORDER BY r.rid, r.version", (pid, generation)).fetchall()
        return [info_from_row(r) for r in rows]

    def patients(self) -> list[str]:
        rows = self._conn.execute("SELECT pid FROM patient_keys ORDER BY pid").fetchall()
        return [str(r[0]) for r in rows]

    # --------------------------------------------------------------- purge

    def delete_record(self, rid: str, version: int) -> RecordRow | None:
        row = self._one(
            "DELETE FROM records WHERE rid = %s AND version = %s RETURNING "
            "rid, version, pid, generation, resource_type, custodian, is_copy, nonce, "
            "ciphertext, salt_ct, kid, NULL, NULL",
            (rid, version),
        )
        return None if row is None else record_from_row(row)[0]

    # -------------------------------------------------------- provisional

    def insert_provisional(self, unit: str, records: bytes, updated_at: float) -> None:
        self._conn.execute(
            "INSERT INTO provisional_units (unit, claim, records, updated_at) "
            "VALUES (%s, NULL, %s, %s)",
            (unit, records, updated_at),
        )

    def set_provisional_claim(self, unit: str, claim: bytes, updated_at: float) -> bool:
        cur = self._conn.execute(
            "UPDATE provisional_units SET claim = %s, updated_at = %s WHERE unit = %s",
            (claim, updated_at, unit),
        )
        return cur.rowcount == 1

    def lock_provisional(self, unit: str) -> ProvisionalUnit | None:
        row = self._conn.execute(
            "SELECT unit, claim, records, updated_at FROM provisional_units "
            "WHERE unit = %s FOR UPDATE",
            (unit,),
        ).fetchone()
        return None if row is None else provisional_from_row(row)

    def forget_shredded(self, rid: str) -> None:
        self._conn.execute("DELETE FROM shredded_rids WHERE rid = %s", (rid,))

    def delete_provisional(self, unit: str) -> bool:
        cur = self._conn.execute("DELETE FROM provisional_units WHERE unit = %s", (unit,))
        return cur.rowcount == 1

    def list_provisional(self) -> list[ProvisionalUnit]:
        rows = self._conn.execute(
            "SELECT unit, claim, records, updated_at FROM provisional_units "
            "ORDER BY updated_at, unit"
        ).fetchall()
        return [provisional_from_row(r) for r in rows]

    def pending_erasures(self) -> list[tuple[str, int]]:
        rows = self._conn.execute(
            "SELECT pid, generation FROM erasures WHERE NOT purged ORDER BY pid, generation"
        ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def purge(self, pid: str, generation: int) -> int:
        self._conn.execute(
            "INSERT INTO shredded_rids (rid, pid) "
            "SELECT DISTINCT rid, pid FROM records WHERE pid = %s AND generation = %s "
            "ON CONFLICT (rid) DO NOTHING",
            (pid, generation),
        )
        cur = self._conn.execute(
            "DELETE FROM records WHERE pid = %s AND generation = %s", (pid, generation)
        )
        self._conn.execute(
            "DELETE FROM key_sets WHERE pid = %s AND generation = %s", (pid, generation)
        )
        self._conn.execute(
            "UPDATE erasures SET purged = TRUE WHERE pid = %s AND generation = %s",
            (pid, generation),
        )
        self._conn.execute(
            "UPDATE copy_erasures SET purged = TRUE WHERE pid = %s AND generation = %s",
            (pid, generation),
        )
        return int(cur.rowcount)

    def pending_copy_erasures(self) -> list[tuple[str, str]]:
        rows = self._conn.execute(
            "SELECT kid, pid FROM copy_erasures WHERE NOT purged ORDER BY pid, kid"
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def purge_set(self, kid: str) -> int:
        self._conn.execute(
            "INSERT INTO shredded_rids (rid, pid) "
            "SELECT DISTINCT rid, pid FROM records WHERE kid = %s "
            "ON CONFLICT (rid) DO NOTHING",
            (kid,),
        )
        cur = self._conn.execute("DELETE FROM records WHERE kid = %s", (kid,))
        self._conn.execute("UPDATE copy_erasures SET purged = TRUE WHERE kid = %s", (kid,))
        return int(cur.rowcount)

    def compact(self) -> bool:
        with self._lock:
            self._conn.execute("VACUUM patient_keys, key_sets, records")
            return True
