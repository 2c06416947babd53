"""The custodian's gateway: what other hospitals may ask of this hospital's vault.

Every request arrives over mutual TLS (the client certificate names a hospital), carries an
Ed25519 signature by a practitioner's or hospital's key (checked, and kept as evidence, see
signing.py), and the signer's hospital must be the one the certificate names. Then, for each
record concerned, the consortium's `authorize` decides on this node's replica; the decision,
granted or denied, becomes an `access.log` entry carrying the signed request (which every
replica verifies: the requester's key, this custodian as audience, the time), and nothing is
served before that entry is committed: a read that is not in the audit trail never happened.
Denials are committed too, with their reason's code (the wording stays in the evidence).

    POST /exchange/v1/index          {pid, purpose}          the patient's entries here that
                                                             the caller may see, decrypted
    POST /exchange/v1/records        {pid, rids, purpose}    resources (exact bytes) + salts;
                                                             the caller checks the commitments
    POST /exchange/v1/metadata-key   {pid, purpose}          the keys of the categories the
                                                             caller may see (indexing.py), sealed
                                                             to the caller hospital's X25519 key
    POST /exchange/v1/deliveries     {referral, pid, records}  a referral delivery received here
    POST /exchange/v1/share-release  {epoch}                 the caller's key share, after the
                                                             vote rebinding it (escrow.py)
    POST /exchange/v1/study-partials {query, height, patients: [[pid, facts]]}  a co-custodian's
                                                             facts for a running study query
                                                             (node/study_partials.py)
    POST /exchange/v1/pseudonym-key  {}                      the consortium's pseudonym key,
                                                             sealed to a current member's box
                                                             key on the chain (bootstrap.py)
    POST /exchange/v1/custody-put    {items: [{id, blob, sha256, version}]}  the caller's sealed
                                                             replicas kept here (custody.py)
    POST /exchange/v1/custody-drop   {ids}                   to the trash (kept custody_grace_days,
                                                             custody.py); a signed receipt
    POST /exchange/v1/custody-purge  {pid, proof}            destroy a patient's wrapped key
                                                             item, trash included, once the
                                                             chain states it shredded
    POST /exchange/v1/custody-list   {after, limit, trash}   ids, versions, sizes, hashes (of
                                                             the trash: numbers too)
    POST /exchange/v1/custody-get    {ids} or {trash}        the blobs back (trashed: by number)
    POST /exchange/v1/custody-empty-trash {}                 trashed versions other keys than
                                                             the caller's put (a member rebound
                                                             by vote, restored)
    GET  /exchange/v1/events         Server-Sent Events (events.py)
    GET  /exchange/v1/health         mTLS only: who and at what height
    GET  /exchange/v1/bootstrap      the one call without a client certificate: what a
                                     hospital joining from afar needs (bootstrap.py)

Bodies and answers are JSON; resource bytes and salts travel base64-encoded so that the bytes
the commitment was made on arrive unchanged.

What one member can cost another (every member holds a valid certificate and keys, so a
misbehaving or compromised one must not be able to stall a custodian):

- a body is refused with 413 past its endpoint's limit (`QUERY_BODY_LIMIT` for the questions,
  `DELIVERY_BODY_LIMIT` for deliveries), on its Content-Length or, without one, as soon as the
  chunks read exceed it: a body is never read whole before its size is known to be acceptable;
- the bodies being read or served are held in memory, and what they may hold is bounded:
  at most `BODY_BUDGET` bytes over all peers, and `PER_PEER_BODY_BUDGET` (one delivery and a
  full set of questions) for one hospital; a body that would pass either is refused at once,
  429 for the peer's own budget, 503 for the total (both with Retry-After), before it is read
  (on its Content-Length) or as soon as its chunks pass it. Without them, 8 deliveries of
  32 MB in flight per peer held 256 MB per misbehaving member;
- at most `PER_PEER_REQUESTS` requests of one hospital (the one its client certificate names)
  are in the gateway's workers at a time; more are answered 429 at once, so one hospital can
  never hold all the workers and starve the others;
- at most `PER_PEER_STREAMS` event streams of one hospital are open at a time (429 past it);
- the `height` a requester says it has seen is waited for only if it is at most `MAX_AHEAD`
  blocks beyond this replica, and for at most `catch_up_timeout` seconds; a height further
  ahead is answered 503 at once (a replica that far behind cannot serve consistently anyway).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from nacl.public import PublicKey, SealedBox
from starlette.concurrency import run_in_threadpool

from medledger.contracts import queries, records
from medledger.contracts.authorize import Decision
from medledger.contracts.categories import CATEGORIES
from medledger.contracts.common import is_pid
from medledger.contracts.identity import Actor
from medledger.contracts.records import disclosed
from medledger.contracts.study_query import PatientFacts
from medledger.exchange.policy import Policy, record_meta
from medledger.exchange.signing import EvidenceStore, RequestRefused, SignedRequest
from medledger.ledger.store import StateView
from medledger.node import decisions
from medledger.node.audit import JournalUnavailable
from medledger.node.custody import (
    MAX_ITEMS,
    CustodyRefused,
    CustodyStore,
    Item,
    check_item_id,
    drop_receipt_message,
)
from medledger.node.indexing import CustodianKeys, MetadataError, category_keys, epoch_of, open_meta
from medledger.node.study_partials import BODY_LIMIT as PARTIALS_BODY_LIMIT
from medledger.node.study_partials import (
    Inbox,
    PartialsRefused,
    Unread,
    not_kept,
    parse_facts,
)
from medledger.node.study_partials import check as check_partials
from medledger.node.wallet import TxRejected
from medledger.vault import PatientErased, RecordNotFound, UnknownPatient, Vault
from medledger.vault.replication import key_item_id

if TYPE_CHECKING:
    from medledger.node import Node

log = logging.getLogger(__name__)

PREFIX = "/exchange/v1"
PURPOSES = ("treatment", "emergency", "research")
MAX_RIDS = 500
#: Largest body of a question (index, records, metadata-key): 500 rids fit in a tenth of it.
QUERY_BODY_LIMIT = 256 * 1024
#: Largest referral delivery (resources base64-encoded): about a 20 MB ingestion's worth.
DELIVERY_BODY_LIMIT = 32 * 1024 * 1024
#: Requests one hospital may have in the gateway's workers at once (the pool has 40 threads).
PER_PEER_REQUESTS = 8
#: Bytes of request bodies held in memory at once, over all peers.
BODY_BUDGET = 64 * 1024 * 1024
#: ... and for one peer: one delivery and its questions (not eight deliveries).
PER_PEER_BODY_BUDGET = DELIVERY_BODY_LIMIT + PER_PEER_REQUESTS * QUERY_BODY_LIMIT
#: Largest custody-put body (base64 blobs) and the blob bytes one custody-get answer carries.
CUSTODY_BODY_LIMIT = 24 * 1024 * 1024
CUSTODY_ANSWER_BYTES = 24 * 1024 * 1024
#: How often the running node purges the trash past custody_grace_days (seconds).
TRASH_PURGE_EVERY_S = 600.0
#: Event streams one hospital may hold open at once (a consumer follows one).
PER_PEER_STREAMS = 4
#: How far beyond this replica's height a requester's `height` may be and still be waited for.
MAX_AHEAD = 5


@dataclass(frozen=True)
class Caller:
    """Who is asking: the verified signed request and the actor its key is on the chain."""

    request: SignedRequest
    actor: Actor

    @property
    def label(self) -> str:
        """The access entry's `actor`: "practitioner:<org>/<id>" or "org:<org>"."""
        if self.actor.practitioner is None:
            return f"org:{self.actor.org}"
        return f"practitioner:{self.actor.org}/{self.actor.practitioner}"


