"""Fixtures for the vault tests: every backend-level test runs on SQLite and on PostgreSQL.

`vault_env` is parametrised over the two backends; the PostgreSQL variant is
marked `postgres` and gets a fresh database on a session-wide throw-away
server (tests/postgres_server.py). If PostgreSQL's binaries are missing the
tests FAIL with instructions: a silently skipped backend is an untested one.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from medledger.vault import (
    Vault,
    VaultConfig,
)
from tests.postgres_server import PostgresServer, PostgresUnavailable

HOSPITAL = "hosp-lyon"


def make_pid(seed: str) -> str:
    """A pid shaped like the real ones (HMAC-SHA256 hex); the seed keeps tests readable."""
    return hashlib.sha256(seed.encode()).hexdigest()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the whole session."""
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"cannot run the PostgreSQL vault tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped after the test."""
    with pg_server.database() as dsn:
        yield dsn


@dataclass
class VaultEnv:
    """One test's storage: opens vaults on it and gives raw access for tampering and scans."""

    backend: str
    kek: bytes
    sqlite_path: Path | None = None
    dsn: str | None = None
    pg_server: PostgresServer | None = None
    opened: list[Vault] = field(default_factory=list)

    def config(self, *, kek: bytes | None = None, hospital_id: str = HOSPITAL) -> VaultConfig:
        if self.backend == "sqlite":
            return VaultConfig(
                hospital_id, backend="sqlite", path=self.sqlite_path, kek=kek or self.kek
            )
        return VaultConfig(hospital_id, backend="postgres", dsn=self.dsn, kek=kek or self.kek)

    def open(self, *, kek: bytes | None = None, hospital_id: str = HOSPITAL) -> Vault:
        vault = Vault.open(self.config(kek=kek, hospital_id=hospital_id))
        self.opened.append(vault)
        return vault

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run raw SQL on the vault's database, as an attacker with file access would."""
        if self.backend == "sqlite":
            assert self.sqlite_path is not None
            conn = sqlite3.connect(self.sqlite_path, isolation_level=None)
            try:
                cur = conn.execute(sql, params)
                return [tuple(r) for r in cur.fetchall()]
            finally:
                conn.close()
        assert self.dsn is not None
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            pg_cur = pg.execute(sql.replace("?", "%s"), params)
            return [tuple(r) for r in pg_cur.fetchall()] if pg_cur.description else []

    def raw_bytes(self) -> bytes:
        """Everything the database holds, as bytes.

        SQLite: the raw .db, -wal and -shm files (free pages and old WAL frames
        included). PostgreSQL: every row of every table of the vault's schema.
        """
        if self.backend == "sqlite":
            assert self.sqlite_path is not None
            blobs = []
            for suffix in ("", "-wal", "-shm"):
                f = Path(str(self.sqlite_path) + suffix)
                if f.exists():
                    blobs.append(f.read_bytes())
            return b"\x00".join(blobs)
        tables = [
            r[0]
            for r in self.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        assert {"records", "patient_keys", "erasures", "meta", "shredded_rids"} <= set(tables)
        out = bytearray()
        for table in tables:
            for row in self.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    out += value if isinstance(value, bytes) else str(value).encode()
                    out += b"\x00"
        return bytes(out)

    def disk_bytes(self) -> bytes:
        """PostgreSQL only: every file of the server's data folder, after a CHECKPOINT."""
        assert self.pg_server is not None
        self.pg_server.execute("CHECKPOINT")
        out = bytearray()
        for f in sorted(self.pg_server.data_dir.rglob("*")):
            if f.is_file():
                out += f.read_bytes()
        return bytes(out)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def vault_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VaultEnv]:
    """A fresh storage on the parametrised backend."""
    kek = secrets.token_bytes(32)
    if request.param == "sqlite":
        env = VaultEnv("sqlite", kek, sqlite_path=tmp_path / "home" / "vault.db")
    else:
        dsn = request.getfixturevalue("pg_dsn")
        env = VaultEnv("postgres", kek, dsn=dsn, pg_server=request.getfixturevalue("pg_server"))
    try:
        yield env
    finally:
        for vault in env.opened:
            vault.close()


@pytest.fixture
def vault(vault_env: VaultEnv) -> Vault:
    """An open vault on the parametrised backend."""
    return vault_env.open()


@pytest.fixture
def pid_factory() -> Callable[[str], str]:
    return make_pid


# Deliberately odd formatting, key order and escapes: the vault must return these exact bytes.
PATIENT = (
    b'{"resourceType":"Patient",  "id":"p1",\n "name":[{"family":"Zephyrine-Quasimodo",'
    b'"given":["Ol\\u00e9sia","Brunehaut"]}],"birthDate":"1961-02-29","zz":1.50, "aa":null}'
)


def obs(n: int, marker: str = "marker") -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": f"o{n}",
            "status": "final",
            "note": [{"text": marker}],
        }
    )
