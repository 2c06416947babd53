"""PostgreSQL backend (psycopg 3): the same rows as SQLite, for hospitals that run a server.

The vault's SQL is written once in sql.py; this module holds only what
PostgreSQL does its own way. The connection runs in autocommit mode and
psycopg's `Connection.transaction()` provides the nesting (BEGIN, then
savepoints). Concurrency between several nodes or workers on one database:
puts and erasures of a patient serialise on `SELECT ... FOR UPDATE` of its key
row, and puts of one rid on a transaction-scoped advisory lock.

PostgreSQL's MVCC keeps a deleted row as a dead tuple until VACUUM, and its
WAL segments until they are recycled; compact() VACUUMs the tables after a
purge, but the erased key only ever existed wrapped under the KEK, which is
what makes those residues useless.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from medledger.vault.sql import SQLBackend

# Advisory-lock namespaces (first int of pg_advisory_xact_lock(int, int)).
_LOCK_SCHEMA = 0x6D6C0001
_LOCK_RID = 0x6D6C0002
_LOCK_JOURNAL = 0x6D6C0003


class PostgresDialect:
    """PostgreSQL's side of the SQL: `%s` placeholders, ON CONFLICT DO NOTHING, BIGINT/
    BYTEA/BOOLEAN columns, row locks by FOR UPDATE and advisory locks."""

    name = "postgres"
    true = "TRUE"
    false = "FALSE"
    types = {
        "int": "BIGINT",
        "blob": "BYTEA",
        "bool": "BOOLEAN",
        "real": "DOUBLE PRECISION",
        "serial": "BIGSERIAL PRIMARY KEY",
        "strict": "",
    }
    for_update = " FOR UPDATE"
    meta_exists = "SELECT 1 WHERE to_regclass('meta') IS NOT NULL"
    location = ""  # a DSN may carry a password: refusals do not quote it

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]):
        self.conn = conn

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def execute(self, statement: str, params: Sequence[Any]) -> psycopg.Cursor[tuple[Any, ...]]:
        return self.conn.execute(statement, params or None)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> int:
        with self.conn.cursor() as cursor:
            cursor.executemany(statement, rows)
            return cursor.rowcount

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """BEGIN at the outermost level, savepoints inside (psycopg's own nesting). Not
        `durable`: an asynchronous commit (`synchronous_commit = off` for this transaction
        only); the next synchronous commit flushes the WAL up to itself, this one included."""
        outermost = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self.conn.transaction():
            if outermost and not durable:
                self.conn.execute("SET LOCAL synchronous_commit = off")
            yield

    def insert_or_ignore(self, body: str, conflict: str) -> str:
        target = f" {conflict}" if conflict else ""
        return f"INSERT INTO {body} ON CONFLICT{target} DO NOTHING"

    def lock_schema(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_SCHEMA,))

    def lock_rid(self, rid: str) -> None:
        # Serialise concurrent puts of one rid (whatever their pid) until commit.
        self.conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_RID, rid))

    def lock_journal(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_JOURNAL,))

    def compact(self) -> bool:
        self.conn.execute("VACUUM patient_keys, key_sets, records")
        return True

    def close(self) -> None:
        self.conn.close()


class PostgresBackend(SQLBackend):
    """Vault rows in a PostgreSQL database reached by a libpq DSN."""

    def __init__(self, dsn: str, *, connect_timeout: int = 10):
        self._conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout
        )
        super().__init__(PostgresDialect(self._conn))