@dataclass
class Timing:
    """Where a request's time went; sent back in a Server-Timing header (the bench uses it)."""

    start: float = field(default_factory=time.perf_counter)
    commit: float = 0.0

    def header(self) -> str:
        total = (time.perf_counter() - self.start) * 1000
        return f"commit;dur={self.commit * 1000:.2f}, total;dur={total:.2f}"


class Refused(Exception):
    """An answer other than 200, with the reason the caller is told."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise Refused(400, f"{what}: base64 text expected")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise Refused(400, f"{what}: not base64") from None


DeliveryHandler = Callable[[Caller, dict[str, Any]], dict[str, Any]]


class PeerSlots:
    """At most `limit` requests per hospital at a time: one member cannot hold every worker.

    Keyed by the hospital the TLS client certificate names (checked by the handshake, before
    any byte of the request is read), so a member cannot spread its requests over other names.
    """

    def __init__(self, limit: int = PER_PEER_REQUESTS) -> None:
        self.limit = limit
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, peer: str) -> bool:
        """Take a slot for `peer`; False (take nothing) when it already has `limit`."""
        with self._lock:
            busy = self._busy.get(peer, 0)
            if busy >= self.limit:
                return False
            self._busy[peer] = busy + 1
            return True

    def release(self, peer: str) -> None:
        with self._lock:
            busy = self._busy.get(peer, 0) - 1
            if busy > 0:
                self._busy[peer] = busy
            else:
                self._busy.pop(peer, None)

    def busy(self, peer: str) -> int:
        """How many of `peer`'s requests are being served now."""
        with self._lock:
            return self._busy.get(peer, 0)


class BodyBudget:
    """The bytes of request bodies held in memory: at most `total` over all peers and
    `per_peer` for one hospital (named by its client certificate, as for `PeerSlots`)."""

    def __init__(self, total: int = BODY_BUDGET, per_peer: int = PER_PEER_BODY_BUDGET) -> None:
        self.total = total
        self.per_peer = per_peer
        self._held: dict[str, int] = {}
        self._sum = 0
        self._lock = threading.Lock()

    def take(self, peer: str, n: int) -> None:
        """Hold `n` more bytes for `peer`, or refuse (429: its own budget; 503: the total)."""
        with self._lock:
            mine = self._held.get(peer, 0)
            if mine + n > self.per_peer:
                raise Refused(
                    429,
                    f"{peer} has {mine} bytes of bodies in progress here; "
                    f"{n} more would pass its budget of {self.per_peer}",
                )
            if self._sum + n > self.total:
                raise Refused(
                    503, f"this gateway holds {self._sum} bytes of bodies (budget {self.total})"
                )
            self._held[peer] = mine + n
            self._sum += n

    def give(self, peer: str, n: int) -> None:
        with self._lock:
            left = self._held.get(peer, 0) - n
            if left > 0:
                self._held[peer] = left
            else:
                self._held.pop(peer, None)
            self._sum = max(0, self._sum - n)

    def held(self, peer: str | None = None) -> int:
        """Bytes held now, for `peer` or over all."""
        with self._lock:
            return self._sum if peer is None else self._held.get(peer, 0)


