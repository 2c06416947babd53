"""The audit journal: every access entry durable at the serving hospital before the data
leaves, then on the chain exactly once, in as few `access.log` txs as the load allows.

Why a journal: an access entry sent as its own tx per read loses the read's trace when the
node dies between serving and the tx reaching a block (or when its nonce was spent by a
block the replica had not yet applied), and puts one tx per read on the chain. Here:

1. `log(entries)` gives every entry an `id` (contracts.access.ENTRY_ID: random per run,
   then a counter) and a strictly increasing `seq`, and queues it (`begin`); its caller's
   `end` appends what is queued to `<home>/audit/journal` and fsyncs, in the caller's own
   thread, once for all the requests that queued meanwhile (leader/follower group commit:
   a caller whose entries a write under way took waits for that write; no writer thread
   is woken per write). The caller returns once its entries are durable: a read waits for
   the disk, never for the chain. While FHIR reads the API has announced (`expecting`, as
   each arrives) have not logged yet, the write is held back by up to `hold_s` (1 ms) so
   that one fsync serves them too; a lone read's entry is written at once
   (docs/benchmarks.md, "Session 14 (fsync13)"). A `begin` whose `end` never comes is
   written by the journal's own thread after `LEFT_S` (docs/benchmarks.md, "Session 14
   (atna13)").
2. The sender gathers durable entries (until `access.MAX_ENTRIES` entries or `max_tx_bytes`
   bytes) and signs one `access.log` tx with the organisation's wallet: after
   `wait_window_s` (20 ms) when a caller waits for the commit (`log(..., wait=True)`: a
   remote read, served only once recorded, returns when the shared tx has committed), else
   after `window_s` (200 ms, a fifth of a 1 s block: the entry is already durable and will
   not reach the chain sooner than the next block, and fewer, larger txs cost every
   validator less). At most `max_inflight` (4) txs are in flight at a time; what arrives
   meanwhile waits, durable, and fills the next txs up to their bound: a burst never floods
   the mempool with small txs that every validator would re-check after each block. A
   backlog that fills whole txs goes out in up to `max_inflight_full` (32) of them at once:
   with four, the journal's rate was bound by 4 txs per commit round trip (≈ 700 entries/s),
   not by the validators; full txs are what costs them least per entry (with 16, by 8,000
   entries per round trip: about a block, 1 s and more).
3. A committed tx marks its entries done in the journal. A tx dropped (its nonce spent by
   another, e.g. a block the replica had not yet applied after a restart) or refused for its
   nonce is re-sent under a fresh nonce; one stuck in no block is submitted again; while the
   node's CometBFT is down, sending is retried every `retry_s`. What the ledger refuses for
   good is split into its callers' groups, sent one by one, and a group still refused alone
   is moved to `<home>/audit/refused` (and logged): never silently dropped.
4. At start-up every entry of the journal not marked done is sent again. The contract
   skips an entry its custodian already wrote (`access` v1: by its id; v2: its sequence at
   or below the custodian's mark), so an entry committed just before a crash (its mark
   lost) is not written twice. Each tx is built for the version of `access` active when it
   is signed (`access.log_body`); under v2 it names the highest sequence still pending here
   below its own (`need`): the ledger refuses it `NOT_YET` (sent again after the next
   block, never refused for good) until that one is on the chain, so no tx lifts the mark
   over an entry not yet written (docs/architecture.md, "`access` v2"). Sequences start,
   at each start-up, above the journal's pending ones, the chain's mark and the clock in µs.

Entries that cite another hospital's signed request (the gateway's) form one group that
always travels in one tx: the contract lets a request back the entries of one tx only.

The journal file is a sequence of frames `<length u32><crc32 u32><CBOR>`: `{"g": [entries]}`
for a group, `{"done": [group ids]}` for groups on the chain. A torn last frame (a crash
mid-write, never acknowledged to any caller) is cut off at start-up. Done marks are not
fsync'd: losing one only re-sends an entry the contract then skips. The file is rewritten
with the groups still pending once it passes `compact_bytes`, or twice its size after the
last rewrite (a long outage's backlog is not rewritten after every write).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from medledger.consensus.engine import Committed, Engine
from medledger.contracts import access, queries
from medledger.ledger import codec
from medledger.ledger.errors import Code
from medledger.ledger.tx import MAX_TX_BYTES
from medledger.node.wallet import TxRejected, Wallet

log = logging.getLogger(__name__)

WINDOW_S = 0.2
#: The longest `quiet` keeps unwaited entries back (an answer that never lands ends it).
MAX_QUIET_S = 10.0
WAIT_WINDOW_S = 0.02
#: The longest the writer holds a write back for requests under way that will log (`expecting`).
HOLD_S = 0.001
#: How long entries a caller queued (`begin`) may wait for its `end` to write them before the
#: journal's own thread writes them (a caller that never ends; `stop`).
LEFT_S = 0.2
MAX_INFLIGHT = 4
MAX_INFLIGHT_FULL = 32  # txs in flight when a backlog fills them (docs/benchmarks.md)
RESEND_S = 5.0
RETRY_S = 1.0
COMPACT_BYTES = 8 * 1024 * 1024
_FRAME = struct.Struct(">II")
_ID_SIZED = "0" * (2 * access.ENTRY_ID)
# Not for good: a spent nonce, or (access v2) a tx resting on one of ours not yet committed.
_LEDGER_CODES = {int(c) for c in Code} - {int(Code.OK), int(Code.BAD_NONCE), int(Code.NOT_YET)}


class JournalUnavailable(Exception):
    """The journal could not make an entry durable: the access must not be served."""


class JournalBusy(JournalUnavailable):
    """Another process holds this hospital's journal (one serving process per home)."""


