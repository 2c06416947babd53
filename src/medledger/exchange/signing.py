"""Signed requests between hospitals, and the evidence kept of each one.

Mutual TLS says which hospital's machine is calling; the signature says which practitioner
(or the hospital itself) asked, and makes the request non-repudiable: it is an Ed25519
signature by a key registered on the chain over

    medledger/exchange/v1 \\n METHOD \\n TARGET \\n sha256(body) hex \\n time ms \\n nonce hex
    \\n AUDIENCE

where TARGET is the path with its query string and AUDIENCE the custodian addressed (so a
request cannot be replayed to another hospital). A request is accepted only with a timestamp
within 60 s of the receiver's clock and a nonce never seen before from that key. Every
request, accepted or refused, is written to the evidence table before it is acted upon; the
access entry on the chain carries the hash of the signed request, which ties the audit trail
to this evidence: it carries the signed request itself (`request_fields`), which every
replica verifies (contracts/access.py), and keeps its digest.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medledger.contracts.access import REQUEST_DOMAIN, request_bytes
from medledger.ledger.keys import SigningKey, verify

DOMAIN = REQUEST_DOMAIN
WINDOW_MS = 60_000
NONCE_BYTES = 16

H_KEY = "x-medledger-key"
H_TIME = "x-medledger-time"
H_NONCE = "x-medledger-nonce"
H_SIGNATURE = "x-medledger-signature"


class RequestRefused(Exception):
    """A request that must not be served; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def signing_bytes(
    method: str, target: str, body: bytes, time_ms: int, nonce: bytes, audience: str
) -> bytes:
    # One definition with the access contract, which verifies these signatures on the chain.
    return request_bytes(method, target, hashlib.sha256(body).digest(), time_ms, nonce, audience)


class RequestSigner:
    """Signs outgoing requests with a practitioner's or the hospital's key."""

    def __init__(self, key: SigningKey, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.clock = clock

    def headers(self, method: str, target: str, body: bytes, audience: str) -> dict[str, str]:
        time_ms = int(self.clock() * 1000)
        nonce = os.urandom(NONCE_BYTES)
        signature = self.key.sign(signing_bytes(method, target, body, time_ms, nonce, audience))
        return {
            H_KEY: self.key.public_key.hex(),
            H_TIME: str(time_ms),
            H_NONCE: nonce.hex(),
            H_SIGNATURE: signature.hex(),
        }


@dataclass(frozen=True)
class SignedRequest:
    """An accepted request: who signed it, and the hash that names it in the audit trail."""

    key: bytes
    time_ms: int
    nonce: bytes
    signature: bytes
    method: str
    target: str
    body_hash: bytes
    audience: str
    digest: bytes  # sha256 of the signed bytes and the signature: the access entry keeps it
    evidence_id: int
    body: bytes = b""  # what was signed (its hash): the contract checks the pid against it

    def request_fields(self) -> dict[str, object]:
        """The access entry's `request`: what the contract needs to verify this signature."""
        return {
            "key": self.key,
            "time_ms": self.time_ms,
            "nonce": self.nonce,
            "signature": self.signature,
            "method": self.method.upper(),
            "target": self.target,
            "body_hash": self.body_hash,
            "body": self.body,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    peer TEXT NOT NULL,              -- the hospital named by the client certificate
    key BLOB,
    time_ms INTEGER,
    nonce BLOB,
    signature BLOB,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    audience TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    body BLOB,                       -- kept when small and free of clinical data
    digest BLOB,
    verified INTEGER NOT NULL,       -- 1 when the signature, time and nonce were accepted
    outcome TEXT NOT NULL,           -- accepted, refused, served, denied, failed
    reason TEXT NOT NULL DEFAULT ''
);
-- A nonce is accepted once per key, for ever: the unique index is the replay check.
CREATE UNIQUE INDEX IF NOT EXISTS evidence_nonce ON evidence (key, nonce) WHERE verified = 1;
CREATE INDEX IF NOT EXISTS evidence_digest ON evidence (digest);
"""


class EvidenceStore:
    """The custodian's record of every signed request it received (SQLite, in its home)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _insert(self, **row: object) -> int:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO evidence ({columns}) VALUES ({marks})", tuple(row.values())
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def set_outcome(self, evidence_id: int, outcome: str, reason: str = "") -> None:
        with self._lock:
            self._db.execute(
                "UPDATE evidence SET outcome = ?, reason = ? WHERE id = ?",
                (outcome, reason[:500], evidence_id),
            )

    def rows(self, limit: int = 1000) -> list[dict[str, object]]:
        """The latest evidence rows, newest first (for audits and tests)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, received_ms, peer, key, time_ms, nonce, signature, method, target, "
                "audience, body_hash, body, digest, verified, outcome, reason "
                "FROM evidence ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- checking a request -------------------------------------------------------------
    def verify(
        self,
        *,
        method: str,
        target: str,
        body: bytes,
        headers: dict[str, str],
        audience: str,
        peer: str,
        keep_body: bool = True,
        now_ms: int | None = None,
    ) -> SignedRequest:
        """Check the signature, the time window and the nonce; record the request either way.

        Raises RequestRefused (401) for a missing or forged signature, a timestamp outside the
        window or a nonce already used.
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        body_hash = hashlib.sha256(body).digest()
        kept = body if keep_body and len(body) <= 16384 else None
        base = {
            "received_ms": now,
            "peer": peer,
            "method": method,
            "target": target[:2000],
            "audience": audience,
            "body_hash": body_hash,
            "body": kept,
        }
        try:
            key = bytes.fromhex(headers.get(H_KEY, ""))
            time_ms = int(headers.get(H_TIME, ""))
            nonce = bytes.fromhex(headers.get(H_NONCE, ""))
            signature = bytes.fromhex(headers.get(H_SIGNATURE, ""))
        except ValueError:
            self._insert(**base, verified=0, outcome="refused", reason="unsigned or malformed")
            raise RequestRefused(401, "request signature missing or malformed") from None
        base.update(key=key, time_ms=time_ms, nonce=nonce, signature=signature)
        signed = signing_bytes(method, target, body, time_ms, nonce, audience)
        if len(nonce) != NONCE_BYTES or not verify(key, signed, signature):
            self._insert(**base, verified=0, outcome="refused", reason="bad signature")
            raise RequestRefused(401, "request signature does not verify")
        if abs(now - time_ms) > WINDOW_MS:
            self._insert(**base, verified=0, outcome="refused", reason="expired")
            raise RequestRefused(
                401, f"request timestamp {time_ms} is more than 60 s away from {now}"
            )
        digest = hashlib.sha256(signed + signature).digest()
        try:
            evidence_id = self._insert(
                **base, digest=digest, verified=1, outcome="accepted", reason=""
            )
        except sqlite3.IntegrityError:
            self._insert(**base, digest=digest, verified=0, outcome="refused", reason="replay")
            raise RequestRefused(401, "request nonce already used (replay)") from None
        return SignedRequest(
            key=key,
            time_ms=time_ms,
            nonce=nonce,
            signature=signature,
            method=method,
            target=target,
            body_hash=body_hash,
            audience=audience,
            digest=digest,
            evidence_id=evidence_id,
            body=body,
        )
