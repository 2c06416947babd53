"""SQLite backend: one file under the hospital's home, WAL, secure_delete.

The vault's SQL is written once in sql.py; this module holds only what SQLite
does its own way. `PRAGMA secure_delete=ON` makes SQLite overwrite deleted rows
and freed pages with zeros, so a purged ciphertext or a destroyed key row
leaves no bytes behind in the database file; the WAL, which still holds older
page images, is truncated by compact().
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medledger.vault.errors import VaultConfigError
from medledger.vault.sql import SQLBackend

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


class SQLiteDialect:
    """SQLite's side of the SQL: `?` placeholders, INSERT OR IGNORE, STRICT tables of
    INTEGER/BLOB/REAL (booleans as 0/1), and a write lock taken at BEGIN instead of
    row locks."""

    name = "sqlite"
    true = "1"
    false = "0"
    types = {
        "int": "INTEGER",
        "blob": "BLOB",
        "bool": "INTEGER",
        "real": "REAL",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "strict": " STRICT",
    }
    # BEGIN IMMEDIATE already holds the database's write lock, which serialises writers.
    for_update = ""
    meta_exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"

    def __init__(self, conn: sqlite3.Connection, path: Path, synchronous: str = "FULL"):
        self.conn = conn
        self.location = str(path)
        self._depth = 0
        # The connection's level, and whether a commit at it waits for the disk (in WAL
        # mode, FULL and EXTRA sync the log at each commit; NORMAL only at checkpoints).
        self._synchronous = synchronous
        self._syncs = synchronous in ("FULL", "EXTRA")

    def sql(self, statement: str) -> str:
        return statement

    def execute(self, statement: str, params: Sequence[Any]) -> sqlite3.Cursor:
        return self.conn.execute(statement, params)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> int:
        return self.conn.executemany(statement, rows).rowcount

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """Outermost level: BEGIN IMMEDIATE ... COMMIT; nested levels: savepoints.

        BEGIN IMMEDIATE takes the write lock up front so two processes never deadlock
        on a lock upgrade. The caller (SQLBackend) holds its lock around this. Not
        `durable`: the transaction runs at `synchronous=NORMAL` (SQLite refuses a change of
        level inside a transaction): its commit appends to the WAL without syncing it, and
        the next commit at FULL syncs the WAL, this commit's frames included.
        """
        depth = self._depth
        if depth == 0 and not durable and self._syncs:
            self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction(depth):
                    yield
            finally:
                self.conn.execute(f"PRAGMA synchronous={self._synchronous}")
            return
        with self._transaction(depth):
            yield

    @contextmanager
    def _transaction(self, depth: int) -> Iterator[None]:
        name = f"sp{depth}"
        self.conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if depth == 0:
                self.conn.execute("ROLLBACK")
            else:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self._depth -= 1
        self.conn.execute("COMMIT" if depth == 0 else f"RELEASE SAVEPOINT {name}")

    def insert_or_ignore(self, body: str, conflict: str) -> str:
        return f"INSERT OR IGNORE INTO {body}"

    def lock_schema(self) -> None:
        """BEGIN IMMEDIATE already excludes other writers."""

    def lock_rid(self, rid: str) -> None:
        """BEGIN IMMEDIATE already excludes other writers."""

    def lock_journal(self) -> None:
        pass  # BEGIN IMMEDIATE holds the write lock already

    def compact(self) -> bool:
        busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy) == 0

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL on the last close)."""
        self.conn.close()


class SQLiteBackend(SQLBackend):
    """Vault rows in one SQLite file (WAL mode, secure_delete, foreign processes welcome)."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000):
        sync = synchronous.upper()
        if sync not in _SYNCHRONOUS:
            raise VaultConfigError(f"sqlite synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Create the file 0600 before SQLite does: its -wal and -shm files copy this mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        c = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1e3
        )
        self._conn = c
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA secure_delete=ON")
            c.execute(f"PRAGMA synchronous={sync}")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if c.execute("PRAGMA secure_delete").fetchone()[0] != 1:
                raise VaultConfigError("this SQLite build refuses secure_delete; refusing to run")
        except BaseException:
            c.close()
            raise
        super().__init__(SQLiteDialect(c, self.path, sync))
