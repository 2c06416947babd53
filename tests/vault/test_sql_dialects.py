"""The one SQL body (vault/sql.py) rendered in each database's dialect."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, cast

from medledger.vault.postgres_backend import PostgresDialect
from medledger.vault.sql import schema_statements
from medledger.vault.sqlite_backend import SQLiteDialect

# Only renders SQL here, never runs any: no connection needed.
_PG = PostgresDialect(cast(Any, None))


def test_sqlite_schema_is_strict_with_integer_booleans(tmp_path: Path) -> None:
    dialect = SQLiteDialect(sqlite3.connect(":memory:"), tmp_path / "vault.db")
    statements = schema_statements(dialect)
    assert all("{" not in s for s in statements)
    records = next(s for s in statements if "TABLE IF NOT EXISTS records" in s)
    assert records.endswith(") STRICT")
    assert "is_copy       INTEGER NOT NULL" in records
    assert "WHERE purged = 0" in next(s for s in statements if "erasures_pending" in s)
    assert dialect.sql("SELECT 1 WHERE a = ?") == "SELECT 1 WHERE a = ?"
    assert (
        dialect.insert_or_ignore("t (a) VALUES (?)", "(a)")
        == "INSERT OR IGNORE INTO t (a) VALUES (?)"
    )


def test_postgres_schema_has_native_types_and_placeholders() -> None:
    dialect = _PG
    statements = schema_statements(dialect)
    records = next(s for s in statements if "TABLE IF NOT EXISTS records" in s)
    assert "STRICT" not in records
    assert "is_copy       BOOLEAN NOT NULL" in records
    assert "version       BIGINT NOT NULL" in records
    provisional = next(s for s in statements if "TABLE IF NOT EXISTS provisional_units" in s)
    assert "updated_at DOUBLE PRECISION NOT NULL" in provisional
    journal = next(s for s in statements if "TABLE IF NOT EXISTS replication_journal" in s)
    assert "seq  BIGSERIAL PRIMARY KEY" in journal
    assert dialect.sql("WHERE a = ? AND b = ?") == "WHERE a = %s AND b = %s"
    assert (
        dialect.insert_or_ignore("t (a) VALUES (?)", "(a)")
        == "INSERT INTO t (a) VALUES (?) ON CONFLICT (a) DO NOTHING"
    )
    assert (
        dialect.insert_or_ignore("t (a) VALUES (?)", "")
        == "INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING"
    )


def test_both_dialects_make_the_same_tables_and_indexes(tmp_path: Path) -> None:
    def names(statements: list[str]) -> list[str]:
        # CREATE ... IF NOT EXISTS name, DROP TABLE IF EXISTS name (a derived table replaced)
        return [s.split("EXISTS ")[1].split()[0] for s in statements]

    sqlite = SQLiteDialect(sqlite3.connect(":memory:"), tmp_path / "vault.db")
    assert names(schema_statements(sqlite)) == names(schema_statements(_PG))