async def read_body(
    declared: str | None,
    chunks: AsyncIterator[bytes],
    limit: int,
    take: Callable[[int], None] | None = None,
) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed `limit` bytes.

    `declared` is the Content-Length header (refused at once when too large); without one
    (chunked transfer), chunks are read only until the total passes the limit. `take(n)`
    reserves memory for n bytes before they are read (the declared length at once, else
    each chunk as it comes) and raises `Refused` when the budget has no room.
    """
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refused(400, "Content-Length: a number of bytes expected")
        if int(declared) > limit:
            raise Refused(413, f"body: {int(declared)} bytes, more than the limit of {limit}")
        if take is not None:
            take(int(declared))
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body: more than the limit of {limit} bytes")
        if take is not None and declared is None:
            take(len(chunk))
        parts.append(chunk)
    return b"".join(parts)


class Gateway:
    """The custodian side, independent of HTTP (the FastAPI app below is a thin shell)."""

    def __init__(
        self,
        node: Node,
        vault: Vault,
        evidence: EvidenceStore,
        policy: Policy,
        on_delivery: DeliveryHandler | None = None,
        commit_timeout: float = 30.0,
        catch_up_timeout: float = 5.0,
        per_peer: int = PER_PEER_REQUESTS,
        query_body_limit: int = QUERY_BODY_LIMIT,
        delivery_body_limit: int = DELIVERY_BODY_LIMIT,
        body_budget: BodyBudget | None = None,
        custody: CustodyStore | None = None,
        partials: Inbox | None = None,
    ) -> None:
        self.node = node
        self.vault = vault
        self.evidence = evidence
        self.policy = policy
        self.org = node.config.org
        self.on_delivery = on_delivery
        self.commit_timeout = commit_timeout
        self.catch_up_timeout = catch_up_timeout
        self.peers = PeerSlots(per_peer)
        self.streams = PeerSlots(PER_PEER_STREAMS)
        self.query_body_limit = query_body_limit
        self.delivery_body_limit = delivery_body_limit
        self.bodies = body_budget or BodyBudget()
        self.custody = custody
        self.partials = partials  # study-query partials received here (node/study_partials.py)
        #: (query id, study) -> the committed state as the query's chain reads ahead give it,
        #: or None (research.answer.Answerer.check_view, set by research.agent.attach)
        self.partials_view: Callable[[str, str], StateView | None] | None = None
        self._trash_purged = 0.0

    # -- who is asking -----------------------------------------------------------------
    def authenticate(
        self,
        method: str,
        target: str,
        body: bytes,
        headers: dict[str, str],
        peer: str | None,
        keep_body: bool = True,
    ) -> Caller:
        """Signature, time and nonce (evidence kept), then the signer's identity on the chain."""
        if peer is None:
            raise Refused(403, "no client certificate with a member's TLS key")
        try:
            signed = self.evidence.verify(
                method=method,
                target=target,
                body=body,
                headers=headers,
                audience=self.org,
                peer=peer,
                keep_body=keep_body,
            )
        except RequestRefused as exc:
            raise Refused(exc.status, exc.reason) from None
        actor = self.policy.actor(signed.key)
        if actor is None or not actor.active:
            self.evidence.set_outcome(signed.evidence_id, "refused", "unknown or revoked key")
            raise Refused(401, "the signing key is not an active hospital or practitioner key")
        if actor.org != peer:
            reason = f"signed by a key of {actor.org} over a connection certified for {peer}"
            self.evidence.set_outcome(signed.evidence_id, "refused", reason)
            raise Refused(403, reason)
        return Caller(signed, actor)

    # -- the audit trail ---------------------------------------------------------------
    def _audit(
        self, caller: Caller, pid: str, action: str, purpose: str, rids: list[str], d: Decision
    ) -> list[dict[str, Any]]:
        """The entry recording a decision on the caller's signed request (decisions.audit).
        The chain gets the reason's code; the wording stays in the evidence table."""
        request = caller.request.request_fields()  # every replica verifies it
        access = decisions.Access(caller.label, caller.actor.org, pid, action, purpose, request)
        return decisions.audit(access, d, rids)

    def _commit(self, entries: list[dict[str, Any]], timing: Timing) -> None:
        """Write the access entries and wait until the network has committed them.

        The whole wait counts as `commit` in the timing: the journal's fsync, its window and
        the block interval, which the latency figures exclude.
        """
        signed: set[bytes] = set()  # a request's body travels with its first entry only
        for entry in entries:
            request = entry.get("request")
            if request is not None:
                if request["signature"] in signed:
                    entry["request"] = {k: v for k, v in request.items() if k != "body"}
                signed.add(request["signature"])
        started = time.perf_counter()
        try:
            # Journaled durably, then committed in the journal's next shared tx (node/audit.py).
            self.node.audit.log(entries, wait=True, timeout=self.commit_timeout)
        except (TxRejected, TimeoutError, JournalUnavailable) as exc:
            raise Refused(503, f"the access could not be recorded on the ledger: {exc}") from None
        finally:
            timing.commit += time.perf_counter() - started

    def _grouped(
        self,
        caller: Caller,
        pid: str,
        action: str,
        purpose: str,
        decided: list[tuple[str, Decision]],
    ) -> list[dict[str, Any]]:
        """One access entry per basis granted and per reason denied (one tx for all)."""
        groups: dict[tuple[bool, str], list[str]] = {}
        first: dict[tuple[bool, str], Decision] = {}
        for rid, d in decided:
            k = (d.allowed, d.basis if d.allowed else d.reason)
            groups.setdefault(k, []).append(rid)
            first.setdefault(k, d)
        return [
            entry
            for k, rids in groups.items()
            for entry in self._audit(caller, pid, action, purpose, rids, first[k])
        ]

    # -- reading this custodian's index --------------------------------------------------
    def _entries(self, pid: str, rids: list[str] | None = None) -> list[dict[str, Any]]:
        """This custodian's live index entries for the patient (from its own replica)."""
        with self.policy.state() as state:
            if rids is None:
                from medledger.contracts.records import entries_of

                found = entries_of(state, pid, self.org)
            else:
                found = []
                for rid in rids:
                    entry = records.entry(state, rid)
                    if entry is not None and entry["pid"] == pid and entry["custodian"] == self.org:
                        found.append(entry)
        return [e for e in found if not e.get("shredded")]

    def _decide_all(
        self,
        caller: Caller,
        pid: str,
        entries: list[dict[str, Any]],
        purpose: str,
        study: str | None = None,
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None, Decision]]:
        """(entry, opened metadata, decision) for each entry, all on one view of the state."""
        try:
            keys = CustodianKeys(self.vault.metadata_key(pid))
        except PatientErased:
            raise Refused(410, "this patient's data was erased here") from None
        except UnknownPatient:
            raise Refused(404, "no records of this patient here") from None
        out: list[tuple[dict[str, Any], dict[str, Any] | None, Decision]] = []
        now = int(time.time() * 1000)
        with self.policy.state() as state:
            for entry in entries:
                try:
                    meta = open_meta(keys, entry["rid"], entry["version"], entry["meta_ct"])
                except MetadataError:
                    out.append((entry, None, Decision(False, "", "record metadata unreadable")))
                    continue
                about = record_meta(entry, meta)
                if study is not None:
                    about["study"] = study
                d = self.policy.decide(caller.actor, pid, about, purpose, now, state=state)
                if d.allowed and meta.get("type") == "Bundle":  # a document: every entry too
                    d = self._whole_document(caller, pid, entry, about, purpose, now, state) or d
                out.append((entry, meta, d))
        return out

    def _whole_document(
        self,
        caller: Caller,
        pid: str,
        entry: dict[str, Any],
        about: dict[str, Any],
        purpose: str,
        now: int,
        state: Any,
    ) -> Decision | None:
        """The refusal of a document Bundle to a caller not allowed one of its entries'
        categories (it is served whole or not at all); None when allowed every one."""
        from medledger.interop.metadata import document_categories

        try:
            document = orjson.loads(self.vault.get(entry["rid"], entry["version"]))
        except (RecordNotFound, PatientErased):
            return None  # answered as missing when served
        for category in document_categories(document):
            d = self.policy.decide(
                caller.actor, pid, about | {"category": category}, purpose, now, state=state
            )
            if not d.allowed:
                return Decision(False, "", f"the document holds {category} records: {d.reason}")
        return None

    def _catch_up(self, height: int) -> None:
        """Wait until this replica has the block the requester has seen (or answer 503).

        Each hospital has its own replica and they commit a block at slightly different
        moments: a requester that saw a record in block h may ask before the custodian's own
        replica has committed h. Reading at least at the requester's height makes the
        custodian's answer consistent with what the requester saw.

        Only a height that can arrive soon is waited for: one more than `MAX_AHEAD` blocks
        beyond this replica is refused at once, since waiting holds a worker and any member
        may name any height (10**12 held a worker for the whole timeout).
        """
        mine = self.node.engine.height()
        if height <= mine:
            return
        if height - mine > MAX_AHEAD:
            raise Refused(
                503,
                f"height: block {height} is {height - mine} blocks ahead of this replica "
                f"(at {mine}; at most {MAX_AHEAD} are waited for)",
            )
        deadline = time.monotonic() + self.catch_up_timeout
        while self.node.engine.height() < height:
            if time.monotonic() > deadline:
                raise Refused(503, f"this replica has not reached block {height} yet")
            time.sleep(0.005)

    def _args(self, body: bytes, *, rids: bool = False) -> tuple[str, str, list[str], str | None]:
        """(pid, purpose, rids, study) from a JSON body, or a 400."""
        args = _json_object(body)
        pid, purpose = args.get("pid"), args.get("purpose", "treatment")
        study = args.get("study")
        if not is_pid(pid):
            raise Refused(400, "pid: 64 hex characters expected")
        if purpose not in PURPOSES:
            raise Refused(400, f"purpose: one of {', '.join(PURPOSES)}")
        if study is not None and not isinstance(study, str):
            raise Refused(400, "study: a study id expected")
        height = args.get("height", 0)
        if not isinstance(height, int) or isinstance(height, bool) or height < 0:
            raise Refused(400, "height: a block height expected")
        self._catch_up(height)
        wanted: list[str] = []
        if rids:
            wanted = args.get("rids")  # type: ignore[assignment]
            if (
                not isinstance(wanted, list)
                or not 0 < len(wanted) <= MAX_RIDS
                or not all(isinstance(r, str) for r in wanted)
            ):
                raise Refused(400, f"rids: 1..{MAX_RIDS} record ids expected")
        return pid, purpose, wanted, study

    # -- endpoints -----------------------------------------------------------------------
    def index(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        pid, purpose, _, study = self._args(body)
        entries = self._entries(pid)
        if not entries:
            return {"custodian": self.org, "pid": pid, "entries": []}
        decided = self._decide_all(caller, pid, entries, purpose, study)
        allowed = [(e, m, d) for e, m, d in decided if d.allowed]
        if allowed:
            log_entries = self._grouped(
                caller, pid, "search", purpose, [(e["rid"], d) for e, _, d in allowed]
            )
        else:
            d = decided[0][2]
            log_entries = self._audit(caller, pid, "search", purpose, [], d)
        self._commit(log_entries, timing)
        self.evidence.set_outcome(caller.request.evidence_id, "served" if allowed else "denied")
        if not allowed:
            raise Refused(403, decided[0][2].reason or "denied")
        return {
            "custodian": self.org,
            "pid": pid,
            "entries": [
                {
                    "rid": e["rid"],
                    "version": e["version"],
                    "commitment": b64(e["commitment"]),
                    "meta": m,
                    "basis": d.basis,
                    "time": e["time"],
                }
                for e, m, d in allowed
            ],
        }

    def records(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        pid, purpose, rids, study = self._args(body, rids=True)
        entries = self._entries(pid, rids)
        known = {e["rid"] for e in entries}
        missing = [r for r in rids if r not in known]
        decided = self._decide_all(caller, pid, entries, purpose, study) if entries else []
        allowed = [(e, d) for e, _, d in decided if d.allowed]
        denied = [(e, d) for e, _, d in decided if not d.allowed]
        # Records whose disclosure to the caller's hospital was logged in their own
        # registration tx are already on the chain: serve them without another block.
        with self.policy.state() as state:
            covered = {
                e["rid"]
                for e, _, d in decided
                if d.allowed and disclosed(state, caller.actor.org, e["rid"])
            }
        to_log = [(e["rid"], d) for e, _, d in decided if e["rid"] not in covered]
        if to_log:
            self._commit(self._grouped(caller, pid, "read", purpose, to_log), timing)
        served = []
        for entry, d in allowed:
            rid, version = entry["rid"], entry["version"]
            try:
                data = self.vault.get(rid, version)
                info = self.vault.info(rid, version)
                salt = self.vault.salt(pid, rid, version)
            except (RecordNotFound, PatientErased):
                missing.append(rid)
                continue
            served.append(
                {
                    "rid": rid,
                    "version": version,
                    "resource_type": info.resource_type,
                    "resource": b64(data),
                    "salt": b64(salt),
                    "basis": d.basis,
                }
            )
        outcome = "served" if served else "denied"
        self.evidence.set_outcome(caller.request.evidence_id, outcome)
        if not served and denied:
            raise Refused(403, denied[0][1].reason or "denied")
        return {
            "custodian": self.org,
            "pid": pid,
            "records": served,
            "denied": [{"rid": e["rid"], "reason": d.reason} for e, d in denied],
            "missing": missing,
        }

    def metadata_key(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """The keys of the categories the caller may see, sealed to the caller's hospital.

        A category's key of an epoch opens the metadata of every entry of that category of the
        patient here sealed in that epoch, including those registered later in the same epoch:
        it is released only for a category `authorize` allows the caller now (asked per
        category, on this replica, as for any record of it; the record type is not known, so a
        policy that forbids one type of record does not withhold its category's key, only the
        records). A consent for labs gets the labs keys, a study its categories, an emergency
        every category while it lasts. The epochs are those of the entries here and the
        patient's current one (`authorize.meta_epoch`): once an entitlement ends, the epoch
        moves on and a hospital no longer granted gets none of the new epoch's keys. Each
        record itself is still decided one by one when fetched.
        """
        pid, purpose, _, study = self._args(body)
        entries = self._entries(pid)
        if not entries:
            raise Refused(404, "no records of this patient here yet")
        try:
            meta_key = self.vault.metadata_key(pid)
        except PatientErased:
            raise Refused(410, "this patient's data was erased here") from None
        except UnknownPatient:
            raise Refused(404, "no records of this patient here") from None
        from medledger.contracts.authorize import meta_epoch  # late, as policy.load_authorize

        decided: list[tuple[str, Decision]] = []
        now = int(time.time() * 1000)
        with self.policy.state() as state:
            epochs = {epoch_of(e["meta_ct"]) for e in entries} | {meta_epoch(state, pid, now)}
            for category in CATEGORIES:
                about: dict[str, Any] = {"custodian": self.org, "category": category, "type": ""}
                if study is not None:
                    about["study"] = study
                d = self.policy.decide(caller.actor, pid, about, purpose, now, state=state)
                decided.append((category, d))
        granted = [(c, d) for c, d in decided if d.allowed]
        decision = granted[0][1] if granted else decided[0][1]
        bases = {d.basis: d for _, d in granted} or {"": decision}  # one entry per basis
        self._commit(
            [e for d in bases.values() for e in self._audit(caller, pid, "search", purpose, [], d)],
            timing,
        )
        if not granted:
            self.evidence.set_outcome(caller.request.evidence_id, "denied", decision.reason)
            raise Refused(403, decision.reason or "denied")
        categories = [c for c, _ in granted]
        keys = category_keys(meta_key, categories, sorted(epochs))
        box_key = self._box_key(caller.actor.org)
        sealed = SealedBox(PublicKey(box_key)).encrypt(cbor2.dumps(keys, canonical=True))
        self.evidence.set_outcome(caller.request.evidence_id, "served")
        return {
            "custodian": self.org,
            "pid": pid,
            "sealed": b64(sealed),
            "categories": categories,
            "epochs": sorted(epochs),
            "basis": decision.basis,
        }

    def _box_key(self, org: str) -> bytes:
        for member in queries.members(self.node.engine):
            if member["org"] == org and member.get("box_key"):
                return bytes(member["box_key"])
        raise Refused(409, f"{org} has no X25519 box key on the chain")

    def _keep_escrow(self, caller: Caller, ids: list[str]) -> None:
        """Custody never overwrites nor drops a share of the caller's current key escrow."""
        from medledger.exchange import escrow

        try:
            escrow.guard_custody(self.node, caller.actor.org, ids)
        except escrow.ShareRefused as exc:
            self.evidence.set_outcome(caller.request.evidence_id, "refused", exc.reason)
            raise Refused(exc.status, exc.reason) from None

    def share_release(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """The caller's key share held here, once the members voted its rebinding (see
        exchange/escrow.py): sealed to its box key on the chain, with the proposal that
        allowed it. Only the hospital's own key asks."""
        from medledger.exchange import escrow

        if caller.actor.practitioner is not None:
            raise Refused(403, "share-release: only the hospital's own key may ask")
        if self.custody is None:
            raise Refused(503, "this node keeps no custody store")
        epoch = _json_object(body).get("epoch")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            raise Refused(400, "epoch: an integer expected")
        try:
            answer = escrow.release(self.node, self.custody, caller.actor.org, epoch)
        except escrow.ShareRefused as exc:
            self.evidence.set_outcome(caller.request.evidence_id, "refused", exc.reason)
            raise Refused(exc.status, exc.reason) from None
        self.evidence.set_outcome(caller.request.evidence_id, "served")
        log.warning(
            "%s: released its key share to %s (%s)", self.org, caller.actor.org, answer["note"]
        )
        return answer

    def pseudonym_key(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """The consortium's pseudonym key, sealed to the calling member's box key."""
        from medledger.exchange.bootstrap import NotAMember, sealed_pseudonym_key

        _json_object(body)
        try:
            sealed = sealed_pseudonym_key(self.node, caller.actor.org)
        except NotAMember as exc:
            self.evidence.set_outcome(caller.request.evidence_id, "refused", str(exc))
            raise Refused(403, str(exc)) from None
        self.evidence.set_outcome(caller.request.evidence_id, "served")
        return {"org": caller.actor.org, "sealed": b64(sealed)}

    def delivery(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        if self.on_delivery is None:
            raise Refused(503, "this node does not receive deliveries")
        result = self.on_delivery(caller, _json_object(body))
        self.evidence.set_outcome(caller.request.evidence_id, "accepted")
        return result

    def study_partials(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """A co-custodian's partial facts for a running study query (node/study_partials.py):
        from an answerer's hospital key, each pid checked on this replica, then kept."""
        if self.partials is None:
            raise Refused(503, "this node answers no study queries")
        if caller.actor.practitioner is not None:
            raise Refused(403, "study-partials: only the hospital's own key sends them")
        args = _json_object(body)
        height = args.get("height", 0)
        if not isinstance(height, int) or isinstance(height, bool) or height < 0:
            raise Refused(400, "height: a block height expected")
        self._catch_up(height)
        query_id = args.get("query")
        record = (
            queries.study_query(self.node.engine, query_id) if isinstance(query_id, str) else None
        )
        checking = time.perf_counter()
        parsed = parse_facts(args)  # outside the view: it holds this node's commits back
        now_ms = int(time.time() * 1000)
        try:
            checked_ahead: tuple[str, dict[str, PatientFacts], list[str]] | None = None
            ahead = None
            if self.partials_view is not None and record is not None:
                ahead = self.partials_view(str(record.get("id")), str(record.get("study")))
            if ahead is not None:  # the query's reads ahead, unchanged: no lock, no scan
                with contextlib.suppress(Unread):  # a read they did not make: the chain's
                    checked_ahead = check_partials(
                        ahead, record, caller.actor.org, self.org, args, now_ms, parsed
                    )
            checked_on_ahead = checked_ahead is not None
            if checked_ahead is None:
                with self.policy.state() as state:
                    checked_ahead = check_partials(
                        state, record, caller.actor.org, self.org, args, now_ms, parsed
                    )
            query_id, facts, dropped = checked_ahead
        except PartialsRefused as exc:
            self.evidence.set_outcome(caller.request.evidence_id, "refused", exc.reason)
            raise Refused(exc.status, exc.reason) from None
        checked = time.perf_counter()
        self.partials.put(query_id, caller.actor.org, facts, dropped)
        self.evidence.set_outcome(caller.request.evidence_id, "accepted")
        log.info(
            "%s took partials of %s from %s: %d kept, %d dropped%s; check %.3fs, kept %.3fs, "
            "in %.3fs",
            self.org,
            query_id,
            caller.actor.org,
            len(facts),
            len(dropped),
            " (checked on the reads ahead)" if checked_on_ahead else "",
            checked - checking,
            time.perf_counter() - checked,
            time.perf_counter() - timing.start,
        )
        # The pids not kept go back to the sender, which counts them nowhere (its own pids).
        return {"query": query_id, "accepted": len(facts), "dropped": not_kept(args, facts)}

    # -- custody of other members' replicas (node/custody.py) -------------------------------
    def _custodian_store(self, caller: Caller) -> CustodyStore:
        """The store, for a caller signing with its hospital key (the items are the
        hospital's, never a practitioner's); its org is the owner of every item touched.
        The trash past the consortium's custody_grace_days is purged here, at most every
        TRASH_PURGE_EVERY_S (the node's wall clock: a node-local store, not the chain's)."""
        if self.custody is None:
            raise Refused(503, "this node keeps no custody store")
        if caller.actor.practitioner is not None:
            raise Refused(403, "custody: only the hospital's own key may store or read its items")
        self.evidence.set_outcome(caller.request.evidence_id, "accepted")
        now = time.time()
        if now - self._trash_purged >= TRASH_PURGE_EVERY_S:
            self._trash_purged = now
            self.purge_expired_trash(now)
        return self.custody

    def purge_expired_trash(self, now: float) -> int:
        """Destroy what every member's trash holds since before `now` − custody_grace_days."""
        if self.custody is None:
            return 0
        grace = int(queries.governance_params(self.node.engine)["custody_grace_days"])
        purged = self.custody.purge_expired(now - grace * 86_400)
        if purged:
            log.info("%s: purged %d trashed custody item(s) past %d days", self.org, purged, grace)
        return purged

    def custody_put(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        store = self._custodian_store(caller)
        raw = _json_object(body).get("items")
        if not isinstance(raw, list):
            raise Refused(400, "items: a list expected")
        items: list[Item] = []
        for i, it in enumerate(raw):
            if not isinstance(it, dict):
                raise Refused(400, f"items[{i}]: an object expected")
            version = it.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise Refused(400, f"items[{i}].version: an integer expected")
            try:
                digest = bytes.fromhex(str(it.get("sha256", "")))
            except ValueError:
                raise Refused(400, f"items[{i}].sha256: hex expected") from None
            blob = unb64(it.get("blob"), f"items[{i}].blob")
            items.append(Item(str(it.get("id", "")), version, digest, blob))
        self._keep_escrow(caller, [it.id for it in items])
        quota = self.custody_quota()
        try:
            usage = store.put(caller.actor.org, items, quota, by_key=caller.request.key)
        except CustodyRefused as exc:
            raise Refused(exc.status, exc.reason) from None
        return {"stored": len(items), "usage": usage.bytes, "quota": quota}

    def custody_drop(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """To the trash, never destroyed at once: the caller's key may be a thief's."""
        store = self._custodian_store(caller)
        ids = _ids(_json_object(body))
        self._keep_escrow(caller, ids)
        try:
            dropped, absent = store.drop(caller.actor.org, ids)
        except CustodyRefused as exc:
            raise Refused(exc.status, exc.reason) from None
        # Signed by this hospital's key: the owner can show the chain (and anyone) that this
        # holder said it dropped them (an absent item is gone as well).
        message = drop_receipt_message(self.org, caller.actor.org, ids)
        return {
            "dropped": dropped,
            "absent": absent,
            "holder": self.org,
            "receipt": b64(self.node.org_key.sign(message)),
        }

    def custody_purge(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """Destroy, live and trashed, the item holding the wrapped key of a patient that the
        chain's committed state says the caller shredded (`records.shredded`): the id is
        computed here from the pid and its proof (vault/replication.py's key_item_id), so a
        key, stolen or not, can purge nothing but an erased patient's key this way."""
        store = self._custodian_store(caller)
        args = _json_object(body)
        pid = args.get("pid")
        if not isinstance(pid, str) or not is_pid(pid):
            raise Refused(400, "pid: a patient pseudonym expected")
        try:
            proof = bytes.fromhex(str(args.get("proof", "")))
        except ValueError:
            raise Refused(400, "proof: hex expected") from None
        if len(proof) != 32:
            raise Refused(400, "proof: 32 bytes expected")
        owner = caller.actor.org
        if queries.shred_in_force(self.node.engine, owner, pid) is None:
            reason = (
                f"pid: the chain holds no records.shredded statement of {owner} for it (or "
                "the patient came back since: records registered after it)"
            )
            self.evidence.set_outcome(caller.request.evidence_id, "refused", reason)
            raise Refused(409, reason)
        item_id = key_item_id(owner, pid, proof)
        purged = store.purge(owner, [item_id])
        message = drop_receipt_message(self.org, owner, [item_id])
        return {
            "purged": purged,
            "id": item_id,
            "holder": self.org,
            "receipt": b64(self.node.org_key.sign(message)),
        }

    def custody_empty_trash(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        """Destroy the caller's trashed versions that another key put: once a member rebound
        by vote restored its vault, what its lost key sent (a thief's garbage too) need not
        fill its quota for custody_grace_days. Only a key bound by a rebind_member vote may:
        the lost key itself, a thief's, cannot, nor a key the member rotated by itself."""
        store = self._custodian_store(caller)
        _json_object(body)
        owner, key = caller.actor.org, caller.request.key
        # Only a key that a rebinding vote gave the member: a key it rotated by itself may be
        # the thief's, and would empty what the member's older keys put.
        if not any(
            p.get("action") == "rebind_member"
            and p["args"].get("org") == owner
            and bytes(p["args"].get("key", b"")) == key
            for p in queries.proposals(self.node.engine, "executed")
        ):
            reason = f"custody-empty-trash: {owner}'s key was not bound by a rebind_member vote"
            self.evidence.set_outcome(caller.request.evidence_id, "refused", reason)
            raise Refused(403, reason)
        return {"purged": store.empty_trash(owner, key)}

    def custody_list(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        store = self._custodian_store(caller)
        args = _json_object(body)
        trash = args.get("trash", False)
        if not isinstance(trash, bool):
            raise Refused(400, "trash: true or false expected")
        after = args.get("after", 0 if trash else "")
        if trash and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
            raise Refused(400, "after: a trash number (0 or more) expected")
        if not trash and (not isinstance(after, str) or len(after) > 128):
            raise Refused(400, 'after: an item id or "" expected')
        limit = args.get("limit", MAX_ITEMS)
        if not isinstance(limit, int) or not 0 < limit <= MAX_ITEMS:
            raise Refused(400, f"limit: an integer from 1 to {MAX_ITEMS} expected")
        owner = caller.actor.org
        found = (
            store.trash_listing(owner, after, limit)
            if trash
            else store.listing(owner, after, limit)
        )
        usage = store.usage(owner)
        return {
            "items": [
                {"id": i.id, "version": i.version, "sha256": i.sha256.hex(), "size": i.size}
                | ({"trash": i.trash} if trash else {})
                for i in found
            ],
            "more": len(found) == limit,
            "usage": usage.bytes,
            "count": usage.items,
            "trash_usage": usage.trash_bytes,
            "trash_count": usage.trash_items,
            "quota": self.custody_quota(),
        }

    def custody_get(self, caller: Caller, body: bytes, timing: Timing) -> dict[str, Any]:
        store = self._custodian_store(caller)
        args = _json_object(body)
        if "trash" in args:
            numbers = args["trash"]
            if (
                not isinstance(numbers, list)
                or len(numbers) > MAX_ITEMS
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
            ):
                raise Refused(400, f"trash: a list of at most {MAX_ITEMS} trash numbers expected")
            found = store.get_trashed(caller.actor.org, numbers)
            keys: list[Any] = list(numbers)
            held: list[tuple[Any, Item]] = list(found.items())
        else:
            keys = _ids(args)
            held = [(it.id, it) for it in store.get(caller.actor.org, keys)]
        out: list[dict[str, Any]] = []
        later: list[Any] = []
        size = 0
        for key, item in held:
            if out and size + len(item.blob) > CUSTODY_ANSWER_BYTES:
                later.append(key)  # asked again by the owner in its next call
                continue
            size += len(item.blob)
            out.append(
                {
                    "id": item.id,
                    "version": item.version,
                    "sha256": item.sha256.hex(),
                    "blob": b64(item.blob),
                }
                | ({"trash": key} if isinstance(key, int) else {})
            )
        served = {o.get("trash", o["id"]) for o in out} | set(later)
        return {"items": out, "later": later, "missing": [k for k in keys if k not in served]}

    def custody_quota(self) -> int:
        """Bytes each member may keep here: the consortium parameter `custody_quota_mb`."""
        return int(queries.governance_params(self.node.engine)["custody_quota_mb"]) * 1024 * 1024


def _ids(args: dict[str, Any]) -> list[str]:
    ids = args.get("ids")
    if not isinstance(ids, list):
        raise Refused(400, "ids: a list expected")
    if len(ids) > MAX_ITEMS:
        raise Refused(413, f"ids: {len(ids)} in one call, at most {MAX_ITEMS}")
    try:
        return [check_item_id(v, f"ids[{i}]") for i, v in enumerate(ids)]
    except CustodyRefused as exc:
        raise Refused(exc.status, exc.reason) from None


# --------------------------------------------------------------------------- HTTP shell


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status, headers=headers, media_type="application/json")


def peer_of(request: Request) -> str | None:
    """The hospital the client certificate names (set per connection by server.py)."""
    return getattr(request.state, "peer_org", None)


def create_app(gateway: Gateway, events: Any | None = None) -> FastAPI:
    """The FastAPI app a hospital's gateway serves (docs off: it is machine to machine)."""
    app = FastAPI(
        title=f"medledger gateway — {gateway.org}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # endpoint -> (Gateway method, body kept as evidence, body size limit)
    handlers: dict[str, tuple[str, bool, int]] = {
        "index": ("index", True, gateway.query_body_limit),
        "records": ("records", True, gateway.query_body_limit),
        "metadata-key": ("metadata_key", True, gateway.query_body_limit),
        "pseudonym-key": ("pseudonym_key", True, gateway.query_body_limit),
        # holds clinical data: not kept as evidence
        "deliveries": ("delivery", False, gateway.delivery_body_limit),
        "share-release": ("share_release", True, gateway.query_body_limit),
        # derived health facts: not kept as evidence (the signed request is)
        "study-partials": ("study_partials", False, PARTIALS_BODY_LIMIT),
        # sealed blobs the caller stores here: kept apart, not as evidence
        "custody-put": ("custody_put", False, CUSTODY_BODY_LIMIT),
        "custody-drop": ("custody_drop", True, gateway.query_body_limit),
        "custody-purge": ("custody_purge", True, gateway.query_body_limit),
        "custody-empty-trash": ("custody_empty_trash", True, gateway.query_body_limit),
        "custody-list": ("custody_list", True, gateway.query_body_limit),
        "custody-get": ("custody_get", True, gateway.query_body_limit),
    }

    def run(
        name: str, target: str, body: bytes, headers: dict[str, str], peer: str | None
    ) -> Response:
        method, keep, _ = handlers[name]
        fn: Callable[[Caller, bytes, Timing], dict[str, Any]] = getattr(gateway, method)
        timing = Timing()
        try:
            caller = gateway.authenticate("POST", target, body, headers, peer, keep_body=keep)
            result = fn(caller, body, timing)
        except Refused as exc:
            return json_response(
                {"error": exc.reason}, exc.status, {"Server-Timing": timing.header()}
            )
        except Exception as exc:  # noqa: BLE001 - answered here, not by uvicorn's traceback
            # The message and the traceback's text may quote the request (a pid, a resource):
            # the log says what failed and where in our code, never with what values.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
            kind = type(exc).__name__
            log.error("%s: %s request failed: %s at %s", gateway.org, name, kind, where)
            return json_response({"error": "internal error (logged at the custodian)"}, 500)
        return json_response(result, headers={"Server-Timing": timing.header()})

    async def endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in handlers:
            return json_response({"error": f"no endpoint {name}"}, 404)
        unavailable = await run_in_threadpool(gateway.node.health.unavailable)
        if unavailable:  # CometBFT gone or catching up: no answer from a stale replica
            return json_response({"error": unavailable}, 503, {"Retry-After": "5"})
        peer = peer_of(request)
        if peer is None:
            return json_response({"error": "no client certificate with a member's TLS key"}, 403)
        if not gateway.peers.acquire(peer):
            reason = f"{peer} has {gateway.peers.limit} requests in progress here already"
            return json_response({"error": reason}, 429, {"Retry-After": "1"})
        held, who = 0, peer

        def take(n: int) -> None:
            nonlocal held
            gateway.bodies.take(who, n)
            held += n

        try:
            declared = request.headers.get("content-length")
            try:
                body = await read_body(declared, request.stream(), handlers[name][2], take)
            except Refused as exc:
                more = {"Connection": "close"}
                if exc.status in (429, 503):
                    more["Retry-After"] = "1"
                return json_response({"error": exc.reason}, exc.status, more)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            headers = {k.lower(): v for k, v in request.headers.items()}
            return await run_in_threadpool(run, name, target, body, headers, peer)
        finally:
            gateway.bodies.give(peer, held)
            gateway.peers.release(peer)

    app.add_api_route(PREFIX + "/{name}", endpoint, methods=["POST"])

    @app.get(PREFIX + "/health")
    def health(request: Request) -> Response:
        if peer_of(request) is None:
            return json_response({"error": "no client certificate from the consortium CA"}, 403)
        return json_response(
            {"org": gateway.org, "height": gateway.node.engine.height(), "peer": peer_of(request)}
        )

    @app.get(PREFIX + "/bootstrap")
    def bootstrap(request: Request) -> Response:
        from medledger.exchange.bootstrap import bootstrap

        return json_response(bootstrap(gateway.node))

    if events is not None:
        events.mount(app, gateway)
        app.add_middleware(StreamSlots, slots=gateway.streams)
    return app


class StreamSlots:
    """ASGI middleware: at most `slots.limit` open event streams per hospital.

    A stream holds no worker while it waits, but each one polls the ledger from the thread
    pool: thousands of streams from one member would crowd the others' requests out. A
    hospital's consumer follows one stream; a few more allow for reconnections.
    """

    def __init__(self, app: Any, slots: PeerSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PREFIX + "/events":
            await self.app(scope, receive, send)
            return
        peer = (scope.get("state") or {}).get("peer_org")
        if peer is None:  # refused by the endpoint itself (no client certificate)
            await self.app(scope, receive, send)
            return
        if not self.slots.acquire(peer):
            reason = f"{peer} has {self.slots.limit} event streams open here already"
            await json_response({"error": reason}, 429, {"Retry-After": "5"})(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release(peer)


def _json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 saying what it is not."""
    try:
        args = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused(400, "body: not JSON") from None
    if not isinstance(args, dict):
        raise Refused(400, "body: a JSON object expected")
    return args
