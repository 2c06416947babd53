"""The sync agent: the requesting side's real-time loop, driven by committed blocks.

It follows this node's replica block by block (a cursor in its home makes it resume where it
stopped) and turns events into jobs, kept in the same SQLite file as the cursor, in the same
transaction, so that a crash never loses one:

    consent.granted to this hospital, referral to it, enrolment in its study
        -> interest in the patient; a `sync` job for each custodian of the patient
    record.registered / record.amended at another custodian, for a patient of interest
        -> a `sync` job for that custodian (jobs coalesce: one per custodian and patient)
    obligation.created with this hospital as the referring one   -> `deliver`
    referral.delivered to this hospital                          -> `confirm`
    erasure.notify to this hospital, or records.shredded by the custodian of copies held here
                                                                 -> `erase`

A `sync` job obtains the custodian's metadata keys for the patient when it lacks one of the
categories `authorize` grants it (asked on this replica, category by category, as the gateway
will; the keys come sealed to this hospital's X25519 key, one per category granted, and are
kept encrypted here), opens those of the custodian's index entries its keys open from its own
replica (the others are of categories not granted: they stay closed), asks `authorize` locally
what the custodian will grant (the same function on the same state), fetches those records it
does not hold yet, checks each against its commitment, and stores them in its vault
re-encrypted under its own keys, marked as copies with the custodian's salt (so the commitment
stays checkable, and erasure reaches them). A refusal ends a job; an unreachable peer is
retried with backoff.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medledger.contracts import access, queries
from medledger.contracts.access import log_entry
from medledger.contracts.categories import CATEGORIES
from medledger.contracts.identity import resolve_actor
from medledger.exchange.client import (
    ExchangeClient,
    ExchangeError,
    FetchedRecord,
    verify_fetched,
)
from medledger.exchange.events import block_events
from medledger.exchange.gateway import Caller, Refused, b64
from medledger.exchange.policy import Policy, record_meta
from medledger.ledger.results import BlockRecord
from medledger.node.indexing import MetadataError, check_commitment, epoch_of, open_meta
from medledger.node.wallet import TxRejected
from medledger.vault import PatientErased, RecordConflict, RecordNotFound, Vault

if TYPE_CHECKING:
    from medledger.exchange.events import StreamEvent
    from medledger.node import Node

log = logging.getLogger(__name__)

FETCH_CHUNK = 200
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
        return 0 if row is None else int(row[0])

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


def _categories(keys: dict[int, dict[str, bytes]]) -> set[str]:
    """The categories whose keys are held for the latest epoch held."""
    return set(keys[max(keys)]) if keys else set()


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


class SyncAgent:
    """Follows committed blocks for one hospital and carries out what they entitle or oblige."""

    def __init__(
        self,
        node: Node,
        vault: Vault,
        client: ExchangeClient,
        policy: Policy,
        store: SyncStore,
        workers: int = 4,
    ) -> None:
        self.node = node
        self.vault = vault
        self.client = client
        self.policy = policy
        self.store = store
        self.org = node.config.org
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"sync-{self.org}")
        self._running: dict[tuple[str, str, str], Future[None]] = {}
        self._running_lock = threading.Lock()
        self._idle = threading.Condition()
        if node.app is not None:
            node.app.add_commit_listener(lambda _record: self._wake.set())

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> SyncAgent:
        self._thread = threading.Thread(target=self._run, name=f"sync-{self.org}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                progressed = self.step()
            except Exception:
                log.exception("%s sync agent: step failed", self.org)
                progressed = False
            if not progressed:
                self._wake.wait(0.2)
                self._wake.clear()

    def step(self) -> bool:
        """Plan jobs from the blocks not seen yet, then start the jobs that are due."""
        progressed = self._follow()
        progressed = self._dispatch() or progressed
        return progressed

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Until every block is planned and no job is queued or running (tests, bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._running_lock:
                busy = bool(self._running)
            if (
                not busy
                and self.store.pending() == 0
                and self.store.cursor() >= self.node.engine.height()
            ):
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    # -- following blocks ------------------------------------------------------------------
    def _follow(self, batch: int = 200) -> bool:
        cursor = self.store.cursor()
        if cursor >= self.node.engine.height():
            return False
        n = 0
        for record in self.node.engine.blocks(cursor + 1):
            self._plan(record)
            n += 1
            if n >= batch or self._stop.is_set():
                break
        return n > 0

    def _plan(self, record: BlockRecord) -> None:
        """Turn one block's events into jobs, and move the cursor, in one transaction."""
        todo: list[tuple[str, str, str, str, int]] = []  # kind, custodian, pid, purpose, ref
        interests: list[tuple[str, str, str]] = []
        dropped: list[tuple[str, str]] = []
        for ev in block_events(record):
            self._classify(ev, todo, interests, dropped)
        with self.store.tx() as db:
            for pid, purpose, source in interests:
                db.execute(
                    "INSERT OR IGNORE INTO interest (pid, purpose, source, since_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (pid, purpose, source, record.header.time_ms),
                )
            ended: set[str] = set()
            for pid, source in dropped:
                gone = db.execute(
                    "DELETE FROM interest WHERE pid = ? AND source = ?", (pid, source)
                )
                if gone.rowcount:
                    ended.add(pid)
            for kind, custodian, pid, purpose, ref in todo:
                if kind == "sync":
                    purposes = [purpose] if purpose else self._purposes(db, pid)
                    for p in purposes:
                        _add_job(db, kind, custodian, pid, p, ref)
                else:
                    _add_job(db, kind, custodian, pid, purpose, ref)
            db.execute(
                "INSERT INTO cursor (id, height) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET height = excluded.height",
                (record.height,),
            )
        # An entitlement of this hospital ended: forget every key of the patient, whatever
        # else remains; the next sync asks again for only the categories still granted.
        for pid in ended:
            self.store.forget_keys(pid)

    @staticmethod
    def _purposes(db: sqlite3.Connection, pid: str) -> list[str]:
        rows = db.execute("SELECT DISTINCT purpose FROM interest WHERE pid = ?", (pid,)).fetchall()
        return [r[0] for r in rows]

    def _custodians(self, pid: str) -> list[str]:
        entries = queries.records_of_patient(self.node.engine, pid)
        return sorted({e["custodian"] for e in entries if e["custodian"] != self.org})

    def _study_sponsor(self, study: str) -> str | None:
        try:
            found = queries.study(self.node.engine, study)
        except Exception:
            return None
        return None if not found else str(found.get("sponsor"))

    def _grantee_is_me(self, grantee: str) -> bool:
        kind, _, rest = grantee.partition(":")
        if kind == "org":
            return rest == self.org
        if kind == "study":
            return self._study_sponsor(rest) == self.org
        return False  # a practitioner's own consent does not entitle the hospital's node

    def _classify(
        self,
        ev: StreamEvent,
        todo: list[tuple[str, str, str, str, int]],
        interests: list[tuple[str, str, str]],
        dropped: list[tuple[str, str]],
    ) -> None:
        a = ev.attrs
        pid = a.get("pid", "")
        t = ev.type
        if t in ("record.registered", "record.amended"):
            custodian = a.get("custodian", "")
            if custodian and custodian != self.org:
                todo.append(("sync", custodian, pid, "", 0))  # purposes of interest, if any
        elif t == "consent.granted" and self._grantee_is_me(a.get("grantee", "")):
            purpose = a.get("purpose", "treatment")
            grantee = a.get("grantee", "")
            if grantee.startswith("study:"):
                purpose = f"research:{grantee.partition(':')[2]}"
            interests.append((pid, purpose, f"consent:{a.get('id')}"))
            todo.extend(("sync", c, pid, purpose, 0) for c in self._custodians(pid))
        elif t == "consent.revoked" and self._grantee_is_me(a.get("grantee", "")):
            dropped.append((pid, f"consent:{a.get('id')}"))
        elif t in ("referral.created", "referral.admitted") and a.get("to") == self.org:
            source = f"referral:{a.get('id')}"
            interests.append((pid, "treatment", source))
            origin = a.get("from") or self._referral_from(int(a.get("id", 0)))
            if origin:
                todo.append(("sync", origin, pid, "treatment", 0))
        elif t == "referral.cancelled":
            dropped.append((pid, f"referral:{a.get('id')}"))
        elif t == "obligation.created" and a.get("from") == self.org:
            todo.append(("deliver", a.get("to", ""), pid, "treatment", int(a.get("referral", 0))))
        elif t == "referral.delivered" and a.get("to") == self.org:
            origin = self._referral_from(int(a.get("id", 0)))
            todo.append(("confirm", origin or "", pid, "treatment", int(a.get("id", 0))))
        elif t == "study.enrolled" and self._study_sponsor(a.get("study", "")) == self.org:
            purpose = f"research:{a.get('study')}"
            interests.append((pid, purpose, f"study:{a.get('study')}"))
            todo.extend(("sync", c, pid, purpose, 0) for c in self._custodians(pid))
        elif t == "study.withdrawn":
            dropped.append((pid, f"study:{a.get('study')}"))
        elif t == "erasure.notify" and a.get("holder") == self.org and a.get("action") == "erase":
            todo.append(("erase", "", pid, "", int(a.get("id", 0))))
        elif t == "record.shredded" and a.get("holder", self.org) != self.org:
            todo.append(("erase", a.get("holder", ""), pid, "", 0))

    def _referral_from(self, ref: int) -> str | None:
        found = self._referral(ref)
        return None if found is None else str(found["from"])

    def _referral(self, ref: int) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = queries.referral_status(self.node.engine, ref)
        except Exception:
            return None
        return found

    # -- running jobs ----------------------------------------------------------------------
    def _dispatch(self) -> bool:
        started = False
        for job in self.store.due():
            slot = (job.kind, job.custodian, job.pid)
            with self._running_lock:
                if slot in self._running:
                    continue
                try:
                    self._running[slot] = self._pool.submit(self._execute, job, slot)
                except RuntimeError:  # shutting down
                    return started
            started = True
        return started

    def _execute(self, job: Job, slot: tuple[str, str, str]) -> None:
        try:
            handler = {
                "sync": self._sync,
                "deliver": self._deliver,
                "confirm": self._confirm,
                "erase": self._erase,
            }[job.kind]
            outcome = handler(job)
            self.store.finish(job, "done", outcome)
        except ExchangeError as exc:
            if exc.refused:
                self.store.finish(job, "refused", str(exc))
            else:
                self.store.retry(job, str(exc))
        except (TxRejected, Refused) as exc:
            self.store.finish(job, "refused", str(exc))
        except PatientErased as exc:
            self.store.finish(job, "erased", str(exc))
        except Exception as exc:
            log.exception("%s sync agent: %s job failed", self.org, job.kind)
            self.store.retry(job, f"{type(exc).__name__}: {exc}")
        finally:
            with self._running_lock:
                self._running.pop(slot, None)
            self._wake.set()

    # -- sync: prefetch what this hospital is entitled to --------------------------------
    def _sync(self, job: Job) -> str:
        """Obtain the metadata key if needed, then copy what authorize allows and is missing.

        For research (`research:<study>`) only the key is obtained: studies get released
        datasets from custodians, not copies of records.
        """
        pid, custodian = job.pid, job.custodian
        purpose, _, study = job.purpose.partition(":")
        if self.vault.is_erased(pid):
            return "patient erased here"
        entries = [
            e
            for e in self.node.engine.query(
                "records/of_patient", {"pid": pid, "custodian": custodian}
            )
            if not e.get("shredded")
        ]
        if not entries:
            return "nothing held there"
        entitled = self._entitled(custodian, pid, purpose, study or None)
        if not entitled:
            return "nothing grants this hospital access there"
        # Ask again when a category now granted has no key here, or an entry names an epoch
        # whose keys this hospital lacks (an entitlement ended since: the epoch moved on).
        epochs = {epoch_of(e["meta_ct"]) for e in entries}
        keys = self.store.keys(custodian, pid)
        if keys is None or not entitled <= _categories(keys) or not epochs <= set(keys):
            keys = self.client.metadata_key(custodian, pid, purpose, study or None)
            self.store.put_keys(custodian, pid, keys)
            if not epochs <= set(keys):  # the custodian's replica is behind this one's
                raise ExchangeError(custodian, 0, "metadata keys of a later epoch not served yet")
        if purpose == "research":
            held = ", ".join(sorted(_categories(keys)))
            return f"metadata keys held for {held} (research: no copies)"
        held: dict[str, int] = {}
        for info in self.vault.records_of(pid):
            if info.is_copy and info.custodian == custodian:
                held[info.rid] = max(held.get(info.rid, 0), info.version)
        wanted = self._wanted(entries, held, keys, pid, purpose)
        stored, missing = 0, []
        for i in range(0, len(wanted), FETCH_CHUNK):
            fetched = self.client.fetch(custodian, pid, wanted[i : i + FETCH_CHUNK], purpose)
            stored += self.store_copies(fetched.records)
            missing += fetched.missing
        if missing:  # listed in the index but not served: try again later
            raise ExchangeError(custodian, 0, f"{len(missing)} records not served yet")
        return f"{stored} records copied"

    def _entitled(self, custodian: str, pid: str, purpose: str, study: str | None) -> set[str]:
        """The categories of this custodian's records authorize grants this hospital now.

        Asked before requesting metadata keys (whose entries cannot be read yet): the same
        authorize, on this replica, for each category, as the gateway asks before sealing
        them. So a hospital never asks, and fills the custodian's audit trail with a denial,
        where nothing can grant it access, and asks again when a new entitlement (a broader
        consent, an emergency) covers a category whose key it lacks.
        """
        now = _now_ms()
        granted: set[str] = set()
        with self.policy.state() as state:
            me = resolve_actor(state, self.node.org_key.public_key)
            if me is None:
                return granted
            for category in CATEGORIES:
                meta: dict[str, Any] = {"custodian": custodian, "category": category, "type": ""}
                if study is not None:
                    meta["study"] = study
                if self.policy.decide(me, pid, meta, purpose, now, state=state).allowed:
                    granted.add(category)
        return granted

    def _wanted(
        self,
        entries: list[dict[str, Any]],
        held: dict[str, int],
        keys: dict[int, dict[str, bytes]],
        pid: str,
        purpose: str,
    ) -> list[str]:
        """The entries not held yet that authorize will let this hospital read now.

        Only the entries of the categories whose keys this hospital holds open; the others are
        of categories it is not granted, and stay closed (nothing says which they are).
        """
        wanted: list[str] = []
        now = _now_ms()
        with self.policy.state() as state:
            me = resolve_actor(state, self.node.org_key.public_key)
            if me is None:
                return []
            for e in entries:
                if held.get(e["rid"], 0) >= e["version"]:
                    continue
                try:
                    meta = open_meta(keys, e["rid"], e["version"], e["meta_ct"])
                except MetadataError:
                    continue
                d = self.policy.decide(me, pid, record_meta(e, meta), purpose, now, state=state)
                if d.allowed:
                    wanted.append(e["rid"])
        return wanted

    def store_copies(self, records: list[Any]) -> int:
        """Store checked records as copies under this hospital's keys; returns how many."""
        stored = 0
        for r in records:
            try:
                self.vault.put(
                    r.pid,
                    r.rid,
                    r.version,
                    r.resource,
                    resource_type=r.resource_type,
                    custodian=r.custodian,
                    is_copy=True,
                    salt=r.salt,
                )
                stored += 1
            except RecordConflict:
                continue  # held already (a concurrent job, or a delivery)
        return stored

    # -- referral delivery, custodian side ------------------------------------------------
    def _deliver(self, job: Job) -> str:
        ref = self._referral(job.ref)
        if ref is None or ref["from"] != self.org:
            return "no such referral from here"
        if ref["status"] != "admitted":
            return f"referral is {ref['status']}"
        pid, receiver = ref["pid"], ref["to"]
        mine = {
            e["rid"]: e
            for e in self.node.engine.query(
                "records/of_patient", {"pid": pid, "custodian": self.org}
            )
            if not e.get("shredded")
        }
        key = self.vault.metadata_key(pid)
        with self.policy.state() as state:
            receiver_actor = resolve_actor(state, self._member_key(receiver))
            if receiver_actor is None:
                raise Refused(409, f"{receiver} is not a member")
            chosen: list[tuple[dict[str, Any], Any]] = []
            for rid in ref["rids"] or sorted(mine):
                entry = mine.get(rid)
                if entry is None:
                    raise Refused(409, f"record {rid} is not held here")
                meta = open_meta(key, rid, entry["version"], entry["meta_ct"])
                if not ref["rids"] and meta.get("category") not in ref["categories"]:
                    continue
                d = self.policy.decide(
                    receiver_actor, pid, record_meta(entry, meta), "treatment", state=state
                )
                chosen.append((entry, d))
        if not chosen:
            return "no record of the referral's categories to deliver"
        records, rids, commitments = [], [], []
        for entry, _ in chosen:
            rid, version = entry["rid"], entry["version"]
            records.append(
                {
                    "rid": rid,
                    "version": version,
                    "resource_type": self.vault.info(rid, version).resource_type,
                    "resource": b64(self.vault.get(rid, version)),
                    "salt": b64(self.vault.salt(pid, rid, version)),
                }
            )
            rids.append(rid)
            commitments.append(bytes(entry["commitment"]))
        payload = {"referral": job.ref, "pid": pid, "records": records}
        # The hash of the body the receiver gets (its evidence keeps the body): in our log.
        digest = hashlib.sha256(orjson.dumps(payload)).hexdigest()
        log.info(
            "%s: referral %s delivery to %s, body sha256 %s", self.org, job.ref, receiver, digest
        )
        denied = [(e, d) for e, d in chosen if not d.allowed]
        decision = denied[0][1] if denied else chosen[0][1]
        # The push is this hospital's own act (the receiver signed no request, and an entry
        # naming another hospital's actor needs its signed request): the basis, the referral,
        # says to whom.
        entry_log = log_entry(
            actor=f"org:{self.org}",
            actor_org=self.org,
            pid=pid,
            action="export",
            purpose="treatment",
            decision=decision,
            rids=rids,
        )
        self.node.wallet.send_message(access.Log([entry_log]))
        if denied:
            raise Refused(403, f"delivery refused by authorize: {decision.reason}")
        self.client.deliver(receiver, payload)
        self.node.wallet.send(
            "referral.deliver", {"id": job.ref, "rids": rids, "commitments": commitments}
        )
        return f"{len(rids)} records delivered to {receiver}"

    def _member_key(self, org: str) -> bytes:
        for member in queries.members(self.node.engine):
            if member["org"] == org:
                return bytes(member["key"])
        raise Refused(409, f"{org} is not a member")

    # -- referral delivery, receiving side ------------------------------------------------
    def receive_delivery(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The gateway's /deliveries: check the referral and each record, store the copies."""
        ref_id, pid, records = args.get("referral"), args.get("pid"), args.get("records")
        if not isinstance(ref_id, int) or not isinstance(pid, str) or not isinstance(records, list):
            raise Refused(400, "body: referral (int), pid and records expected")
        ref = self._referral(ref_id)
        if ref is None or ref["to"] != self.org or ref["pid"] != pid:
            raise Refused(404, f"no referral {ref_id} of this patient to {self.org}")
        if ref["from"] != caller.actor.org:
            raise Refused(403, f"referral {ref_id} is from {ref['from']}, not {caller.actor.org}")
        if ref["status"] not in ("admitted", "delivered", "confirmed"):
            raise Refused(409, f"referral {ref_id} is {ref['status']}")
        checked = []
        for rec in records:
            versions = queries.record_versions(self.node.engine, rec.get("rid"))
            try:
                commitment = verify_fetched(versions, rec, ref["from"], pid)
            except ExchangeError as exc:
                raise Refused(422, exc.reason) from None
            checked.append(
                FetchedRecord(
                    custodian=ref["from"],
                    pid=pid,
                    rid=rec["rid"],
                    version=int(rec["version"]),
                    resource_type=str(rec["resource_type"]),
                    resource=base64.b64decode(rec["resource"]),
                    salt=base64.b64decode(rec["salt"]),
                    basis=f"referral:{ref_id}",
                    commitment=commitment,
                )
            )
        try:
            stored = self.store_copies(checked)
        except PatientErased:
            raise Refused(410, "this patient's data was erased here") from None
        self._wake.set()
        return {"stored": stored, "received": len(checked)}

    def _confirm(self, job: Job) -> str:
        ref = self._referral(job.ref)
        if ref is None or ref["to"] != self.org:
            return "no such referral to here"
        if ref["status"] != "delivered":
            return f"referral is {ref['status']}"
        delivered = ref["obligation"]["delivered"]
        pid = ref["pid"]
        missing = [
            rid
            for rid, c in zip(delivered["rids"], delivered["commitments"], strict=True)
            if not self._holds(pid, rid, bytes(c))
        ]
        if missing:  # the push did not arrive (or not yet): fetch under the referral
            fetched = self.client.fetch(ref["from"], pid, missing, "treatment")
            self.store_copies(fetched.records)
        for rid, c in zip(delivered["rids"], delivered["commitments"], strict=True):
            if not self._holds(pid, rid, bytes(c)):
                raise ExchangeError(ref["from"], 0, f"record {rid} not received intact yet")
        self.node.wallet.send(
            "referral.confirm",
            {"id": job.ref, "commitments": [bytes(c) for c in delivered["commitments"]]},
        )
        return f"{len(delivered['rids'])} records confirmed"

    def _holds(self, pid: str, rid: str, commitment: bytes) -> bool:
        """Is a copy of this record, whose bytes hash to the commitment, in the vault?"""
        try:
            versions = self.vault.versions(rid)
        except RecordNotFound:
            return False
        for version in reversed(versions):
            try:
                data = self.vault.get(rid, version)
                salt = self.vault.salt(pid, rid, version)
            except RecordNotFound:
                continue
            if check_commitment(salt, data, commitment):
                return True
        return False

    # -- erasure of copies ----------------------------------------------------------------
    def _erase(self, job: Job) -> str:
        """Crypto-shred the copies held here, then attest on the chain.

        Only copies: a hospital's own care records are erased by its DPO (`medledger erase`),
        never by the agent. A custodian that shredded its records (`records.shredded`, no
        request) takes only the copies of its records with it: the copies of other
        custodians, whose records still exist, may lawfully stay. A patient's erasure request
        takes every copy. A holder of copies only then erases the patient as a whole (their
        patient key), posts `records.shredded` and attests with it. A holder that also keeps
        its own care records (under legal retention) shreds the copies apart (their key
        sets, see vault/keys.py) and attests with the vault's receipt digest itself: a
        `records.shredded` entry would tell every node that its own records were erased.
        """
        pid = job.pid
        if job.ref == 0:
            return self._erase_copies_of(pid, job.custodian)
        try:
            infos = self.vault.records_of(pid)
        except PatientErased:
            infos = []
        if any(not i.is_copy for i in infos):
            return self._erase_copies_apart(job)
        receipt = self.vault.erase(pid)
        self.store.forget_keys(pid)
        with self.store.tx() as db:
            db.execute("DELETE FROM interest WHERE pid = ?", (pid,))
            db.execute("DELETE FROM jobs WHERE pid = ? AND kind = 'sync'", (pid,))
        if queries.shredded(self.node.engine, self.org, pid) is None:
            self.node.wallet.send(
                "records.shredded",
                {
                    "pid": pid,
                    "digest": receipt.digest,
                    "records": receipt.records_shredded,
                    "copies": receipt.copies_shredded,
                },
            )
        attested = self._attest(pid, job.ref, receipt.records_shredded + receipt.copies_shredded)
        self.vault.purge_pending()
        return f"{receipt.copies_shredded} copies erased" + (", attested" if attested else "")

    def _erase_copies_of(self, pid: str, custodian: str) -> str:
        """The custodian shredded its records of the patient: shred the copies held of them
        (their key set) and forget its metadata key, nothing else. No request asks for an
        attestation, and no `records.shredded` is posted: this hospital erased no patient.
        From then on the vault refuses new copies of that custodian's records of the patient
        until the DPO reinstates them (`medledger vault reinstate`)."""
        receipt = self.vault.erase_copies(pid, custodian)  # PatientErased: nothing left here
        self.store.forget_keys(pid, custodian)
        with self.store.tx() as db:
            db.execute(
                "DELETE FROM jobs WHERE pid = ? AND kind = 'sync' AND custodian = ?",
                (pid, custodian),
            )
        if not receipt.copies_shredded:
            return f"no copy of {custodian}'s records held here"
        self.vault.purge_pending()
        return f"{receipt.copies_shredded} copies of {custodian}'s records erased"

    def _erase_copies_apart(self, job: Job) -> str:
        """Shred every copy of the patient held here while this hospital's own care records
        stay, and attest the request with the vault's receipt."""
        pid = job.pid
        receipt = self.vault.erase_copies(pid)  # idempotent: a retry attests the same
        self.store.forget_keys(pid)
        with self.store.tx() as db:
            db.execute("DELETE FROM interest WHERE pid = ?", (pid,))
            db.execute("DELETE FROM jobs WHERE pid = ? AND kind = 'sync'", (pid,))
        attested = self._attest(
            pid, job.ref, receipt.copies_shredded, receipt.digest, copies_only=True
        )
        self.vault.purge_pending()
        return f"{receipt.copies_shredded} copies erased apart from the own care records" + (
            ", attested" if attested else ""
        )

    def _obligation(self, pid: str, request: int) -> dict[str, Any] | None:
        try:
            status = self.node.engine.query(
                "erasure/status", {"id": request} if request else {"pid": pid}
            )
        except Exception:
            return None
        if not status:
            return None
        for ob in status.get("obligations", []):
            if ob["holder"] == self.org:
                ob["request"] = status["id"]
                found: dict[str, Any] = ob
                return found
        return None

    def _attest(
        self,
        pid: str,
        request: int,
        count: int,
        digest: bytes = b"",
        copies_only: bool = False,
    ) -> bool:
        ob = self._obligation(pid, request)
        if ob is None or ob["status"] != "pending":
            return False
        custody = ob.get("custody")
        if copies_only and custody is not None and custody["status"] != "refused":
            # The care records' retention has run out: attesting now would attest their
            # erasure too, which is the DPO's act (`medledger erase`), not the agent's.
            return False
        self.node.wallet.send(
            "erasure.attest", {"request": ob["request"], "digest": digest, "records": count}
        )
        return True