@dataclass(eq=False)
class _Group:
    """Entries one caller logged together (at most one tx's worth), and their fate."""

    entries: list[dict[str, Any]]
    size: int  # encoded bytes
    frame: bytes = b""  # its journal frame, from `log` (stamped) until the writer wrote it
    waited: bool = False  # a caller waits for its commit (a remote read)
    alone: bool = False  # refused in a batch: sent by itself to find who was refused
    # Set only for a caller that waits for the commit: an Event each is a lock and a
    # condition more per entry, for the many callers that wait for the disk only.
    settled: threading.Event | None = None
    error: BaseException | None = None
    gid: str = ""  # its first entry's id (the done mark's key)
    last_seq: int = 0  # the journal sequence of its last entry (0: journaled before them)

    def stamped(self) -> _Group:
        """Its id and sequence fields read once (log gives them; a journal file holds them)."""
        self.gid = str(self.entries[0]["id"])
        self.last_seq = int(self.entries[-1].get("seq", 0))
        return self


class _Expected:
    """A request under way that may log an entry (`AuditJournal.expecting`)."""

    __slots__ = ("journal", "arrived")

    def __init__(self, journal: AuditJournal) -> None:
        self.journal = journal
        self.arrived = False  # it logged (or ended without): no longer awaited


_EXPECTED: contextvars.ContextVar[_Expected | None] = contextvars.ContextVar(
    "medledger_audit_expected", default=None
)


class Logging:
    """Entries `AuditJournal.begin` queued: `end()` returns once they are durable (and, for
    a caller that waits for the commit, on the chain)."""

    def __init__(
        self,
        groups: list[_Group],
        written: threading.Lock | None,
        wait: bool,
        deadline: float,
        journal: AuditJournal | None = None,
    ) -> None:
        self._groups = groups
        self._written = written
        self._wait = wait
        self._deadline = deadline
        self._journal = journal

    def end(self) -> None:
        """Raises JournalUnavailable if they could not be made durable, TxRejected if the
        ledger refused them for good, TimeoutError if the wait for the commit ran out."""
        if self._written is None:
            return
        deadline = self._deadline
        written = self._written
        durable = written.acquire(blocking=False)
        if not durable and self._journal is not None:
            # Not durable yet: write all that is queued, in this thread, unless a write
            # under way took these entries (then wait for it, below).
            self._journal._lead(written, deadline)
        if not durable and not written.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise JournalUnavailable("the audit journal did not reach the disk in time")
        written.release()  # the next caller of this write passes through in turn
        for group in self._groups:
            if isinstance(group.error, JournalUnavailable):
                raise group.error
        if not self._wait:
            return
        for group in self._groups:
            assert group.settled is not None
            if not group.settled.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the access entry was not committed in time (kept, re-sent)")
            if group.error is not None:
                raise group.error


@dataclass(eq=False)
class _InFlight:
    tx: bytes
    tx_id: bytes
    nonce: int
    groups: list[_Group]
    sent: float  # time.monotonic() of its last submission


def window_for(engine: str, block_time_ms: int) -> float:
    """How long a hospital's journal gathers entries no caller waits for: on CometBFT one
    block time (at least `WINDOW_S`). A read load puts a few entries in each tx, and every
    tx costs each validator a fixed share (its signature, CheckTx, proposal and block)
    whatever it holds: ≈ 0.4 ms of CheckTx alone against 6 µs per entry (docs/benchmarks.md,
    "Session 10 (journal13)"). The entries are durable already and reach no block sooner
    than the next. The solo sandbox keeps `WINDOW_S`: its blocks follow the txs."""
    if engine != "cometbft":
        return WINDOW_S
    return max(WINDOW_S, block_time_ms / 1000)


def _latch() -> threading.Lock:
    """A write's latch: held until the write is durable (or failed), then released by the
    writer; each of its callers acquires and releases it in turn. A lock wait is one call in
    C per caller, where an Event's waiters each take and give back its condition in Python
    (the writer's wake-up of 64 callers was ≈ 7 % of the journal's GIL time)."""
    latch = threading.Lock()
    latch.acquire()
    return latch


