"""Partial facts between hospitals, so that a patient followed in several is counted once.

For a running study query, the *answering hospital* of an enrolled patient is, among the
patient's custodians on the chain, the first one the patient is linked to (`linked`: the
hospital that recorded their enrolment in the study on their behalf, then the one that
attested their bound key), else the longest-standing one (ties: the smallest SHA-256(query
id 0 org)), fixed by the chain: a member that made itself a custodian with a junk record,
even before any real hospital, never receives the real custodians' facts (`answering`). A
link counts once `study_link_settle_ms` old at the query's start (`settled_by`); younger,
it holds the patient: nobody counts them, no facts move. Every other custodian sends it
what its own records say of the patient (`PatientFacts`), one message per (query, sender,
receiver), to every other answerer even when empty, so that a receiver knows when it has
heard from all. Only the answering hospital counts the patient.

The receiver (the gateway, `check`) accepts a message only from an answerer's hospital key,
while the query runs, and for each pid only if the patient is enrolled in the query's study
(not withdrawn, no erasure request: a patient who withdrew since the sender looked is not
kept, nor counted), and the sender is one of its custodians; a pid whose answering hospital it
computes otherwise is not kept (counted by neither side), not the whole message, and returned
in the reply: the sender, not the receiver, reports it counted nowhere.
Custodians are those whose custody had begun when the query started running (`custodians`).
What it accepts is kept in `<home>/research/partials.db` (`Inbox`)
until the answer is on the chain, encrypted at rest (AES-256-GCM under a key derived from the
hospital's box key: the facts are derived health data), so that a restart loses nothing.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medledger.contracts.common import is_pid
from medledger.contracts.patients import (
    erasure_requested,
    erasures_requested,
    key_binding,
    key_bindings,
    rebinding,
)
from medledger.contracts.policies import params
from medledger.contracts.records import custodies, custodies_at, custodies_of
from medledger.contracts.research import enrolment_of, enrolments_of, get_study, study_open
from medledger.contracts.study_query import PatientFacts
from medledger.ledger.store import StateView

#: Pids one message may carry (every enrolled patient of a study fits: research.MAX_MEMBERS).
MAX_PATIENTS = 20_000
#: Largest partials body (a few hundred bytes per patient).
BODY_LIMIT = 16 * 1024 * 1024


class PartialsRefused(Exception):
    """A partials message this hospital does not accept: `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def rank(query_id: str, org: str) -> bytes:
    return hashlib.sha256(query_id.encode() + b"\x00" + org.encode()).digest()


class Link(NamedTuple):
    """A hospital the patient is linked to, and when its linking act was filed (ms)."""

    org: str
    since: int


def answering(
    query_id: str,
    custodians: Mapping[str, int],
    linked: Sequence[Link] = (),
    settled_by: int | None = None,
) -> str:
    """The custodian that counts the patient for this query ("" when none does): the first
    of `linked` (in precedence order) that is a custodian, else the longest-standing
    (`custodians`: org -> custody since), ties by `rank`. A member that registers a junk
    record for an enrolled patient is a custodian from then on; were the rank alone to
    choose, it would count the patient for some queries and receive the real custodians'
    facts about them; were seniority alone to choose, filing before any real hospital would
    do (knowing the patient's INS is enough); were seniority to choose among the links, the
    junk filer would only have to attest a first key for the patient (it is the oldest
    custodian, so custody_min_age_ms does not stop it).

    That first link counts only if filed by `settled_by` (`settled_by`: the query's start
    less `study_link_settle_ms`); a younger one *holds* the patient: nobody counts them in
    this query ("") when they have other custodians, whose facts would go to it. A junk filer
    can enrol the patient in their name, or attest a first key, as a real hospital can; only
    time tells them apart: the patient and the earlier custodians were told, and had that
    long to undo it. Falling back to the next link or to seniority instead would hand the
    patient to the oldest custodian (who may be the junk filer) whenever a real hospital has
    just enrolled them."""
    if len(custodians) == 1:  # the same answer, whatever the links say
        return next(iter(custodians))
    for link in linked:
        if link.org in custodians:
            if settled_by is not None and link.since > settled_by and len(custodians) > 1:
                return ""
            return link.org
    return min(
        custodians,
        key=lambda org: (custodians[org], rank(query_id, org)),
        default="",
    )


def settled_by(state: StateView, record: dict[str, Any]) -> int:
    """The latest filing time (ms) of a link that counts for the query (see `answering`):
    fixed when the query started (research v3 `links_by`), as every other input of
    `answering` is; a record started under v2 has none: the parameter as it stands."""
    if "links_by" in record:
        return int(record["links_by"])
    return started_ms(record) - int(params(state)["study_link_settle_ms"])


def linked(state: StateView, study: str, pid: str, record: dict[str, Any]) -> tuple[Link, ...]:
    """The hospitals the patient is linked to for this query, by an act on the chain beyond
    filing records, each one told to the patient and to the other custodians, in precedence
    order: the one that recorded their enrolment in the study on their behalf (the study's
    own consent, taken at its desk), then the one that attested their bound key (a patient
    who enrolled with their own key has one). Both as they stood at the query's start, read
    from what the chain keeps of them (a re-enrolment or a key rebound since does not
    change them), so that every answerer, whatever its height, agrees. Each with when its
    act was filed (a rebinding: when filed, not when it took effect: it waited, undoable)."""
    enrolment, binding = enrolment_of(state, study, pid), key_binding(state, pid)
    return _linked(state, study, pid, started_ms(record), enrolment, binding)


def _linked(
    state: StateView,
    study: str,
    pid: str,
    start: int,
    enrolment: dict[str, Any] | None,
    binding: dict[str, Any] | None,
) -> tuple[Link, ...]:
    """`linked`, from the patient's enrolment and key binding as they stand now."""
    found = [
        _enrolment_recorder(state, study, pid, start, enrolment),
        _key_attester(state, pid, start, binding),
    ]
    seen: set[str] = set()
    out: list[Link] = []
    for link in found:
        if link is not None and link.org and link.org not in seen:
            seen.add(link.org)
            out.append(link)
    return tuple(out)


def _acts(state: StateView, pid: str, act: str) -> list[dict[str, Any]]:
    """The acts of type `act` a hospital filed in the patient's name (`patients/acted`)."""
    return [v for _, v in state.scan(f"patients/acted/{pid}/") if v.get("act") == act]


def _enrolment_recorder(
    state: StateView, study: str, pid: str, start: int, enrolment: dict[str, Any] | None
) -> Link | None:
    """The hospital that recorded the patient's enrolment in force at `start` (None when the
    patient enrolled with their own key, or was not enrolled then)."""
    enrolment = enrolment or {}
    since = int(enrolment.get("since") or 0)
    if enrolment.get("status") == "enrolled" and since <= start:
        org = str((enrolment.get("by") or {}).get("org") or "")
        return Link(org, since) if org else None
    # Withdrawn or re-enrolled since: the enrolment at start, from its history.
    then = [h for h in enrolment.get("history") or () if int(h[0]) <= start]
    if not then or then[-1][1] != "enrolled" or then[-1][2] != "hospital":
        return None
    at = int(then[-1][0])
    acts = _acts(state, pid, "research.enrol")
    orgs = [a["org"] for a in acts if int(a["time"]) == at and a["ref"].get("study") == study]
    return Link(str(orgs[-1]), at) if orgs else None


def _key_attester(
    state: StateView, pid: str, start: int, binding: dict[str, Any] | None
) -> Link | None:
    """The hospital that attested the patient's key in force at `start` (None for none),
    with when it filed the binding."""
    if binding is None:
        return None
    at, tx = int(binding.get("time") or 0), bytes(binding.get("tx") or b"")
    if at <= start and state.has(f"patients/acted/{pid}/{at:016d}/{tx.hex()}"):
        return Link(str(binding["org"]), at)  # a first binding, in force: filed then
    # The bindings filed in the patient's name: a first one takes effect when filed, a
    # replacement at its effective_ms, once done; the latest in force by `start` counts.
    best: tuple[int, Link] | None = None
    for act in _acts(state, pid, "patients.bind"):
        seq = act["ref"].get("id")
        filed = when = int(act["time"])
        if seq is not None:
            rebind = rebinding(state, int(seq))
            if rebind is None or rebind.get("status") != "done":
                continue
            when = int(rebind["effective_ms"])
        if when <= start and (best is None or when >= best[0]):
            best = (when, Link(str(act["org"]), filed))
    if best is not None:
        return best[1]
    # A binding the acts do not show (none filed in the patient's name): as it stands.
    if int(binding.get("time") or 0) <= start and binding.get("org"):
        return Link(str(binding["org"]), int(binding.get("time") or 0))
    return None


def counts(state: StateView, study: str, pid: str) -> bool:
    """Whether the patient may be counted in the study now: enrolled, not withdrawn, and no
    erasure request (re-checked by the answering hospital when it tallies)."""
    enrolment = enrolment_of(state, study, pid)
    return _counts(enrolment, erasure_requested(state, pid) is not None)


def not_kept(body: dict[str, Any], kept: Collection[str]) -> list[str]:
    """The pids of a checked partials message (`check`) that the receiver did not keep: the
    sender's own patients, returned in the gateway's reply (`Inbox.returned`)."""
    return sorted(str(item[0]) for item in body["patients"] if item[0] not in kept)


def _counts(enrolment: dict[str, Any] | None, erasure: bool) -> bool:
    return enrolment is not None and enrolment.get("status") == "enrolled" and not erasure


def counted(state: StateView, study: str, pids: Collection[str]) -> set[str]:
    """Those of `pids` that `counts` now, read in one pass per kind."""
    pids = set(pids)
    erased = erasures_requested(state, pids)
    return {
        pid
        for pid, enrolment in enrolments_of(state, study, pids).items()
        if _counts(enrolment, pid in erased)
    }


class Unread(Exception):
    """A read the chain reads ahead (`ChainReads`) did not make: read the chain now."""


class Recorder:
    """A reader that keeps what it read (each key's value, absent included, and each
    scanned prefix's items) from its parent, a committed view."""

    def __init__(self, parent: StateView) -> None:
        self.parent = parent
        self.keys: dict[bytes, bytes | None] = {}
        self.scans: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def get_raw(self, key: bytes) -> bytes | None:
        value = self.keys[key] = self.parent.get_raw(key)
        return value

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        items = self.scans[prefix] = list(self.parent.scan_raw(prefix))
        return iter(items)


@dataclass
class ChainReads:
    """The chain inputs of a query's plan read while it awaited its approvals
    (`research.answer.Answerer.prepare`): every key read and every prefix scanned, with what
    it held. Good only while no committed block since wrote one of those keys or a key under
    one of those prefixes (`touched`: the app's write listener then drops them), every block
    since was heard (`height`: one not heard drops them too), and only
    for a plan or a receiver's check that reads nothing else (`Unread`: it reads the chain).
    The study's enrolments, the erasure requests, the custodies and shreddings, the key
    bindings, the members (their box keys), the contract versions and the parameters are all
    among them: a block that changes any of them voids the whole."""

    keys: dict[bytes, bytes | None]
    scans: dict[bytes, list[tuple[bytes, bytes]]]
    study: str = ""
    #: the last committed height they are known to hold at: the one they were read at, then
    #: each next block heard that left them (`research.answer.Answerer._wrote`)
    height: int = -1

    def __post_init__(self) -> None:
        self._prefixes = tuple(self.scans)
        self.size = len(self.keys) + sum(len(items) for items in self.scans.values())

    def touched(self, written: Collection[bytes]) -> bool:
        keys, prefixes = self.keys, self._prefixes
        return any(k in keys or k.startswith(prefixes) for k in written)

    def view(self, extra: dict[bytes, bytes | None] | None = None) -> StateView:
        """A view that answers from these reads (and `extra`, keys read since) only:
        `Unread` for any other."""
        return StateView(_Replay(self, extra or {}))


class _Replay:
    def __init__(self, reads: ChainReads, extra: dict[bytes, bytes | None]) -> None:
        self.reads = reads
        self.extra = extra

    def get_raw(self, key: bytes) -> bytes | None:
        if key in self.extra:
            return self.extra[key]
        try:
            return self.reads.keys[key]
        except KeyError:
            raise Unread(key) from None

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        items = self.reads.scans.get(prefix)
        if items is None:
            raise Unread(prefix)
        return iter(items)


class Links:
    """The count-once rule's facts for one query and many patients (a hospital's whole
    custody when it plans its answer), each kind read in one pass over one committed view:
    the study's enrolments, the custodies and shreddings, the key bindings, the erasure
    requests, instead of several lookups per patient; the receiver's `check` reads a
    message's pids the same way. Same rule and same answers as `counts`, `custodians`,
    `linked` and `answering` (which read one patient); only a link that changed since the
    query started reads that patient's acts."""

    def __init__(
        self,
        state: StateView,
        record: dict[str, Any],
        pids: Collection[str],
        custodies: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self.state = state
        self.record = record
        self.query = str(record["id"])
        self.study = str(record["study"])
        self.start = started_ms(record)
        self.settled = settled_by(state, record)
        self.pids = sorted(pids)
        wanted = self._pids = set(pids)
        self._enrolments: dict[str, dict[str, Any]] = {}
        self._erased: set[str] = set()
        self._custodies = custodies or {}
        self._bindings: dict[str, dict[str, Any]] = {}
        if wanted:  # no pids (an empty message): no pass over the chain's keys
            self._enrolments = enrolments_of(state, self.study, wanted)
            self._erased = erasures_requested(state, wanted)
            if custodies is None:
                self._custodies = custodies_of(state, wanted)
            self._bindings = key_bindings(state, wanted)

    @classmethod
    def at(cls, state: StateView, record: dict[str, Any], org: str) -> Links:
        """The links of every patient whose custody runs at org (`pids`, in pid order)."""
        held = custodies_at(state, org)
        return cls(state, record, held, held)

    def _read(self, pid: str) -> None:
        if pid not in self._pids:  # absent from the passes is not "none on the chain"
            raise KeyError(f"{pid}: not among the patients these links were read for")

    def counts(self, pid: str) -> bool:
        self._read(pid)
        return _counts(self._enrolments.get(pid), pid in self._erased)

    def custodians(self, pid: str) -> dict[str, int]:
        self._read(pid)
        return _custodians(self._custodies.get(pid) or {}, self.record)

    def linked(self, pid: str) -> tuple[Link, ...]:
        self._read(pid)
        enrolment, binding = self._enrolments.get(pid), self._bindings.get(pid)
        return _linked(self.state, self.study, pid, self.start, enrolment, binding)

    def answering(self, pid: str, held_by: dict[str, int] | None = None) -> str:
        """The patient's answering hospital (`answering`; `held_by`: their `custodians`,
        when already read). An only custodian counts them whatever the links: not read."""
        held_by = self.custodians(pid) if held_by is None else held_by
        linked = self.linked(pid) if len(held_by) > 1 else ()
        return answering(self.query, held_by, linked, self.settled)


def started_ms(record: dict[str, Any]) -> int:
    """When the query began running (block time, ms): the custodies that count are those
    begun by then, so that every answerer, whatever its replica's height, assigns a patient
    to the same answering hospital."""
    return int(record.get("started") or 0)


def custodians(state: StateView, pid: str, record: dict[str, Any]) -> dict[str, int]:
    """The patient's custodians for this query (org -> custody since): custody begun by its
    start, still running, and an answerer."""
    return _custodians(custodies(state, pid), record)


def _custodians(held_by: dict[str, int], record: dict[str, Any]) -> dict[str, int]:
    start, answerers = started_ms(record), set(record.get("answerers") or ())
    return {
        org: since for org, since in sorted(held_by.items()) if since <= start and org in answerers
    }


def running(record: dict[str, Any] | None, now_ms: int) -> bool:
    """A query record (`research/query`) that still takes answers."""
    return bool(
        record is not None
        and record.get("status") == "running"
        and now_ms < int(record.get("deadline_ms") or 0)
    )


def check(
    state: StateView,
    record: dict[str, Any] | None,
    sender: str,
    receiver: str,
    body: dict[str, Any],
    now_ms: int,
    parsed: Sequence[PatientFacts | PartialsRefused | None] | None = None,
) -> tuple[str, dict[str, PatientFacts], list[str]]:
    """The receiver's checks of a partials message (query, sender, each pid); returns
    (query id, {pid: facts}, dropped pids) or raises PartialsRefused naming what is wrong.
    `parsed`: the message's `parse_facts`, made before the caller took its committed view
    (it needs none), so that the view, which holds the node's block commits back, is held
    for the chain's reads only.

    A pid whose answering hospital this replica computes otherwise than the sender did
    (held, or another's: a custody ended between the two reads, or a sender lying) is not
    kept, not the whole message: the sender gave it away and does not count it. When this
    replica gives it to a third hospital, or to none, it is *dropped*: the receiver does not
    count it either (`Inbox.dropped`), so that no two hospitals count it; when it gives it
    to the sender, the receiver would not count it anyway. Neither goes into the receiver's
    answer's `dropped`: a co-custodian could otherwise put a false shortfall in any
    co-answerer's answer. The gateway returns every pid not kept (`not_kept`) to the sender,
    which counts them nowhere and says so in its own answer. A patient no longer enrolled
    (`counts`) is not kept either, and is no dispute."""
    query_id = body.get("query")
    if not isinstance(query_id, str) or not query_id:
        raise PartialsRefused(400, "query: a query id expected")
    if record is None:
        raise PartialsRefused(404, f"query: no query {query_id!r}")
    if not running(record, now_ms):
        raise PartialsRefused(409, f"query {query_id}: not running")
    study = str(record.get("study") or query_id.rsplit("/", 1)[0])
    found_study = get_study(state, study)
    if found_study is None or not study_open(found_study, now_ms):
        raise PartialsRefused(409, f"query {query_id}: study {study} is closed")
    answerers = list(record.get("answerers") or [])
    if sender not in answerers:
        raise PartialsRefused(403, f"{sender} is not an answerer of {query_id}")
    if receiver not in answerers:
        raise PartialsRefused(403, f"{receiver} is not an answerer of {query_id}")
    patients = body.get("patients")
    if not isinstance(patients, list) or len(patients) > MAX_PATIENTS:
        raise PartialsRefused(400, f"patients: a list of at most {MAX_PATIENTS} [pid, facts]")
    if parsed is None or len(parsed) != len(patients):
        parsed = parse_facts(body)
    found: dict[str, PatientFacts] = {}
    dropped: list[str] = []
    seen: set[str] = set()
    # The message's pids' links, each kind read once (a malformed item is refused below).
    links = Links(state, record, {it[0] for it in patients if _well_formed(it)})
    for i, item in enumerate(patients):
        if not _well_formed(item):
            raise PartialsRefused(400, f"patients[{i}]: [pid, facts] expected")
        pid = str(item[0])
        if pid in seen:
            raise PartialsRefused(400, f"patients[{i}]: pid listed twice")
        seen.add(pid)
        held_by = links.custodians(pid)
        if sender not in held_by:
            raise PartialsRefused(403, f"patients[{i}]: {sender} is not a custodian")
        facts = parsed[i]
        if not isinstance(facts, PatientFacts):
            raise facts or PartialsRefused(400, f"patients[{i}]: [pid, facts] expected")
        if not links.counts(pid):  # withdrawn since the sender looked: no dispute
            continue
        counter = links.answering(pid, held_by)
        if counter == receiver:
            found[pid] = facts
        elif counter != sender:
            dropped.append(pid)  # another's, or held: this hospital never counts it
    return query_id, found, dropped


def parse_facts(body: dict[str, Any]) -> list[PatientFacts | PartialsRefused | None]:
    """Each item's facts parsed (`PatientFacts.from_obj`), or the refusal its facts earn,
    or None for an item that is no [pid, facts]: all `check` needs of a message that reads
    no state. `check` raises them in the message's order, among its other checks."""
    patients = body.get("patients")
    if not isinstance(patients, list) or len(patients) > MAX_PATIENTS:
        return []
    parsed: list[PatientFacts | PartialsRefused | None] = []
    for i, item in enumerate(patients):
        if not _well_formed(item):
            parsed.append(None)
            continue
        try:
            parsed.append(PatientFacts.from_obj(item[1]))
        except Exception as exc:  # TypeError, ValueError, KeyError, the model's TxError
            parsed.append(PartialsRefused(400, f"patients[{i}].facts: {exc}"))
    return parsed


def _well_formed(item: Any) -> bool:
    """A partials message's item: [pid, facts] (the facts are parsed by `check`)."""
    return isinstance(item, list) and len(item) == 2 and is_pid(item[0])


_SCHEMA = """
CREATE TABLE IF NOT EXISTS partials (
    query  TEXT NOT NULL,
    sender TEXT NOT NULL,
    nonce  BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (query, sender)
) STRICT;
CREATE TABLE IF NOT EXISTS dropped (
    query TEXT NOT NULL,
    pid   TEXT NOT NULL,
    PRIMARY KEY (query, pid)
) STRICT;
CREATE TABLE IF NOT EXISTS sent (
    query    TEXT NOT NULL,
    receiver TEXT NOT NULL,
    PRIMARY KEY (query, receiver)
) STRICT;
CREATE TABLE IF NOT EXISTS returned (
    query TEXT NOT NULL,
    pid   TEXT NOT NULL,
    PRIMARY KEY (query, pid)
) STRICT;
"""


class Inbox:
    """Partials received (and sends acknowledged) per query, kept across restarts."""

    def __init__(self, path: Path, box_secret: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        key = HKDF(hashes.SHA256(), 32, None, b"medledger/study-partials/v1").derive(box_secret)
        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _aad(query_id: str, sender: str) -> bytes:
        return f"medledger/study-partials/{query_id}/{sender}".encode()

    def put(
        self,
        query_id: str,
        sender: str,
        facts: dict[str, PatientFacts],
        dropped: Sequence[str] = (),
    ) -> None:
        """Keep (or replace: a sender re-sends the same after its restart) one message, and
        the pids `check` dropped from it (counted by nobody here), in one transaction."""
        plain = cbor2.dumps([[pid, f.to_obj()] for pid, f in sorted(facts.items())])
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain, self._aad(query_id, sender))
        with self._arrived:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO partials VALUES (?, ?, ?, ?)",
                    (query_id, sender, nonce, sealed),
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO dropped VALUES (?, ?)",
                    [(query_id, p) for p in dropped],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._arrived.notify_all()

    def dropped(self, query_id: str) -> set[str]:
        """The pids dropped from the query's partials (`check`): this hospital counts none,
        nor reports them (their sender does)."""
        with self._lock:
            rows = self._db.execute("SELECT pid FROM dropped WHERE query = ?", (query_id,))
            return {str(r[0]) for r in rows}

    def senders(self, query_id: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT sender FROM partials WHERE query = ?", (query_id,))
            return {str(r[0]) for r in rows}

    def wait(self, query_id: str, senders: set[str], timeout: float) -> set[str]:
        """Until every one of `senders` was heard from, or `timeout`; returns those missing."""
        import time

        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                rows = self._db.execute("SELECT sender FROM partials WHERE query = ?", (query_id,))
                missing = senders - {str(r[0]) for r in rows}
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    return missing
                self._arrived.wait(min(remaining, 1.0))

    def received(self, query_id: str) -> dict[str, dict[str, PatientFacts]]:
        """{sender: {pid: facts}} of the query."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sender, nonce, sealed FROM partials WHERE query = ?", (query_id,)
            ).fetchall()
        out: dict[str, dict[str, PatientFacts]] = {}
        for sender, nonce, sealed in rows:
            plain = self._aead.decrypt(bytes(nonce), bytes(sealed), self._aad(query_id, sender))
            out[str(sender)] = {
                str(pid): PatientFacts.from_obj(obj) for pid, obj in cbor2.loads(plain)
            }
        return out

    def mark_sent(self, query_id: str, receiver: str, returned: Sequence[str] = ()) -> None:
        """The receiver took the message; `returned`: the pids of it that it did not keep
        (its reply's `dropped`), in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT OR IGNORE INTO sent VALUES (?, ?)", (query_id, receiver))
                self._db.executemany(
                    "INSERT OR IGNORE INTO returned VALUES (?, ?)",
                    [(query_id, p) for p in returned],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def returned(self, query_id: str) -> set[str]:
        """The pids this hospital sent and a receiver did not keep: counted nowhere."""
        with self._lock:
            rows = self._db.execute("SELECT pid FROM returned WHERE query = ?", (query_id,))
            return {str(r[0]) for r in rows}

    def sent(self, query_id: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT receiver FROM sent WHERE query = ?", (query_id,))
            return {str(r[0]) for r in rows}

    def forget(self, query_id: str) -> None:
        """Drop a query's partials once its answer is on the chain (or it ended)."""
        with self._lock:
            self._db.execute("DELETE FROM partials WHERE query = ?", (query_id,))
            self._db.execute("DELETE FROM dropped WHERE query = ?", (query_id,))
            self._db.execute("DELETE FROM sent WHERE query = ?", (query_id,))
            self._db.execute("DELETE FROM returned WHERE query = ?", (query_id,))

    def queries(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT query FROM partials UNION SELECT query FROM sent")
            return sorted(str(r[0]) for r in rows)
