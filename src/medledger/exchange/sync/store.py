"""The sync agent's own state: its cursor, the metadata keys it holds, interests and jobs.

One SQLite file in the node's home (`exchange/sync.db`). The cursor and the jobs a block
yields move in one transaction, so a crash never loses a job; the metadata keys are encrypted
at rest under a key derived from this hospital's box key, and overwritten on disk when
forgotten.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_BACKOFF_S = 60.0
MAX_ATTEMPTS = 15  # about six minutes of retries, then the job is given up (and kept in `done`)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (id INTEGER PRIMARY KEY CHECK (id = 1), height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    custodian TEXT NOT NULL, pid TEXT NOT NULL,
    key_ct BLOB NOT NULL, obtained_ms INTEGER NOT NULL,
    PRIMARY KEY (custodian, pid)
);
CREATE TABLE IF NOT EXISTS interest (
    pid TEXT NOT NULL, purpose TEXT NOT NULL, source TEXT NOT NULL, since_ms INTEGER NOT NULL,
    PRIMARY KEY (pid, purpose, source)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL, custodian TEXT NOT NULL, pid TEXT NOT NULL, purpose TEXT NOT NULL,
    ref INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,  -- bumped by every new trigger while queued or running
    attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (kind, custodian, pid, purpose, ref)
);
CREATE TABLE IF NOT EXISTS done (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL, custodian TEXT NOT NULL, pid TEXT NOT NULL, ref INTEGER NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL, time_ms INTEGER NOT NULL
);
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str  # sync, deliver, confirm, erase
    custodian: str
    pid: str
    purpose: str
    ref: int  # referral or erasure request id
    attempts: int
    seq: int


class SyncStore:
    """The agent's cursor, metadata keys (encrypted at rest), interests and jobs."""

    def __init__(self, path: Path, box_key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a forgotten key is overwritten on disk
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)
        self._lock = threading.RLock()
        self._passed = 0  # the last block planned with nothing to write (memory only)
        self._aead = AESGCM(
            HKDF(hashes.SHA256(), 32, None, b"medledger/exchange/grants/v1").derive(box_key)
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- cursor ------------------------------------------------------------------------
    def cursor(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT height FROM cursor WHERE id = 1").fetchone()
            return max(0 if row is None else int(row[0]), self._passed)

    def pass_block(self, height: int) -> None:
        """Move the cursor past a block that gave the agent nothing to write, in memory only
        (no transaction, no fsync). Safe across a crash: the stored cursor stays at the last
        block that wrote something, with its jobs in the same transaction, so a restart
        plans again only blocks that wrote nothing, from the same committed events."""
        with self._lock:
            self._passed = max(self._passed, height)

    # -- metadata keys -----------------------------------------------------------------
    def _aad(self, custodian: str, pid: str) -> bytes:
        return f"{custodian}/{pid}".encode()

    def keys(self, custodian: str, pid: str) -> dict[int, dict[str, bytes]] | None:
        """The custodian's keys held for the patient ({epoch: {category: key}}), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT key_ct FROM grants WHERE custodian = ? AND pid = ?", (custodian, pid)
            ).fetchone()
        if row is None:
            return None
        blob = bytes(row[0])
        try:
            keys = cbor2.loads(self._aead.decrypt(blob[:12], blob[12:], self._aad(custodian, pid)))
        except (InvalidTag, cbor2.CBORDecodeError, ValueError):
            return None
        if not isinstance(keys, dict) or not all(isinstance(v, dict) for v in keys.values()):
            return None  # a single key of before the category keys: ask again
        return {int(e): {str(c): bytes(k) for c, k in ks.items()} for e, ks in keys.items()}

    def put_keys(self, custodian: str, pid: str, keys: dict[int, dict[str, bytes]]) -> None:
        nonce = os.urandom(12)
        plain = cbor2.dumps(keys, canonical=True)
        blob = nonce + self._aead.encrypt(nonce, plain, self._aad(custodian, pid))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO grants (custodian, pid, key_ct, obtained_ms) "
                "VALUES (?, ?, ?, ?)",
                (custodian, pid, blob, _now_ms()),
            )

    def forget_keys(self, pid: str, custodian: str | None = None) -> None:
        with self._lock:
            if custodian is None:
                self._db.execute("DELETE FROM grants WHERE pid = ?", (pid,))
            else:
                self._db.execute(
                    "DELETE FROM grants WHERE pid = ? AND custodian = ?", (pid, custodian)
                )

    # -- interests -----------------------------------------------------------------------
    def purposes(self, pid: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT purpose FROM interest WHERE pid = ? ORDER BY purpose", (pid,)
            ).fetchall()
        return [r[0] for r in rows]

    # -- jobs ----------------------------------------------------------------------------
    def due(self, limit: int = 64) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, custodian, pid, purpose, ref, attempts, seq FROM jobs "
                "WHERE next_ms <= ? ORDER BY next_ms, id LIMIT ?",
                (_now_ms(), limit),
            ).fetchall()
        return [Job(*r) for r in rows]

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM jobs").fetchone()[0])

    def finish(self, job: Job, outcome: str, detail: str = "") -> None:
        with self.tx() as db:
            # A trigger that came while the job ran (seq moved on) keeps the job queued.
            db.execute("DELETE FROM jobs WHERE id = ? AND seq = ?", (job.id, job.seq))
            db.execute(
                "INSERT INTO done (kind, custodian, pid, ref, outcome, detail, time_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.kind, job.custodian, job.pid, job.ref, outcome, detail[:500], _now_ms()),
            )
            db.execute("DELETE FROM done WHERE id <= (SELECT max(id) FROM done) - 10000")

    def retry(self, job: Job, error: str) -> None:
        if job.attempts + 1 >= MAX_ATTEMPTS:
            self.finish(job, "failed", error)
            return
        # A first retry soon: most failures are a replica a few ms behind its peers.
        delay = min(MAX_BACKOFF_S, 0.1 * 2**job.attempts)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET attempts = attempts + 1, next_ms = ?, last_error = ? "
                "WHERE id = ? AND seq = ?",
                (_now_ms() + int(delay * 1000), error[:500], job.id, job.seq),
            )

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT kind, custodian, pid, ref, outcome, detail, time_ms FROM done "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _add_job(
    db: sqlite3.Connection, kind: str, custodian: str, pid: str, purpose: str = "", ref: int = 0
) -> None:
    """Queue a job, or bring an identical queued one forward (jobs coalesce)."""
    db.execute(
        "INSERT INTO jobs (kind, custodian, pid, purpose, ref, next_ms) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (kind, custodian, pid, purpose, ref) DO UPDATE SET "
        "next_ms = min(next_ms, excluded.next_ms), attempts = 0, seq = seq + 1",
        (kind, custodian, pid, purpose, ref, _now_ms()),
    )