def _frame(obj: Any) -> bytes:
    """A frame of `obj`: a one-key map of entries already checked and in canonical key order
    (`_groups` made them so, once each; a journal file's are as decoded), so a plain
    encoding is canonical (codec.encode_ordered) and no map is sorted again per write."""
    payload = codec.encode_ordered(obj)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _size(entry: dict[str, Any]) -> int:
    """Its encoded bytes (in canonical key order already)."""
    return len(codec.encode_ordered(entry))


def _without(entry: dict[str, Any], name: str) -> dict[str, Any]:
    out = dict(entry)  # a copy in C, then one key off: a third of a comprehension's cost
    out.pop(name, None)
    return out


def read_journal(path: Path) -> tuple[list[list[dict[str, Any]]], set[str], int]:
    """The groups in a journal file not marked done, the done ids, and the length of its
    whole frames (a torn tail after it is what a crash mid-write leaves)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    done: set[str] = set()
    data = path.read_bytes() if path.exists() else b""
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        payload = data[pos + _FRAME.size : pos + _FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        obj = codec.decode(payload)
        if "g" in obj:
            groups[str(obj["g"][0]["id"])] = obj["g"]
        for gid in obj.get("done", ()):
            done.add(gid)
            groups.pop(gid, None)
        pos += _FRAME.size + length
    return list(groups.values()), done, pos


class AuditJournal:
    """One hospital's audit journal and the two threads that keep it (writer and sender)."""

    def __init__(
        self,
        directory: Path,
        wallet: Wallet,
        *,
        window_s: float = WINDOW_S,
        wait_window_s: float = WAIT_WINDOW_S,
        max_inflight: int = MAX_INFLIGHT,
        max_inflight_full: int = MAX_INFLIGHT_FULL,
        max_tx_entries: int = access.MAX_ENTRIES,
        max_tx_bytes: int = MAX_TX_BYTES // 2,
        resend_s: float = RESEND_S,
        retry_s: float = RETRY_S,
        compact_bytes: int = COMPACT_BYTES,
        hold_s: float = HOLD_S,
    ) -> None:
        self.directory = directory
        self.path = directory / "journal"
        self.wallet = wallet
        self.engine: Engine = wallet.engine
        self.window_s = window_s
        self.wait_window_s = wait_window_s
        self.max_inflight = max_inflight
        self.max_inflight_full = max(max_inflight, max_inflight_full)
        self.max_tx_entries = max_tx_entries
        self.max_tx_bytes = max_tx_bytes
        self.resend_s = resend_s
        self.retry_s = retry_s
        self.compact_bytes = compact_bytes
        self.hold_s = hold_s
        self._compact_at = compact_bytes
        self._coming = 0  # requests under way that may log and have not yet (`expecting`)
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # The writer's own condition, on the same lock: a caller's entries wake the writer
        # alone, not the sender too (it keeps its tick).
        self._to_write = threading.Condition(lock)
        self._wake_writer = threading.Condition(lock)  # the fallback writer's (`_writer`)
        # Held by whoever writes (a caller's `end` leading, or the fallback writer): one
        # write at a time; a caller whose entries a write under way took waits on its latch.
        self._leading = threading.Lock()
        self._queued_at = 0.0  # when the queue last became non-empty
        self._file_lock = threading.Lock()
        self._queued: list[_Group] = []  # not yet durable
        # Released when the next write (of everything queued meanwhile) is durable or failed:
        # one latch per write, which all its callers pass through, not one per group.
        self._written = _latch()
        self._unsent: deque[_Group] = deque()  # durable, not yet in a tx
        self._unsent_entries = 0
        self._oldest: float | None = None  # when the oldest unsent group became durable
        self._oldest_waited: float | None = None  # same, of those a caller waits for
        self._inflight: list[_InFlight] = []
        self._live: dict[str, _Group] = {}  # durable and not yet settled
        self._done: list[str] = []  # settled, mark not yet written
        self._pending = 0  # entries queued or live (`pending`, without a scan of them all)
        self._stop = False
        self._fd: int | None = None
        self._length = 0  # the journal file's length (its appends are all `_write`'s)
        self._torn = False  # a failed append could not be cut off: compact before the next
        self._lock_fd: int | None = None
        self._threads: list[threading.Thread] = []
        self._retry_at = 0.0
        self._quiet_until = 0.0  # `quiet`: entries nobody waits for stay unsent until then
        self._held_at: int | None = None  # the height a tx was told NOT_YET at (see _send)
        self._unreachable = False
        self._seq = 0  # the last journal sequence given to an entry
        # An entry's id (v1's key for a re-sent entry): random per run, then the sequence;
        # one random draw per run, not per entry (a syscall each, under 64 threads).
        self._id_prefix = secrets.token_hex(access.ENTRY_ID // 2)
        self.stats = {
            "txs": 0,
            "entries": 0,
            "resent": 0,
            "refused": 0,
            "fsyncs": 0,
            "held": 0,
            "writes_held": 0,  # writes the writer held back for a request under way
        }

    # -- life ------------------------------------------------------------------------
    def start(self) -> AuditJournal:
        """Open (and lock) the journal, queue what it holds not yet on the chain, start."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise JournalBusy(
                f"{self.directory}: the audit journal is in use by another medledger process "
                "(one process serves a hospital's API and gateway)"
            ) from None
        self._lock_fd = lock_fd
        try:
            self._open()
        except OSError as exc:
            self._close_files()
            raise JournalUnavailable(f"the audit journal cannot be opened: {exc}") from exc
        self._threads = [
            threading.Thread(target=self._writer, name="audit-writer", daemon=True),
            threading.Thread(target=self._sender, name="audit-sender", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _open(self) -> None:
        pending, _, whole = read_journal(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        os.ftruncate(self._fd, whole)  # a torn tail was never acknowledged to anyone
        self._length = whole
        self._seq = self._first_seq(pending)
        for entries in pending:
            group = _Group(entries, sum(_size(e) for e in entries)).stamped()
            self._live[group.gid] = group
            self._pending += len(group.entries)
            self._push(group, 0.0)
        if pending:
            log.info("audit journal: %d groups not yet on the chain, re-sending", len(pending))
        self._compact()

    def _first_seq(self, pending: list[list[dict[str, Any]]]) -> int:
        """Where this run's sequences start: above every one this journal gave before. Those
        pending are in the file, those on the chain at or below its mark; the clock in µs
        (which sequences, one per entry, never overtake) covers the settled ones compacted
        away, and a journal lost with its disk while the replica lags the chain."""
        journaled = max((int(e.get("seq", 0)) for g in pending for e in g), default=0)
        try:
            on_chain = queries.access_seq(self.engine, self.wallet.public_key)
        except Exception as exc:  # the ledger is not reachable yet: the clock covers it
            log.info("audit journal: the chain's sequence mark is unknown (%s)", exc)
            on_chain = 0
        return max(journaled, on_chain, time.time_ns() // 1000)

    def _close_files(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    @property
    def stopped(self) -> bool:
        return self._stop

    def stop(self) -> None:
        """Make what is queued durable and stop; what is not on the chain stays journaled."""
        with self._cond:
            if self._stop:
                return
            self._stop = True
            self._cond.notify_all()
            self._to_write.notify_all()
            self._wake_writer.notify_all()
        for thread in self._threads:
            thread.join(30)
        self._threads = []
        with self._leading, self._file_lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    self._write_done()
            self._close_files()

    # -- the callers' side -------------------------------------------------------------
    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """A request that may log is under way (the API enters it as a request arrives, before
        its work): while such requests have not logged, the writer holds a write back by up
        to `hold_s` so that one fsync serves them too; a lone request's entry is written at
        once. Its first `begin` (in this context, or in a thread the context was copied to)
        marks it arrived; leaving the context without logging does too."""
        expected = _Expected(self)
        with self._cond:
            self._coming += 1
        reset = _EXPECTED.set(expected)
        try:
            yield
        finally:
            _EXPECTED.reset(reset)
            if not expected.arrived:
                with self._cond:
                    self._arrived(expected)

    def _arrived(self, expected: _Expected) -> None:
        """(Under the lock.) No longer awaited: the writer goes on once none is."""
        expected.arrived = True
        self._coming -= 1
        if not self._coming and self._queued:
            self._to_write.notify()

    def log(self, entries: list[dict[str, Any]], *, wait: bool, timeout: float = 30.0) -> None:
        """Journal `entries` durably (returns once fsync'd); with `wait`, until on the chain.

        Entries citing a signed request stay in one tx (they must fit one); others are cut in
        tx-sized groups. Raises JournalUnavailable if they could not be made durable,
        TxRejected if the ledger refused them for good (kept in `refused`), TimeoutError if
        `wait` ran out (they stay journaled and reach the chain later).
        """
        self.begin(entries, wait=wait, timeout=timeout).end()

    def begin(self, entries: list[dict[str, Any]], *, wait: bool, timeout: float = 30.0) -> Logging:
        """`log` in two steps: the entries are queued for the next write when this returns,
        and `end()` returns once they are durable (with `wait`, on the chain), raising what
        `log` raises. A read serves nothing before `end()`, and does its own work meanwhile
        (the vault's read, the answer's bytes) instead of sleeping through the fsync first."""
        if not entries:
            return Logging([], None, wait, 0.0)
        deadline = time.monotonic() + timeout
        groups = self._groups(entries)
        for group in groups:
            group.waited = wait
            if wait:
                group.settled = threading.Event()
        with self._cond:
            if self._stop or self._fd is None:
                raise JournalUnavailable("the audit journal is not running")
            for group in groups:  # in the order the writer makes them durable
                for entry in group.entries:
                    self._seq += 1
                    entry["seq"] = self._seq
                    entry["id"] = f"{self._id_prefix}{self._seq:016x}"
                group.stamped()
                # Encoded here, once: its size is its frame's (a lone entry was not sized
                # before), and the writer only joins the frames.
                group.frame = _frame({"g": group.entries})
                group.size = group.size or len(group.frame)
            first = not self._queued
            self._queued.extend(groups)
            self._pending += sum(len(g.entries) for g in groups)
            written = self._written
            expected = _EXPECTED.get()
            if expected is not None and expected.journal is self and not expected.arrived:
                self._arrived(expected)  # wakes the writer if it held the write for the last
            if first:
                self._queued_at = time.monotonic()
        return Logging(groups, written, wait, deadline, self)

    def quiet(self, seconds: float) -> None:
        """Keep the entries nobody waits for off the chain for the next `seconds` (at most
        MAX_QUIET_S; and however often it is renewed, no entry is held longer than
        MAX_QUIET_S after it was journaled); `quiet(0)` ends it. They are durable already:
        only their tx waits.
        A study answer asks it while its own tx heads for a block: the partials' thousands of
        entries would otherwise be signed here, checked and executed by every validator, and
        gossiped, in the very blocks the answers wait for. An entry a caller waits for
        (`wait=True`) sends everything queued before it at once, as ever."""
        with self._cond:
            if seconds <= 0:
                self._quiet_until = 0.0
            else:
                until = time.monotonic() + min(seconds, MAX_QUIET_S)
                self._quiet_until = max(self._quiet_until, until)

    def _groups(self, entries: list[dict[str, Any]]) -> list[_Group]:
        # Sized with an id and the largest sequence; both are given under the lock (log).
        # Checked (CodecError: the caller's, nothing written) and ordered here, once; `log`
        # then sets "id" and "seq" in place, which keeps the keys' order.
        stamped = [
            codec.in_canonical_order({**e, "id": _ID_SIZED, "seq": access.MAX_SEQ}) for e in entries
        ]
        if len(stamped) == 1 and stamped[0].get("request") is None:
            return [_Group(stamped, 0)]  # a lone entry is one group: nothing to size it for
        sizes = [_size(e) for e in stamped]
        if any(e.get("request") is not None for e in stamped):
            if len(stamped) > self.max_tx_entries or sum(sizes) > self.max_tx_bytes:
                raise ValueError("entries citing a signed request must fit one access.log tx")
            return [_Group(stamped, sum(sizes))]
        groups: list[_Group] = []
        start, total = 0, 0
        for i, size in enumerate(sizes):
            if i > start and (i - start >= self.max_tx_entries or total + size > self.max_tx_bytes):
                groups.append(_Group(stamped[start:i], total))
                start, total = i, 0
            total += size
        groups.append(_Group(stamped[start:], total))
        return groups

    def pending(self) -> int:
        """How many entries are journaled and not yet known to be on the chain."""
        with self._cond:
            return self._pending

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every entry logged so far is on the chain (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # -- the writer: durable first -------------------------------------------------------
    def _lead(self, written: threading.Lock, deadline: float) -> None:
        """A caller's `end`, its entries not yet durable: unless a write under way took them
        (`written` is no longer the next write's latch once it has), write and fsync all that
        is queued, in this thread (leader/follower group commit): the callers that queued
        meanwhile return with it, and no writer thread is woken per write (its wake-up and
        the GIL hand-offs it forced on the threads serving reads were most of the durable
        record's cost: docs/benchmarks.md, "Session 14 (atna13)")."""
        if not self._leading.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return  # the caller's latch wait then times out
        try:
            with self._cond:
                mine = self._written is written
            if mine:
                self._write_queued(hold=True)
        finally:
            self._leading.release()

    def _writer(self) -> None:
        """The fallback: writes what a caller queued and has not come to write for `LEFT_S`
        (a `begin` whose `end` never came, or not yet), and all that is queued at `stop`; it wakes
        every `LEFT_S` (a wake-up every 50 ms cost ≈ 0.005 ms per read under load, in every mode);
        held as a caller's write is, for requests under way."""
        while True:
            with self._cond:
                if not self._stop:
                    self._wake_writer.wait(LEFT_S)
                stop = self._stop
                due = bool(self._queued) and (stop or time.monotonic() - self._queued_at >= LEFT_S)
                if not due:
                    if stop:
                        return
                    continue
            with self._leading:
                self._write_queued(hold=True)

    def _write_queued(self, *, hold: bool) -> None:
        """Append and fsync everything queued, as one write (under `_leading`), then release
        its latch: its callers may serve while it is queued to send. With `hold`, while
        requests the API announced have not logged yet (`expecting`), wait up to `hold_s`
        for their entries so that one fsync serves them too; a lone read's is written at
        once."""
        with self._cond:
            if hold and self._coming and self.hold_s > 0 and not self._stop:
                # each `begin` that leaves none awaited wakes it (`_arrived`)
                self.stats["writes_held"] += 1
                until = time.monotonic() + self.hold_s
                while self._coming and not self._stop:
                    left = until - time.monotonic()
                    if left <= 0 or not self._to_write.wait(left):
                        break
            if not self._queued:
                return
            groups, self._queued = self._queued, []
            written, self._written = self._written, _latch()
        try:
            if self._torn:  # nothing is appended after a tear the file still holds
                self._compact()
            with self._file_lock:
                if self._fd is None:
                    raise OSError("the journal is closed")
                before = self._length
                try:
                    self._write(b"".join(g.frame for g in groups))
                    os.fsync(self._fd)
                except OSError:  # refused to the callers: not re-sent after a restart
                    self._cut(before)
                    raise
                self.stats["fsyncs"] += 1
        except OSError as exc:
            log.error("audit journal %s: cannot write: %s", self.path, exc)
            with self._cond:
                self._pending -= sum(len(g.entries) for g in groups)
            for group in groups:
                group.error = JournalUnavailable(f"the audit journal cannot be written: {exc}")
            written.release()
            return
        written.release()  # durable: its callers may serve while it is queued to send
        now = time.monotonic()
        with self._cond:
            first_waited = self._oldest_waited is None
            for group in groups:
                group.frame = b""  # written: the file holds it
                self._live[group.gid] = group
                self._push(group, now)
            # The sender keeps its tick, on which `window_s` passes: it is woken only when
            # this write has it send sooner, a full tx's backlog or a caller now waiting for
            # the commit. Woken after every write, it cost ≈ 20 µs per read for nothing.
            if self._unsent_entries >= self.max_tx_entries or (
                first_waited and self._oldest_waited is not None
            ):
                self._cond.notify()
        try:
            if self._length > self._compact_at:
                self._compact()
        except OSError as exc:  # appends go on to the old file; tried again later
            log.error("audit journal %s: cannot compact: %s", self.path, exc)

    def _write(self, data: bytes) -> None:
        """Append `data` (under the file lock); `_length` follows the file without an fstat."""
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        finally:
            self._length += len(data) - len(view)

    def _write_done(self) -> None:
        """Append the done marks gathered so far (under the file lock; not fsync'd)."""
        if self._torn:  # the next compaction writes the pending groups alone
            return
        with self._cond:
            done, self._done = self._done, []
        if done and self._fd is not None:
            before = self._length
            try:
                self._write(_frame({"done": done}))
            except OSError:  # a torn frame here would hide every group appended after it
                self._cut(before)
                with self._cond:
                    self._done[:0] = done  # written with the next marks
                raise

    def _cut(self, length: int) -> None:
        """Cut a torn append off the file (under the file lock). If the cut fails too, the
        torn bytes would hide every group appended after them at start-up (`read_journal`
        stops at the first bad frame): the journal is rewritten from the pending groups
        before anything else is appended (`_torn`; review 12a, finding 5)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, length)
            self._length = length
        except OSError:
            self._torn = True

    def _compact(self) -> None:
        """Rewrite the journal with the groups still pending (atomically, fsync'd). The new
        file is written through the descriptor that then appends to it, so no step after the
        rename can fail and leave appends going to the old, unlinked file."""
        with self._file_lock, self._cond:
            assert self._fd is not None
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            try:
                data = b"".join(_frame({"g": g.entries}) for g in self._live.values())
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                tmp.replace(self.path)
            except BaseException:
                os.close(fd)
                raise
            os.close(self._fd)
            self._fd = fd
            self._length = len(data)
            self._torn = False
            self._done = []
            self._compact_at = max(self.compact_bytes, 2 * len(data))
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself
            finally:
                os.close(dir_fd)

    # -- the sender: one tx per window -------------------------------------------------
    def _sender(self) -> None:
        tick = max(0.005, min(self.window_s, self.wait_window_s, 0.02))
        last_height = -1
        last_sweep = time.monotonic()
        while True:
            with self._cond:
                if self._stop:
                    return
                self._cond.wait(tick)
                now = time.monotonic()
                free = self.max_inflight - len(self._inflight)
                # A backlog of full txs may go beyond max_inflight (see _batches).
                extra = self.max_inflight_full - len(self._inflight) - max(free, 0)
                backlog = self._unsent_entries >= self.max_tx_entries
                due = (
                    (free > 0 or (backlog and extra > 0))
                    and self._oldest is not None
                    and now >= self._retry_at
                    and (
                        now >= self._quiet_until
                        or self._oldest_waited is not None
                        or now - self._oldest >= MAX_QUIET_S  # renewed quiets hold none longer
                    )
                    and (
                        now - self._oldest >= self.window_s
                        or (
                            self._oldest_waited is not None
                            and now - self._oldest_waited >= self.wait_window_s
                        )
                        or self._unsent_entries >= self.max_tx_entries
                    )
                )
                batches = self._batches(max(free, 0), extra if backlog else 0) if due else []
            versions: dict[str, int] = {}  # the contract versions, read once per tick
            for i, batch in enumerate(batches):
                try:
                    sent = self._send(batch, versions)
                except Exception:  # a bug, not the network (_send keeps those): keep them
                    log.exception("audit journal: sending failed; retrying")
                    self._requeue(batch, later=True)
                    sent = False
                if not sent:  # the ledger is unreachable or busy: the rest waits too
                    self._requeue([g for b in batches[i + 1 :] for g in b], later=True)
                    break
            try:
                # The height is asked (an RPC on CometBFT) only while a tx is in flight.
                height = self.engine.height() if self._inflight else last_height
                sweep = time.monotonic() - last_sweep >= min(self.resend_s, 1.0)
                if sweep:
                    self._adopt_orphans()
                if self._inflight and (height != last_height or sweep):
                    self._check_inflight(sweep)
                last_sweep = time.monotonic() if sweep else last_sweep
                last_height = height
                if self._held_at is not None and height > self._held_at:
                    with self._cond:  # a block committed: what was held goes out now
                        self._held_at = None
                        self._retry_at = 0.0
                with self._file_lock:
                    self._write_done()
            except Exception:  # the next tick tries again; the journal keeps everything
                log.exception("audit journal: sending failed; retrying")
                with self._cond:
                    self._retry_at = time.monotonic() + self.retry_s

    def _adopt_orphans(self) -> None:
        """Re-queue any journaled group neither queued nor in a tx in flight (belt and braces:
        whatever path lost track of it, the running node still sends it)."""
        with self._cond:  # by set operations in C: the backlog may hold 10,000s of groups
            tracked = set(map(id, self._unsent))
            for item in self._inflight:
                tracked.update(map(id, item.groups))
            live = dict(zip(map(id, self._live.values()), self._live.values(), strict=True))
            missing = live.keys() - tracked
            orphans = [g for key, g in live.items() if key in missing] if missing else []
        if orphans:
            log.warning("audit journal: %d groups were untracked; re-sending", len(orphans))
            self._requeue(orphans)

    def _batches(self, limit: int, full_extra: int = 0) -> list[list[_Group]]:
        """Up to `limit` tx-sized batches of the unsent groups, oldest first (a group refused
        in a batch goes alone), then up to `full_extra` more if they are full; the rest wait
        for a tx in flight to commit."""
        batches: list[list[_Group]] = []
        full_ones: set[int] = set()  # indexes of the batches closed because they were full
        current: list[_Group] = []
        count = size = 0
        self._unsent_entries = 0
        self._oldest = self._oldest_waited = None
        while self._unsent:
            group = self._unsent.popleft()
            n = len(group.entries)
            if group.alone:
                batches.append([group])
                continue
            full = count + n > self.max_tx_entries or size + group.size > self.max_tx_bytes
            if current and full:
                full_ones.add(len(batches))
                batches.append(current)
                current, count, size = [], 0, 0
            current.append(group)
            count += n
            size += group.size
        if current:
            if count >= self.max_tx_entries:
                full_ones.add(len(batches))
            batches.append(current)
        while full_extra > 0 and limit in full_ones:
            limit += 1
            full_extra -= 1
        for group in reversed([g for batch in batches[limit:] for g in batch]):
            self._push(group, 0.0, first=True)
        return batches[:limit]

    def _push(self, group: _Group, ready: float, *, first: bool = False) -> None:
        """Queue a durable group for the next tx (under the condition's lock)."""
        if first:
            self._unsent.appendleft(group)
        else:
            self._unsent.append(group)
        self._unsent_entries += len(group.entries)
        self._oldest = ready if self._oldest is None else min(self._oldest, ready)
        if group.waited:
            old = self._oldest_waited
            self._oldest_waited = ready if old is None else min(old, ready)

    def _requeue(self, groups: list[_Group], *, later: bool = False) -> None:
        with self._cond:
            for group in reversed(groups):
                self._push(group, 0.0, first=True)
            if later:
                self._retry_at = time.monotonic() + self.retry_s

    def _body(self, batch: list[_Group], versions: dict[str, int]) -> dict[str, Any]:
        """The `access.log` body of a batch, for the active contract version.

        v1 knows an entry by its `id`. v2 by its `seq` (an entry journaled before sequences
        keeps its id), and the tx says how far the chain must be before it (`need`): every
        entry still pending here with a lower sequence than this tx's last one, not in this
        tx, must be on the chain first, so that no tx lifts the chain's mark over an entry
        not yet written (txs of one signer may commit out of order: a nonce may skip)."""
        if not versions:  # an RPC on CometBFT: once for the txs of one tick
            versions.update(queries.contract_versions(self.engine))
        version = versions.get("access", 1)
        if version < 2:
            return access.log_body([_without(e, "seq") for g in batch for e in g.entries], 1)
        entries = [_without(e, "id") if e.get("seq") else e for g in batch for e in g.entries]
        top = max(g.last_seq for g in batch)
        with self._cond:
            mine = {id(g) for g in batch}
            need = max(
                (g.last_seq for g in self._live.values() if g.last_seq < top and id(g) not in mine),
                default=0,
            )
        return access.log_body(entries, version, need)

    def _send(self, batch: list[_Group], versions: dict[str, int]) -> bool:
        """Sign and submit one batch; False when the ledger could not take it now (the
        batch is queued again for `retry_s` later)."""
        signed: list[bytes] = []
        try:
            submitted, nonce = self.wallet.submit_nonce(
                "access.log", self._body(batch, versions), on_signed=signed.append
            )
        except Exception as exc:  # the node's CometBFT is down, or its RPC failed
            if not self._unreachable:
                log.warning("audit journal: cannot submit (%s); entries kept, retrying", exc)
            self._unreachable = True
            self._requeue(batch, later=True)
            return False
        if self._unreachable:
            log.info("audit journal: the ledger is reachable again")
            self._unreachable = False
        if submitted.accepted:
            tx = signed[-1]
            with self._cond:
                self._inflight.append(
                    _InFlight(tx, submitted.tx_id, nonce, batch, time.monotonic())
                )
            return True
        if submitted.check.code in _LEDGER_CODES:
            self._refused(batch, submitted.check.code, submitted.check.log, "check")
            return True
        if submitted.check.code == Code.NOT_YET:
            # It rests on a tx of ours in flight that this node's CheckTx state no longer
            # holds: a block committed without it, and the mempool is not checked again after
            # a block (testnet.py). Sent again once the next block has committed (that tx in
            # it, or not yet: then once more), not a whole `retry_s` later, and the ledger
            # is not unreachable: no warning.
            self.stats["held"] += 1
            height = self.engine.height()
            self._requeue(batch, later=True)
            with self._cond:
                self._held_at = height
            return False
        # The mempool is full, or a nonce race the wallet could not win: later.
        if not self._unreachable:
            log.warning(
                "audit journal: refused by the mempool (%s); entries kept, retrying",
                submitted.check.log,
            )
        self._unreachable = True
        self._requeue(batch, later=True)
        return False

    def _refused(self, batch: list[_Group], code: int, why: str, stage: str) -> None:
        """The ledger refused the batch for good: find whose entries, keep them aside."""
        if len(batch) > 1:
            for group in batch:
                group.alone = True
            self._requeue(batch)
            return
        (group,) = batch
        error = TxRejected("access.log", code, why, stage)
        log.error(
            "audit journal: %d entries refused by the ledger (%s); kept in %s",
            len(group.entries),
            error,
            self.directory / "refused",
        )
        line = orjson.dumps(
            {"code": code, "log": why, "entries": group.entries},
            default=lambda b: b.hex() if isinstance(b, bytes) else str(b),
        )
        with open(self.directory / "refused", "ab") as out:
            out.write(line + b"\n")
            out.flush()
            os.fsync(out.fileno())
        self.stats["refused"] += len(group.entries)
        self._settle([group], error)

    def _settle(self, groups: list[_Group], error: BaseException | None = None) -> None:
        with self._cond:
            for group in groups:
                if self._live.pop(group.gid, None) is not None:
                    self._pending -= len(group.entries)
                self._done.append(group.gid)
                group.error = error
                if group.settled is not None:
                    group.settled.set()

    def _check_inflight(self, sweep: bool) -> None:
        with self._cond:
            inflight = list(self._inflight)
        # A tx in a block has spent its nonce (refused or not), or another tx spent it: one
        # query for the chain's nonce, then a lookup (an RPC each on CometBFT) only for the
        # txs at or below it. A sweep looks every one up (and unsticks the old ones).
        on_chain = None if sweep else queries.nonce(self.engine, self.wallet.public_key)
        for item in inflight:
            if on_chain is not None and item.nonce > on_chain:
                continue
            committed: Committed | None
            try:
                committed = self.engine.wait_for_commit(item.tx_id, 0.0)
            except (TimeoutError, LookupError):
                committed = None
            if committed is not None:
                self._forget(item)
                if committed.result.ok:
                    self.stats["txs"] += 1
                    self.stats["entries"] += sum(len(g.entries) for g in item.groups)
                    self._settle(item.groups)
                elif committed.result.code in _LEDGER_CODES:
                    self._refused(item.groups, committed.result.code, committed.result.log, "block")
                else:  # its nonce was spent by another tx first: sign again
                    self.stats["resent"] += 1
                    self._requeue(item.groups)
            elif sweep and time.monotonic() - item.sent >= self.resend_s:
                self._unstick(item)

    def _unstick(self, item: _InFlight) -> None:
        """A tx in no block after `resend_s`: dropped (its nonce passed it), or submit again."""
        passed = queries.nonce(self.engine, self.wallet.public_key) >= item.nonce
        if queries.tx_location(self.engine, item.tx_id) is not None:
            return  # committed meanwhile: the next check settles it
        if passed:
            self._forget(item)
            self.stats["resent"] += 1
            self._requeue(item.groups)
            return
        with contextlib.suppress(Exception):  # still down: the next sweep tries again
            self.engine.submit(item.tx)
        item.sent = time.monotonic()

    def _forget(self, item: _InFlight) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._inflight.remove(item)
