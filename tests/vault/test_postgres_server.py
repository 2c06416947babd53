"""The throw-away PostgreSQL server: started on loopback, cleaned up, and loud when missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.postgres_server import REPO, PostgresServer, PostgresUnavailable, find_bin_dir


@pytest.mark.postgres
def test_server_listens_on_loopback_only_and_cleans_up(pg_server: PostgresServer) -> None:
    assert pg_server.base is not None and pg_server.base.is_dir()
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()
        socket_dir = conn.execute("SHOW unix_socket_directories").fetchone()
        port = conn.execute("SHOW port").fetchone()
    assert listen == ("127.0.0.1",)
    assert socket_dir == (str(pg_server.base),)
    assert port == (str(pg_server.port),)
    with pg_server.database() as dsn, psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None and row[0].startswith("t_")
        name = row[0]
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
    assert left == []  # dropped after the test


@pytest.mark.postgres
def test_a_second_server_is_private_and_removed_on_stop(tmp_path: Path) -> None:
    server = PostgresServer(build=tmp_path / "build").start()
    base = server.base
    assert base is not None and (base / "data" / "PG_VERSION").exists()
    assert base.parent == tmp_path / "build" or base.name.startswith("medledger-pg-")
    server.stop()
    assert not base.exists()
    server.stop()  # idempotent


def test_missing_binaries_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDLEDGER_PG_BIN", str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="postgresql` package"):
        find_bin_dir()


def test_missing_binaries_fail_the_postgres_tests_instead_of_skipping(tmp_path: Path) -> None:
    env = {**os.environ, "MEDLEDGER_PG_BIN": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/vault/test_vault.py::test_metadata_key[postgres]",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout
    assert "cannot run the PostgreSQL vault tests" in proc.stdout
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.postgres
def test_a_durable_server_keeps_postgresqls_own_defaults(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    """The tests' server skips fsync for speed; `durable=True` (benchmarks: `bench hapi`'s
    peer database) keeps fsync and synchronous commit on, as medledger's own storage is."""

    def settings(server: PostgresServer) -> tuple[object, ...]:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            return tuple(
                conn.execute(f"SHOW {name}").fetchone()
                for name in ("fsync", "synchronous_commit", "full_page_writes")
            )

    assert settings(pg_server) == (("off",), ("off",), ("off",))
    with PostgresServer(build=tmp_path / "build", durable=True) as durable:
        assert settings(durable) == (("on",), ("on",), ("on",))
