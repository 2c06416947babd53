"""A throw-away PostgreSQL server for the tests, from Debian's binaries.

Started with initdb and pg_ctl from /usr/lib/postgresql/<version>/bin (the
`postgresql` Debian package, which `make system` installs when missing), with
its data under build/pg-<random>/ in the repository, listening only on
127.0.0.1 on a free port, its unix socket in that folder, trust
authentication. stop() shuts it down and deletes the folder.

initdb and the server refuse to run as root, so when we are root they run as
the `postgres` system user (or `nobody` if it does not exist) on a folder
chowned to that user. If that user cannot reach the repository's build folder
(a checkout under a private home), the data goes to a private temporary
folder instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
STALE_AFTER_S = 6 * 3600


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the server could not start."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl.

    $MEDLEDGER_PG_BIN, when set, is the only folder tried.
    """
    override = os.environ.get("MEDLEDGER_PG_BIN")
    if override:
        candidates = [Path(override)]
    else:
        candidates = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0],
            reverse=True,
        )
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    where = override or "/usr/lib/postgresql/*/bin"
    raise PostgresUnavailable(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where}: "
        "install Debian's `postgresql` package (`make system` does it), "
        "or point $MEDLEDGER_PG_BIN at a folder holding them"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(build: Path = BUILD, max_age_s: float = STALE_AFTER_S) -> None:
    """Delete pg-* folders left by killed test runs: old, and with no live postmaster."""
    now = time.time()
    for folder in build.glob("pg-*"):
        try:
            if now - folder.stat().st_mtime < max_age_s:
                continue
            pidfile = folder / "data" / "postmaster.pid"
            if pidfile.exists():
                first = pidfile.read_text().split("\n", 1)[0].strip()
                if first.isdigit() and _pid_alive(int(first)):
                    continue
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


class PostgresServer:
    """One private PostgreSQL cluster; use as a context manager or start()/stop()."""

    def __init__(self, build: Path = BUILD, *, superuser: str = "postgres", durable: bool = False):
        """`durable`: PostgreSQL's own defaults (fsync, synchronous commit, full page writes,
        128 MB of shared buffers), for benchmarks; the tests' server skips them for speed."""
        self.bin_dir = find_bin_dir()
        self.durable = durable
        self.build = build
        self.superuser = superuser
        self.host = "127.0.0.1"
        self.port = 0
        self.base: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._started = False

    # ------------------------------------------------------------- helpers

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder (PGDATA)."""
        assert self.base is not None, "server not started"
        return self.base / "data"

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
        if self._run_as is not None:
            env["HOME"] = self._run_as.pw_dir
        proc = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            **self._user_kwargs(),
        )
        if check and proc.returncode != 0:
            raise PostgresUnavailable(
                f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                + self.log_tail()
            )
        return proc

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for error messages."""
        if self.base is None:
            return ""
        log = self.base / "server.log"
        if not log.exists():
            return ""
        return "server log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def _pick_user(self) -> None:
        if os.geteuid() != 0:
            self._run_as = None
            return
        for name in ("postgres", "nobody"):
            try:
                self._run_as = pwd.getpwnam(name)
                return
            except KeyError:
                continue
        raise PostgresUnavailable("running as root and neither `postgres` nor `nobody` exists")

    def _can_reach(self, folder: Path) -> bool:
        if self._run_as is None:
            return True
        proc = subprocess.run(
            ["/usr/bin/test", "-w", str(folder)], capture_output=True, **self._user_kwargs()
        )
        return proc.returncode == 0

    def _make_base(self) -> Path:
        self.build.mkdir(parents=True, exist_ok=True)
        base = self.build / f"pg-{secrets.token_hex(4)}"
        base.mkdir(mode=0o700)
        if self._run_as is not None:
            os.chown(base, self._run_as.pw_uid, self._run_as.pw_gid)
        if self._can_reach(base):
            return base
        shutil.rmtree(base, ignore_errors=True)
        base = Path(tempfile.mkdtemp(prefix="medledger-pg-"))
        if self._run_as is not None:
            os.chown(base, self._run_as.pw_uid, self._run_as.pw_gid)
        if not self._can_reach(base):
            shutil.rmtree(base, ignore_errors=True)
            raise PostgresUnavailable("no folder the PostgreSQL user can write to")
        return base

    # ----------------------------------------------------------- lifecycle

    def start(self) -> PostgresServer:
        """initdb a fresh cluster and start it on a free loopback port."""
        cleanup_stale(self.build)
        self._pick_user()
        self.base = self._make_base()
        atexit.register(self.stop)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        last_error: PostgresUnavailable | None = None
        for _attempt in range(5):
            self.port = free_port()
            fast = ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            fast.append("-c shared_buffers=32MB")
            options = " ".join(
                [
                    f"-c listen_addresses={self.host}",
                    f"-c port={self.port}",
                    f"-c unix_socket_directories={self.base}",
                    *([] if self.durable else fast),
                    "-c max_connections=40",
                ]
            )
            proc = self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.base / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
                check=False,
            )
            if proc.returncode == 0:
                self._started = True
                return self
            last_error = PostgresUnavailable(
                f"pg_ctl start failed:\n{proc.stdout}\n{proc.stderr}\n{self.log_tail()}"
            )
        self.stop()
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server (if running) and delete its folder. Safe to call twice."""
        if self.base is None:
            return
        if self._started:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
            self._started = False
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- access

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq connection string for a database of this server."""
        return f"host={self.host} port={self.port} user={self.superuser} dbname={dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement in autocommit mode (CREATE/DROP DATABASE, CHECKPOINT)."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database for one test; dropped afterwards. Yields its DSN."""
        name = f"t_{secrets.token_hex(6)}"
        self.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.dsn(name)
        finally:
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
