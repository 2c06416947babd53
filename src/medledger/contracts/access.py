"""Access: the audit trail. Every read, search, create, export or denial becomes an entry.

An entry `{actor, actor_org, pid, rids, action, purpose, basis, outcome, reason, request}` is
written by the hospital whose node served (or refused) the access, naming the practitioner or
hospital that asked. Entries are shaped to map one to one onto a FHIR AuditEvent following IHE
BALP (Basic Audit Log Patterns): action -> AuditEvent.action/subtype, actor/actor_org ->
agent, custodian -> the source agent, pid -> entity (patient), rids -> entity (data),
purpose -> purposeOfEvent, outcome -> outcome, basis -> the authorization that allowed it
(consent, emergency, referral, enrolment, custodian).

Who may write what (a trail anyone could forge would prove nothing):
- The serving hospital of an entry (`custodian`) is always the signer's hospital, never a
  field of the tx; `signer` keeps which of its keys signed ("org:<org>" or
  "practitioner:<org>/<id>"). The patient's portal shows "served and signed by" it.
  From v6 an `access.log` tx is the organisation key's only (its node's audit journal).
- `actor` names someone of `actor_org`: "practitioner:<actor_org>/<id>" or "org:<actor_org>",
  or "patient:<pid>" for a patient signed in at the serving hospital (then `actor_org` is the
  signer's hospital, and the pid is the entry's own, except in a denial: another patient's
  refused attempt is evidence worth keeping).
- An entry whose `actor_org` is another hospital is a remote access: it must carry `request`,
  that hospital's signed exchange request itself (`Request`: key, time, nonce, signature,
  method, target, body hash; exchange/signing.py), and every replica checks it: the signature
  verifies over those fields with the serving hospital (the signer's) as audience; the key is
  the actor's own registered key, or its hospital's organisation key (for an `org:` actor,
  only the organisation key); the request time is within `REQUEST_WINDOW_MS` of the block
  time; and one request backs the entries of one tx only (`acc/req/`), so a request cannot be
  replayed into other entries later; the request's body (JSON, hashed into the signature) is
  carried by the first entry citing it in the tx, and the entry must be about what it asked:
  its `pid`, its `purpose` (default treatment), and, if it lists `rids`, only those. So a
  hospital cannot attribute an act to another without that hospital's signed question.
  The state keeps the request's digest (sha256 of the signed bytes and the signature, the key
  of the custodian's evidence table) and who signed it (`request_signer`).

`basis` is a code, not text: what authorize names (`custodian`, `patient`, `consent:<id>`,
`referral:<id>`, `emergency:<id>`, `enrolment:<study>`), so that a hospital cannot write a
diagnosis next to a pid in it. A denial's `reason` is a code too: one of `DENIAL_REASONS`
(the stable phrase authorize starts its reasons with, and the few the API and the gateway
add); `denial_code` turns a worded reason into its code. The wording stays with the caller
(the HTTP answer, the node's log), never on the chain.

Bounds (free text on the chain can never be erased): `basis` at most `MAX_BASIS`, `rids` at
most `MAX_RIDS` per entry (callers split a longer list into several entries), a request's
`target` at most `MAX_TARGET` and its `body` at most `MAX_REQUEST_BODY` bytes, `MAX_ENTRIES`
entries per tx.

An entry may carry an `id` (`ENTRY_ID` bytes in hex, made by the serving hospital's audit
journal, node/audit.py: random per run of the journal, then a counter): the journal re-sends
what it cannot prove committed, so an entry whose id its custodian already wrote is skipped,
not written twice and not refused (the rest of its tx still lands). The id tells nothing of
the patient.

State (prefix `acc/`), version 1:
    acc/pid/<pid>/<time:016d>/<tx id hex>/<n:04d>   one entry, in time order per patient
    acc/org/<org>/<time:016d>/<tx id hex>/<n:04d>   -> same entry key (who served what)
    acc/req/<request digest hex>                    -> the tx id whose entries it backs
    acc/id/<custodian>/<entry id>                   -> the entry key (a re-sent id is skipped)

Version 2 (`log_v2`; docs/architecture.md, "`access` v2"): entries by column in the tx
(`log_body`), each numbered by the custodian's journal (`seq`) instead of an id; `acc/req/`
as in v1, `acc/id/` only for entries journaled before v2 (they carry an id), and:
    acc/ptx/<pid>/<time:016d>/<tx id hex>   [custodian, signer, height, [entry...]]: the tx's
                                            entries about pid (`ROW_COLUMNS` each)
    acc/otx/<org>/<time:016d>/<tx id hex>   -> [pid...]: the tx's patients (who served what)
    acc/seq/<custodian>                     the highest sequence written (skip at or below)
Its queries read both layouts (a chain keeps what v1 wrote; `record_entry` writes v1's).

Version 3 (`log_v3`): v2 and an entry's `to`, the hospital that received what an `export`
sent (a member other than the custodian: a study's partial facts go to the patient's
answering hospital), so the patient's trail names it. A row's entry carries it as a 14th
column only when set: v2's rows, and v3's without a `to`, are the same bytes. And a more
compact tx (`log_body`): a field every
entry of the tx shares is given once (`same`, with the entry `count`), and the journal's
sequences as steps from `seq_base` (1 each when they follow on). A journal's tx of 500 reads
about one patient shrinks from ≈ 150 bytes per entry to its rids and a step; every validator
receives, hashes, gossips and decodes that much less. The body is expanded to v2's columns
(`_expand`) and handled by v2's code: nothing is checked or written differently. A v2 body
(signed before the vote) is still accepted as it is.

Version 4 (`log_v4`): v3, and an export's `to` is checked on the chain, not taken on the
sender's word (`_check_receiver`): the receiver is a custodian of the entry's patient (its
custody runs, or ended by its own shredding), or the receiving hospital of a referral of the
patient from the custodian. A sender can no longer name in a patient's trail a hospital that
could not have received their data. It can still name another eligible receiver than the
real one, or log no export at all: docs/security.md. State and rows as in v3.

Version 5 (`log_v5`): v4's body and checks; a row's entries stored by column,
`[custodian, signer, height, [count, same, cols]]` (`_row_v5`): the fields every entry
shares once, the others by column. The same fields, so the same bounds; fewer bytes to
build, encode and hash per entry. A journal's plain tx is turned into rows by column
(`_plain_rows`); any other goes through the entry-by-entry loop. The queries read every
layout (`_row_entries`).

Version 6 (`log_v6`, session 15): v5, and only the organisation key signs `access.log`
(the node's audit journal does; v5 took any active key of the hospital, so a clinician's
own key could write reads, denials or exports into the hospital's trail). A practitioner's
tx is refused `UNAUTHORIZED`, naming the signer, nothing written. Body, state and rows as
in v5. `record_entry` (an access recorded inside another contract's act, signed by whoever
signs that act) is unchanged: it is part of that signer's own act (a registration's
disclosures, exports to another hospital, are the organisation key's from `records` v4).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medledger.contracts import governance, identity
from medledger.contracts.common import check_id, check_pid, is_id, is_pid
from medledger.contracts.governance import is_member
from medledger.contracts.identity import acting_org, resolve_actor
from medledger.ledger.contract import Context, Contract, Message, QueryFn, parse_item, parse_message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.keys import verify
from medledger.ledger.store import StateView

if TYPE_CHECKING:
    from medledger.contracts.authorize import Decision  # authorize reads records, which logs here

ACTIONS = ("read", "search", "create", "update", "export", "delete", "break-glass")
OUTCOMES = ("granted", "denied")
PURPOSES = ("treatment", "emergency", "research", "patient-request", "audit", "operations")
MAX_ENTRIES = 500
MAX_RIDS = 1000  # per entry
MAX_BASIS = 200
MAX_ACTOR = 140  # "practitioner:" + two ids of at most 64
MAX_TARGET = 512  # a signed request's path (the exchange's are short)
ENTRY_ID = 16  # bytes of randomness in an entry's id: 32 hex characters
_HEX = frozenset("0123456789abcdef")
MAX_REQUEST_BODY = 96 * 1024  # an exchange question: pid, purpose, up to 1000 rids
BASES = ("custodian", "patient")  # bases without an id
BASIS_KINDS = ("consent", "referral", "emergency", "enrolment")  # "<kind>:<id>"
#: How far a remote request's time may be from the block time of the entry it backs: the
#: gateway accepts requests within 60 s of its clock, then commits the entry before serving.
REQUEST_WINDOW_MS = 10 * 60_000
#: The domain of a signed exchange request (exchange/signing.py signs `request_bytes`).
REQUEST_DOMAIN = b"medledger/exchange/v1"

#: A denial's reason on the chain: a code, and what the patient's portal says of it.
#: First the stable phrases `authorize` starts its reasons with (authorize.py's docstring),
#: then those of the API and the gateway. Never free text: nothing said of the patient.
DENIAL_REASONS: dict[str, str] = {
    "unknown actor": "the requester is not a known hospital or practitioner",
    "actor revoked": "the practitioner or their hospital is no longer active",
    "invalid request": "the request was malformed",
    "role": "the practitioner's role does not allow it",
    "erased": "your records there were erased",
    "no consent": "no consent of yours covered it",
    "consent revoked": "your consent had been revoked",
    "consent contested": "your consent was suspended (contested)",
    "consent expired": "your consent had expired",
    "consent not yet valid": "your consent had not started yet",
    "other hospital": "your consent names another hospital",
    "other purpose": "your consent is for another purpose",
    "other category": "your consent does not cover this kind of record",
    "emergency without role": "break-the-glass by someone without the emergency role",
    "no emergency access": "no emergency access was opened",
    "emergency expired": "the emergency access had expired",
    "referral cancelled": "the referral was cancelled",
    "referral outside window": "outside the referral's time window",
    "not enrolled": "you are not enrolled in that study",
    "enrolment withdrawn": "you withdrew from that study",
    "study closed": "the study is closed",
    "policy forbid": "a consortium policy forbids it",
    "policy error": "a consortium policy could not be evaluated (refused)",
    # the API, the pages and the gateway
    "other patient": "the sign-in was for another patient",
    "authorization unavailable": "the hospital could not check the authorization (refused)",
    "authorization failed": "the authorization check failed (refused)",
    "record metadata unreadable": "the record's description could not be read (refused)",
    "denied": "refused",
}
#: The longest code, for callers that size a column.
MAX_REASON = max(len(code) for code in DENIAL_REASONS)


def denial_code(reason: str) -> str:
    """The code of a worded denial reason: the longest code it starts with ("denied" if none).

    `authorize` words a reason as "<code>: details" (or "policy forbid <names>"); the details
    stay with the caller, the code goes on the chain."""
    best = ""
    for code in DENIAL_REASONS:
        if (reason == code or reason.startswith((code + ":", code + " "))) and len(code) > len(
            best
        ):
            best = code
    return best or "denied"


def log_entry(
    *,
    actor: str,
    actor_org: str,
    pid: str,
    action: str,
    purpose: str,
    decision: Decision,
    rids: list[str],
    request: dict[str, Any] | None = None,
    to: str = "",
) -> dict[str, Any]:
    """The one builder of an `access.log` entry from a decision, for every caller off-chain.

    A denial carries no basis and only its reason's code (denial_code): the wording stays
    with the caller, never on the chain. `request` is the signed request of another
    hospital's actor (see module doc); a hospital's own act has none.
    """
    entry: dict[str, Any] = {
        "actor": actor,
        "actor_org": actor_org,
        "pid": pid,
        "action": action,
        "purpose": purpose,
        "outcome": "granted" if decision.allowed else "denied",
        "basis": decision.basis if decision.allowed else "",
        "reason": "" if decision.allowed else denial_code(decision.reason),
        "rids": rids,
    }
    if request is not None:
        entry["request"] = request
    if to:  # an export's receiver (access v3; `log_body` leaves it out for older chains)
        entry["to"] = to
    return entry


def reason_in_words(code: str) -> str:
    """A denial code as the patient's portal and the AuditEvent say it."""
    words = DENIAL_REASONS.get(code)
    return code if words is None else f"{code}: {words}"


def request_bytes(
    method: str, target: str, body_hash: bytes, time_ms: int, nonce: bytes, audience: str
) -> bytes:
    """What an exchange request's Ed25519 signature covers (one definition, used by
    exchange/signing.py to sign and check, and here to verify an entry's request)."""
    return b"\n".join(
        [
            REQUEST_DOMAIN,
            method.upper().encode(),
            target.encode(),
            body_hash.hex().encode(),
            str(time_ms).encode(),
            nonce.hex().encode(),
            audience.encode(),
        ]
    )


@dataclass
class Request:
    """Another hospital's signed request, as the serving hospital received it."""

    key: bytes  # the requester's registered key (practitioner's, or its organisation's)
    time_ms: int
    nonce: bytes  # 16 bytes
    signature: bytes  # Ed25519, 64 bytes, over `request_bytes(..., audience=custodian)`
    method: str
    target: str
    body_hash: bytes  # sha256 of the request body
    # The body itself (JSON: pid, purpose, rids...), carried by the first entry of a tx that
    # cites this request; the tx's other entries citing it may leave it out.
    body: bytes = b""


@dataclass
class Entry:
    actor: str  # "practitioner:<org>/<id>", "org:<id>" or "patient:<pid>"
    actor_org: str  # the requesting hospital
    pid: str
    action: str
    purpose: str
    outcome: str
    basis: str = ""
    reason: str = ""
    rids: list[str] = field(default_factory=list)
    request: dict[str, Any] | None = None  # the requester's signed request (`Request`), if remote
    id: str = ""  # the journal's id: an entry re-sent under the same id is written once


@dataclass
class Log:
    entries: list[dict[str, Any]]


def _check(i: int, raw: Any) -> Entry:
    """One entry parsed and checked. The checks run on every entry of a tx of up to
    `MAX_ENTRIES`, so a field's path (`entries[i].x`) is spelled out only for a refusal."""
    e = parse_item(Entry, raw, f"entries[{i}]")
    _check_fields(i, e)
    return e


def _check_fields(i: int, e: Entry) -> None:
    """The checks of an entry's own fields, once parsed (both versions)."""
    if e.id and (len(e.id) != 2 * ENTRY_ID or not _HEX.issuperset(e.id)):
        raise TxError(
            Code.INVALID_BODY, f"field entries[{i}].id: {2 * ENTRY_ID} lowercase hex characters"
        )
    if not is_pid(e.pid):
        check_pid(e.pid, f"entries[{i}].pid")
    if not is_id(e.actor_org):
        check_id(e.actor_org, f"entries[{i}].actor_org")
    if e.action not in _ACTIONS or e.outcome not in _OUTCOMES or e.purpose not in _PURPOSES:
        for name, value, allowed in (
            ("action", e.action, ACTIONS),
            ("outcome", e.outcome, OUTCOMES),
            ("purpose", e.purpose, PURPOSES),
        ):
            if value not in allowed:
                raise TxError(
                    Code.INVALID_BODY, f"field entries[{i}].{name}: {value!r} not in {allowed}"
                )
    if e.outcome == "granted" and not e.basis:
        raise TxError(Code.INVALID_BODY, f"field entries[{i}].basis: a granted access needs one")
    if e.outcome == "denied" and not e.reason:
        raise TxError(Code.INVALID_BODY, f"field entries[{i}].reason: a denial needs one")
    if e.outcome == "granted" and e.reason:
        raise TxError(Code.INVALID_BODY, f"field entries[{i}].reason: only a denial has one")
    if e.reason and e.reason not in DENIAL_REASONS:
        # Never free text next to a pid: the detailed wording stays with the caller.
        raise TxError(
            Code.INVALID_BODY,
            f"field entries[{i}].reason: {e.reason[:40]!r} is not a denial code "
            "(access.DENIAL_REASONS; access.denial_code maps a worded reason to its code)",
        )
    if len(e.basis) > MAX_BASIS:
        raise TxError(
            Code.INVALID_BODY, f"field entries[{i}].basis: at most {MAX_BASIS} characters"
        )
    if e.basis and e.basis not in BASES:
        check_basis(e.basis, f"entries[{i}].basis")
    if len(e.rids) > MAX_RIDS:
        raise TxError(
            Code.INVALID_BODY,
            f"field entries[{i}].rids: at most {MAX_RIDS} per entry (split into several entries)",
        )
    for j, rid in enumerate(e.rids):
        if not is_id(rid):
            check_id(rid, f"entries[{i}].rids[{j}]")


_ACTIONS, _OUTCOMES, _PURPOSES = frozenset(ACTIONS), frozenset(OUTCOMES), frozenset(PURPOSES)


def check_basis(basis: str, field: str) -> str:
    """A basis as authorize names it: `custodian`, `patient` or `<kind>:<id>`; never text."""
    if basis in BASES:
        return basis
    kind, sep, ident = basis.partition(":")
    if not sep or kind not in BASIS_KINDS:
        raise TxError(
            Code.INVALID_BODY,
            f"field {field}: {basis[:40]!r} is not a basis ({', '.join(BASES)}, or "
            f"{'|'.join(BASIS_KINDS)}:<id>)",
        )
    check_id(ident, field)
    return basis


def _check_actor(ctx: Context, i: int, e: Entry, custodian: str) -> None:
    """The actor is someone of actor_org; another hospital's act needs its signed request."""
    where = f"field entries[{i}].actor"
    if len(e.actor) > MAX_ACTOR:
        raise TxError(Code.INVALID_BODY, f"{where}: at most {MAX_ACTOR} characters")
    kind, _, rest = e.actor.partition(":")
    if kind == "patient":
        check_pid(rest, f"entries[{i}].actor")
        if e.actor_org != custodian:
            raise TxError(
                Code.UNAUTHORIZED,
                f"{where}: a patient is served by the hospital they signed in to, so "
                f"actor_org must be {custodian}",
            )
        if rest != e.pid and e.outcome != "denied":
            raise TxError(Code.UNAUTHORIZED, f"{where}: a patient is granted only their own data")
        return
    if kind == "org":
        org, practitioner = rest, None
    elif kind == "practitioner":
        org, _, practitioner = rest.partition("/")
        check_id(practitioner, f"entries[{i}].actor")
    else:
        raise TxError(
            Code.INVALID_BODY,
            f"{where}: practitioner:<org>/<id>, org:<org> or patient:<pid>, not {e.actor[:40]!r}",
        )
    if org != e.actor_org:
        raise TxError(Code.UNAUTHORIZED, f"{where}: {e.actor!r} is not of {e.actor_org}")
    if e.actor_org == custodian:
        if e.request is not None:
            raise TxError(
                Code.INVALID_BODY,
                f"field entries[{i}].request: only an access by another hospital carries one",
            )
        return
    # A remote access: another hospital asked, and its signed request must show it.
    if e.request is None:
        raise TxError(
            Code.UNAUTHORIZED,
            f"field entries[{i}].request: an access by {e.actor_org}, served by {custodian}, "
            "needs its signed request",
        )
    if not is_member(ctx.state, e.actor_org):
        raise TxError(Code.NOT_FOUND, f"field entries[{i}].actor_org: not a member hospital")
    if practitioner is not None and not identity.is_practitioner(ctx.state, org, practitioner):
        raise TxError(Code.NOT_FOUND, f"{where}: {org} registered no practitioner {practitioner}")


def _check_request(
    ctx: Context, i: int, e: Entry, custodian: str, asked: dict[bytes, dict[str, Any]]
) -> tuple[bytes, str]:
    """A remote entry's request: signed by the actor (or its hospital) for this custodian,
    recently, backing no other tx, and asking about this entry's patient, purpose and records.
    `asked` keeps the bodies already read in this tx, by digest. Returns (digest, signer)."""
    where = f"field entries[{i}].request"
    assert e.request is not None
    try:
        req = parse_message(Request, e.request)
    except TxError as exc:
        raise TxError(exc.code, f"entries[{i}].request: {exc.message}") from None
    if not 0 < len(req.method) <= 8 or not 0 < len(req.target) <= MAX_TARGET:
        raise TxError(
            Code.INVALID_BODY, f"{where}: method at most 8, target at most {MAX_TARGET} characters"
        )
    if len(req.nonce) != 16 or len(req.body_hash) != 32 or len(req.key) != 32:
        raise TxError(Code.INVALID_BODY, f"{where}: key and body_hash are 32 bytes, nonce 16 bytes")
    signer = resolve_actor(ctx.state, req.key)
    if signer is None or signer.org != e.actor_org:
        raise TxError(Code.UNAUTHORIZED, f"{where}.key: not a registered key of {e.actor_org}")
    label = (
        f"org:{signer.org}"
        if signer.practitioner is None
        else f"practitioner:{signer.org}/{signer.practitioner}"
    )
    if signer.practitioner is not None and label != e.actor:
        raise TxError(
            Code.UNAUTHORIZED,
            f"{where}.key: signed by {label}, not by {e.actor} or its hospital's key",
        )
    signed = request_bytes(req.method, req.target, req.body_hash, req.time_ms, req.nonce, custodian)
    if not verify(req.key, signed, req.signature):
        raise TxError(
            Code.UNAUTHORIZED,
            f"{where}.signature: does not verify (over the request, addressed to {custodian})",
        )
    if abs(ctx.time_ms - req.time_ms) > REQUEST_WINDOW_MS:
        raise TxError(
            Code.UNAUTHORIZED,
            f"{where}.time_ms: {req.time_ms} is more than {REQUEST_WINDOW_MS // 60_000} min "
            f"from the block time {ctx.time_ms}",
        )
    digest = hashlib.sha256(signed + req.signature).digest()
    used = ctx.state.get(f"acc/req/{digest.hex()}")
    if used is not None and used != ctx.tx_id:
        raise TxError(
            Code.UNAUTHORIZED, f"{where}: this request already backs the entries of another tx"
        )
    ctx.state.put(f"acc/req/{digest.hex()}", ctx.tx_id)
    if req.body:
        asked[digest] = _request_body(i, req)
    elif digest not in asked:
        raise TxError(
            Code.INVALID_BODY,
            f"{where}.body: the first entry citing a request carries its body",
        )
    _check_asked(i, e, asked[digest])
    return digest, label


def _request_body(i: int, req: Request) -> dict[str, Any]:
    """The signed request's body, a JSON map (its hash is what the signature covers)."""
    where = f"field entries[{i}].request.body"
    if len(req.body) > MAX_REQUEST_BODY:
        raise TxError(Code.INVALID_BODY, f"{where}: at most {MAX_REQUEST_BODY} bytes")
    if hashlib.sha256(req.body).digest() != req.body_hash:
        raise TxError(Code.UNAUTHORIZED, f"{where}: does not hash to body_hash")
    try:
        body = json.loads(req.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TxError(Code.INVALID_BODY, f"{where}: a JSON object expected")
    return body


def _check_asked(i: int, e: Entry, body: dict[str, Any]) -> None:
    """The entry is about what the request asked: its pid, its purpose, among its records."""
    where = f"field entries[{i}]"
    if body.get("pid") != e.pid:
        raise TxError(Code.UNAUTHORIZED, f"{where}.pid: the signed request asked about another")
    if body.get("purpose", "treatment") != e.purpose:
        raise TxError(
            Code.UNAUTHORIZED, f"{where}.purpose: the signed request asked for another purpose"
        )
    wanted = body.get("rids")
    if isinstance(wanted, list) and not set(e.rids) <= set(wanted):
        raise TxError(Code.UNAUTHORIZED, f"{where}.rids: records the signed request did not ask")


def log(ctx: Context, msg: Log) -> None:
    custodian, practitioner = acting_org(ctx)
    signer = _signer_label(custodian, practitioner)
    if not 0 < len(msg.entries) <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field entries: 1..{MAX_ENTRIES} entries per tx")
    asked: dict[bytes, dict[str, Any]] = {}  # the bodies of the requests cited, by digest
    stamp = _stamp(ctx)
    for n, raw in enumerate(msg.entries):
        entry = _check(n, raw)
        if entry.id and ctx.state.has(f"acc/id/{custodian}/{entry.id}"):
            continue  # re-sent by the journal after it committed: written once
        _check_actor(ctx, n, entry, custodian)
        digest, request_signer = b"", ""
        if entry.request is not None:
            digest, request_signer = _check_request(ctx, n, entry, custodian, asked)
        _write_entry(ctx, custodian, signer, n, entry, digest, request_signer, stamp)


def record_entry(
    ctx: Context, custodian: str, n: int, e: Entry, request: bytes = b"", request_signer: str = ""
) -> str:
    """Write one access entry (the n-th of its tx); returns its key. Other contracts use it
    to record accesses that happen as part of their own txs (a disclosure at registration).

    `custodian` is the signer's hospital (the callers take it from `acting_org`), and the
    signing key is named beside it: the entry says who served it, not who claims to have.
    `request` is the digest of the remote request the entry rests on, checked by the caller
    (`_check_request`), and `request_signer` who signed it."""
    org, practitioner = acting_org(ctx)
    return _write_entry(
        ctx, custodian, _signer_label(org, practitioner), n, e, request, request_signer
    )


def _stamp(ctx: Context) -> str:
    """What the keys of a tx's entries share: its block time and its id."""
    return f"{ctx.time_ms:016d}/{ctx.tx_id.hex()}"


def _signer_label(org: str, practitioner: str | None) -> str:
    return f"org:{org}" if practitioner is None else f"practitioner:{org}/{practitioner}"


def _write_entry(
    ctx: Context,
    custodian: str,
    signer: str,
    n: int,
    e: Entry,
    request: bytes = b"",
    request_signer: str = "",
    stamp: str = "",
) -> str:
    """`record_entry` once the signer is known (`log` resolves it once per tx, and its
    entries' common key part, `stamp`)."""
    suffix = f"{stamp or _stamp(ctx)}/{n:04d}"
    key = f"acc/pid/{e.pid}/{suffix}"
    ctx.state.put(
        key,
        {
            "actor": e.actor,
            "actor_org": e.actor_org,
            "custodian": custodian,
            "signer": signer,
            "pid": e.pid,
            "rids": e.rids,
            "action": e.action,
            "purpose": e.purpose,
            "basis": e.basis,
            "outcome": e.outcome,
            "reason": e.reason,
            "request": request,
            "request_signer": request_signer,
            "id": e.id,
            "time": ctx.time_ms,
            "height": ctx.height,
            "tx": ctx.tx_id,
            "n": n,
        },
    )
    ctx.state.put(f"acc/org/{custodian}/{suffix}", key)
    if e.id:
        ctx.state.put(f"acc/id/{custodian}/{e.id}", key)
    ctx.emit(
        "access.logged",
        pid=e.pid,
        custodian=custodian,
        actor_org=e.actor_org,
        action=e.action,
        outcome=e.outcome,
    )
    return key


def q_of_patient(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    pid = args.get("pid")
    if not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "access/of_patient needs pid")
    since = args.get("since_ms", 0)
    out = []
    for key, entry in state.scan(f"acc/pid/{pid}/"):
        if entry["time"] >= since:
            entry["key"] = key
            out.append(entry)
    return out


def q_by_custodian(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    org = args.get("org")
    out = []
    for _, key in state.scan(f"acc/org/{org}/"):
        entry = state.get(key)
        if entry is not None:
            entry["key"] = key
            out.append(entry)
    return out


# --- version 2: one row per tx and patient; re-sends skipped by the journal's sequence ----


@dataclass
class EntryV2(Entry):
    # The serving hospital's journal sequence (node/audit.py): strictly increasing within a
    # tx; one at or below the custodian's mark (`acc/seq/`) is already on the chain: skipped.
    seq: int = 0


@dataclass
class EntryV3(EntryV2):
    # The hospital that received an export's data ("" for any other act).
    to: str = ""


@dataclass
class LogV2:
    """Entries by column (`log_body`): entry i has `columns[name][i]` for each field `name`
    of `EntryV2`; a column whose values all are the field's default is left out. A tx's
    entries share most values (actor, action, purpose, basis...): by column, the strict
    decoding and the checks run over whole lists, not field by field and entry by entry."""

    columns: dict[str, Any] = field(default_factory=dict)
    # A v1 body's list of entries instead (a tx its journal built before the vote that
    # activated v2, committed after it): read the v1 way, one entry at a time.
    entries: list[Any] = field(default_factory=list)
    # Every entry of the custodian's journal that must reach the chain before this tx's last
    # one is at or below `need`: the tx waits (Code.NOT_YET) until the mark has reached it.
    need: int = 0


MAX_SEQ = 2**62
#: The columns of an entry in a v2 row (`acc/ptx/...`), in order.
ROW_COLUMNS = (
    "n",
    "actor",
    "actor_org",
    "action",
    "purpose",
    "outcome",
    "basis",
    "reason",
    "rids",
    "request",
    "request_signer",
    "seq",
    "id",
    "to",  # v3, only when set
)
_REQUIRED = ("actor", "actor_org", "pid", "action", "purpose", "outcome")
_REQUIRED_SET = frozenset(_REQUIRED)
_DEFAULTS: dict[str, Any] = {
    "basis": "",
    "reason": "",
    "rids": [],
    "request": None,
    "id": "",
    "seq": 0,
}
_COLUMN_TYPES: dict[str, frozenset[type]] = {
    **{name: frozenset((str,)) for name in (*_REQUIRED, "basis", "reason", "id")},
    "rids": frozenset((list,)),
    "request": frozenset((dict, type(None))),
    "seq": frozenset((int,)),
}
_COLUMN_TYPES_V3 = {**_COLUMN_TYPES, "to": frozenset((str,))}
#: Record ids one per line: `common.is_id` of each, over a whole tx's ids at once.
_ID_LINES = re.compile(r"(?:[a-z0-9][a-z0-9._-]{0,63}\n)*")


def log_body(entries: list[dict[str, Any]], version: int, need: int = 0) -> dict[str, Any]:
    """The body of an `access.log` tx of these entries (as `log_entry` builds them) for
    `version` of the contract: v1 the list of entries, v2 their columns (and `need`), v3
    the same columns compacted (`_compact`), and an entry's `to` (an older chain's entries
    do not name the receiver)."""
    if version < 3:
        entries = [{k: v for k, v in e.items() if k != "to"} for e in entries]
    if version < 2:
        return {"entries": entries}
    columns: dict[str, Any] = {name: [e[name] for e in entries] for name in _REQUIRED}
    for name, default in (_DEFAULTS if version < 3 else {**_DEFAULTS, "to": ""}).items():
        values = [e.get(name, default) for e in entries]
        if any(v != default for v in values):
            columns[name] = values
    if version >= 3:
        return _compact(columns, need)
    return {"columns": columns, "need": need} if need else {"columns": columns}


def _entries_of(columns: dict[str, Any], kind: type[EntryV2] = EntryV2) -> list[EntryV2]:
    """The columns as entries, each parsed and checked alone, as v1 does: the slow path,
    taken when a column check fails, to refuse naming the entry and field."""
    c = columns
    return _checked([{k: c[k][i] for k in c} for i in range(_count(c))], kind)


def _checked(raw: list[Any], kind: type[EntryV2] = EntryV2) -> list[EntryV2]:
    """Entries (maps) parsed and checked one by one, as v1 does."""
    if not 0 < len(raw) <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field entries: 1..{MAX_ENTRIES} entries per tx")
    out = []
    for i, item in enumerate(raw):
        e = parse_item(kind, item, f"entries[{i}]")
        _check_fields(i, e)
        out.append(e)
    return out


def _count(columns: dict[str, Any]) -> int:
    """How many entries the columns hold (each a list of as many values)."""
    lengths = set()
    for name, column in columns.items():
        if type(column) is not list:
            raise TxError(Code.INVALID_BODY, f"field columns.{name}: expected a list")
        lengths.add(len(column))
    if len(lengths) > 1:
        raise TxError(Code.INVALID_BODY, "field columns: every column has one value per entry")
    count = lengths.pop() if lengths else 0
    if not 0 < count <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field columns: 1..{MAX_ENTRIES} entries per tx")
    return count


def _fast_entries(c: dict[str, Any], kind: type[EntryV2] = EntryV2) -> list[EntryV2] | None:
    """The columns as entries when every check of `_check_fields` passes over whole columns
    (types, codes, pids, ids, bases); None as soon as one fails: `_entries_of` then finds
    the entry and names it (or accepts what these checks refuse too eagerly)."""
    columns = _fast_columns(c, kind)
    return None if columns is None else [kind(*values) for values in zip(*columns, strict=True)]


def _fast_columns(c: dict[str, Any], kind: type[EntryV2] = EntryV2) -> list[list[Any]] | None:
    """`_fast_entries`' checks; the checked columns in the order of `kind`'s fields."""
    types = _COLUMN_TYPES_V3 if kind is EntryV3 else _COLUMN_TYPES
    if not (c.keys() >= _REQUIRED_SET and c.keys() <= types.keys()):
        return None
    count = len(c["actor"]) if type(c["actor"]) is list else -1
    if not 0 < count <= MAX_ENTRIES:
        return None
    for name, column in c.items():
        if type(column) is not list or len(column) != count:
            return None
        if not set(map(type, column)) <= types[name]:
            return None
    pids = c["pid"]
    if set(map(len, pids)) != {64} or not _HEX.issuperset("".join(pids)):
        return None
    if not (
        _ACTIONS.issuperset(c["action"])
        and _OUTCOMES.issuperset(c["outcome"])
        and _PURPOSES.issuperset(c["purpose"])
        and all(map(is_id, set(c["actor_org"])))
    ):
        return None
    basis, reason = c.get("basis", [""] * count), c.get("reason", [""] * count)
    for outcome, b, r in set(zip(c["outcome"], basis, reason, strict=True)):
        if (not b or r) if outcome == "granted" else not r:
            return None
        if r and r not in DENIAL_REASONS:
            return None
        if b and (len(b) > MAX_BASIS or (b not in BASES and not _is_basis(b))):
            return None
    rids = c.get("rids", [[]] * count)
    if "rids" in c:
        if max(map(len, rids)) > MAX_RIDS:
            return None
        flat = [rid for each in rids for rid in each]
        if flat:
            if not set(map(type, flat)) <= {str}:
                return None
            lines = "\n".join(flat)
            if lines.count("\n") != len(flat) - 1 or not _ID_LINES.fullmatch(lines + "\n"):
                return None
    ids = c.get("id", [""] * count)
    for ident in set(ids) - {""}:
        if len(ident) != 2 * ENTRY_ID or not _HEX.issuperset(ident):
            return None
    columns = [
        c["actor"],
        c["actor_org"],
        pids,
        c["action"],
        c["purpose"],
        c["outcome"],
        basis,
        reason,
        rids,
        c.get("request", [None] * count),
        ids,
        c.get("seq", [0] * count),
    ]
    if kind is EntryV3:
        columns.append(c.get("to", [""] * count))
    return columns


def _is_basis(basis: str) -> bool:
    try:
        check_basis(basis, "basis")
    except TxError:
        return False
    return True


def log_v2(ctx: Context, msg: LogV2) -> None:
    """`access.log`, version 2: the same checks on every entry as v1 (`_check_fields`, over
    whole columns first; `_check_actor` once per actor; `_check_request`); the entries of a
    tx about one patient written as one row, and a re-sent entry known by its sequence
    instead of a row per entry id."""
    _log_rows(ctx, msg, EntryV2)


def _check_to(ctx: Context, n: int, entry: EntryV2, custodian: str) -> None:
    """An export's receiver: a member of the consortium other than the custodian."""
    to = getattr(entry, "to", "")
    if not to:
        return
    if entry.action != "export":
        raise TxError(Code.INVALID_BODY, f"field entries[{n}].to: only an export names one")
    if not is_id(to) or not is_member(ctx.state, to) or to == custodian:
        raise TxError(
            Code.INVALID_BODY,
            f"field entries[{n}].to: a member hospital other than {custodian} expected",
        )


#: Who may receive an export of a patient's data from a custodian (access v4): each rule
#: (state, pid, receiver, custodian) -> whether the chain shows it may. Registered by the
#: contracts that know (records: a custodian; referral: a referral's receiver), which import
#: this module: this one cannot import them.
RECEIVER_RULES: list[Callable[[StateView, str, str, str], bool]] = []


def _check_receiver(ctx: Context, n: int, pid: str, to: str, custodian: str) -> None:
    """v4: an export's receiver is one the chain knows may get the patient's data from the
    custodian (`RECEIVER_RULES`): a custodian of the patient (whose custody runs, or ended
    by its own shredding after the export: a study's partials go to a co-custodian), or the
    receiving hospital of a referral of the patient from the custodian (a transfer, whatever
    the referral's status since). Not someone the sender names to blame it."""
    if any(rule(ctx.state, pid, to, custodian) for rule in RECEIVER_RULES):
        return
    raise TxError(
        Code.UNAUTHORIZED,
        f"field entries[{n}].to: {to} is neither a custodian of the entry's patient nor the "
        f"receiver of a referral of them from {custodian}",
    )


def _log_rows(
    ctx: Context,
    msg: LogV2,
    kind: type[EntryV2],
    *,
    receivers: bool = False,
    by_column: bool = False,
    org_only: bool = False,
) -> None:
    """The v2 to v6 handling; `receivers` (v4 on) checks an export's `to` on the chain,
    `by_column` (v5 on) writes each row's entries by column (`_row_v5`), `org_only` (v6)
    takes the tx from the organisation key only."""
    custodian, practitioner = acting_org(ctx)
    if org_only and practitioner is not None:
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {custodian}/{practitioner} may not write its hospital's "
            "access trail; access.log is signed by the organisation key (its node's audit "
            "journal)",
        )
    signer = _signer_label(custodian, practitioner)
    columns: list[list[Any]] | None = None
    if msg.entries:
        if msg.columns:
            raise TxError(Code.INVALID_BODY, "field entries: columns or entries, not both")
        entries = _checked(msg.entries, kind)
    elif by_column and practitioner is None:
        columns = _fast_columns(msg.columns, kind)
        entries = [] if columns is not None else _entries_of(msg.columns, kind)
    else:
        entries = _fast_entries(msg.columns, kind) or _entries_of(msg.columns, kind)
    mark_key = f"acc/seq/{custodian}"
    mark = ctx.state.get(mark_key) or 0
    if not 0 <= msg.need < MAX_SEQ:
        raise TxError(Code.INVALID_BODY, f"field need: 0..{MAX_SEQ - 1}")
    if msg.need and practitioner is not None:
        raise TxError(Code.UNAUTHORIZED, "field need: only the hospital's journal sends one")
    if msg.need > mark:
        raise TxError(
            Code.NOT_YET,
            f"field need: entry {msg.need} of {custodian}'s journal is not on the chain yet "
            f"(it is at {mark}); send this tx again once it is",
        )
    if columns is not None:
        plain = _plain_rows(ctx, columns, kind, custodian, mark)
        if plain is not None:
            _write_rows(ctx, custodian, signer, mark_key, mark, *plain)
            return
        entries = [kind(*values) for values in zip(*columns, strict=True)]
    asked: dict[bytes, dict[str, Any]] = {}
    actors: set[tuple[str, str]] = set()  # (actor, actor_org) checked, for local acts
    rows: dict[str, list[list[Any]]] = {}
    last = 0
    for n, entry in enumerate(entries):
        if entry.seq:
            if practitioner is not None:  # a practitioner's seq could lift the mark over
                raise TxError(  # the entries its hospital's journal has yet to write
                    Code.UNAUTHORIZED,
                    f"field entries[{n}].seq: only the hospital's journal (its organisation "
                    "key) numbers entries",
                )
            if entry.id:
                raise TxError(
                    Code.INVALID_BODY, f"field entries[{n}].id: an entry with a seq has no id"
                )
            if not last < entry.seq < MAX_SEQ:
                raise TxError(
                    Code.INVALID_BODY,
                    f"field entries[{n}].seq: strictly increasing in a tx, below {MAX_SEQ}",
                )
            last = entry.seq
            if entry.seq <= mark:
                continue  # re-sent by the journal after it committed: written once
        elif entry.id:  # made by a journal before v2 was activated, and kept the v1 way
            id_key = f"acc/id/{custodian}/{entry.id}"
            if ctx.state.has(id_key):
                continue
            ctx.state.put(id_key, _row_key(entry.pid, ctx, n))
        digest, request_signer = b"", ""
        if entry.request is not None:
            _check_actor(ctx, n, entry, custodian)
            digest, request_signer = _check_request(ctx, n, entry, custodian, asked)
        elif entry.actor.startswith("patient:") or (entry.actor, entry.actor_org) not in actors:
            _check_actor(ctx, n, entry, custodian)  # without a request: the same for all
            actors.add((entry.actor, entry.actor_org))  # entries of this actor but patients'
        to: str = getattr(entry, "to", "")  # v3 on
        if to:
            _check_to(ctx, n, entry, custodian)
            if receivers:
                _check_receiver(ctx, n, entry.pid, to, custodian)
        row = rows.setdefault(entry.pid, [])
        row.append(
            [
                n,
                entry.actor,
                entry.actor_org,
                entry.action,
                entry.purpose,
                entry.outcome,
                entry.basis,
                entry.reason,
                entry.rids,
                digest,
                request_signer,
                entry.seq,
                entry.id,
            ]
        )
        if to or by_column:
            row[-1].append(to)
    stored = {
        pid: (_row_v5(values) if by_column else values, [(c[2], c[3], c[5]) for c in values])
        for pid, values in rows.items()
    }
    _write_rows(ctx, custodian, signer, mark_key, mark, stored, last)


def _write_rows(
    ctx: Context,
    custodian: str,
    signer: str,
    mark_key: str,
    mark: int,
    rows: dict[str, tuple[Any, list[tuple[str, str, str]]]],
    last: int,
) -> None:
    """A tx's rows (per pid: the stored entries, and each entry's actor_org, action and
    outcome for its events), its patients, and the custodian's mark lifted to `last`."""
    if last > mark:
        ctx.state.put(mark_key, last)
    if not rows:
        return
    stamp = _stamp(ctx)
    for pid, (stored, acts) in rows.items():
        ctx.state.put(f"acc/ptx/{pid}/{stamp}", [custodian, signer, ctx.height, stored])
        for actor_org, action, outcome in dict.fromkeys(acts):  # once each, in order
            ctx.emit(
                "access.logged",
                pid=pid,
                custodian=custodian,
                actor_org=actor_org,
                action=action,
                outcome=outcome,
            )
    ctx.state.put(f"acc/otx/{custodian}/{stamp}", list(rows))


def _row_key(pid: str, ctx: Context, n: int) -> str:
    """The key under which a v2 query names the n-th entry of a tx (the row's, then n)."""
    return f"acc/ptx/{pid}/{_stamp(ctx)}/{n:04d}"


def _v2_entries(pid: str, key: str, row: list[Any]) -> list[dict[str, Any]]:
    """A v2 row's entries in the shape of a v1 entry, plus `seq`."""
    time_ms, tx_hex = key.rsplit("/", 2)[1:]
    time, tx = int(time_ms), bytes.fromhex(tx_hex)
    custodian, signer, height, entries = row
    out = []
    for entry in _row_entries(entries):
        entry.update(
            custodian=custodian,
            signer=signer,
            pid=pid,
            time=time,
            height=height,
            tx=tx,
            key=f"{key}/{entry['n']:04d}",
        )
        out.append(entry)
    return out


def _row_entries(stored: list[Any]) -> list[dict[str, Any]]:
    """A row's entries as maps of `ROW_COLUMNS`: v2 to v4 store a list of columns per
    entry (`to` only when set), v5 the entries by column (`_row_v5`: it starts with the
    count, an integer, where a v2 row starts with an entry's list)."""
    if not stored or type(stored[0]) is not int:
        out = [dict(zip(ROW_COLUMNS, columns, strict=False)) for columns in stored]
        for entry in out:
            entry.setdefault("to", "")
        return out
    count, same, cols = stored
    base = {**_ROW_DEFAULTS, **dict(zip(same[::2], same[1::2], strict=True))}
    varying = list(zip(cols[::2], cols[1::2], strict=True))
    out = []
    for i in range(count):
        entry = {**base, **{name: column[i] for name, column in varying}}
        entry["rids"] = list(entry["rids"])  # each entry its own list, as a v2 row gives
        out.append(entry)
    return out


def journal_ref(entry: dict[str, Any]) -> str:
    """What tells apart on the chain the entries a hospital's journal sent: their `seq`
    (v2), or their `id` (v1, and entries journaled before v2)."""
    seq = entry.get("seq")
    return f"seq:{seq}" if seq else f"id:{entry['id']}"


def _in_order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of both layouts in the order of the chain: block time, tx id, place in tx."""
    entries.sort(key=lambda e: (e["time"], e["tx"], e["n"]))
    return entries


def q_of_patient_v2(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """v1's answer, over both layouts (a chain keeps the entries written before v2, and
    `records` writes its disclosures the v1 way: `record_entry`)."""
    out = q_of_patient(state, args)
    since = args.get("since_ms", 0)
    prefix = f"acc/ptx/{args['pid']}/"
    for key, row in state.scan(prefix):
        if int(key[len(prefix) : len(prefix) + 16]) >= since:
            out.extend(_v2_entries(args["pid"], key, row))
    return _in_order(out)


def q_by_custodian_v2(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """v1's answer, over both layouts: a custodian's tx rows name the patients of each tx."""
    org = args.get("org")
    out = q_by_custodian(state, args)
    prefix = f"acc/otx/{org}/"
    for key, pids in state.scan(prefix):
        stamp = key[len(prefix) :]
        for pid in pids:
            row_key = f"acc/ptx/{pid}/{stamp}"
            row = state.get(row_key)
            if row is not None:
                out.extend(_v2_entries(pid, row_key, row))
    return _in_order(out)


# --- version 3: v2's state and checks; a tx's shared fields and sequences sent compactly ----


@dataclass
class LogV3(LogV2):
    """v2's body, and: `same`, fields whose value every entry shares (given once, not also
    a column); `count`, the tx's entries (required with `same` or `seq_base`); `seq_base`,
    when given, makes the `seq` field (column or `same`) each entry's step (≥ 1) from the
    previous entry's sequence, the first's from `seq_base`."""

    same: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    seq_base: int | None = None


#: Per-entry data, never in `same`: 500 copies of one 1,000-rid list or one 96 kB request
#: would let a small tx write (and make every validator check) what no v2 tx could carry.
#: What `same` may hold is short and bounded (≈ 600 bytes an entry at most): an expansion
#: adds at most ≈ 300 kB to a tx's own bytes.
_NOT_SHARED = frozenset(("rids", "request"))


def _expand(msg: LogV3) -> dict[str, Any]:
    """v3's compact body as v2's columns (the same entries, checked by v2's code after)."""
    if not msg.same and not msg.count and msg.seq_base is None:
        return msg.columns  # a v2 body
    if msg.entries:
        raise TxError(Code.INVALID_BODY, "field entries: columns or entries, not both")
    count = msg.count
    if not 0 < count <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field count: 1..{MAX_ENTRIES} entries per tx")
    columns = dict(msg.columns)
    for name, column in columns.items():
        if type(column) is not list or len(column) != count:
            raise TxError(Code.INVALID_BODY, f"field columns.{name}: a list of count values")
    for name, value in msg.same.items():
        if name in columns:
            raise TxError(Code.INVALID_BODY, f"field same.{name}: also a column")
        if name in _NOT_SHARED:
            raise TxError(Code.INVALID_BODY, f"field same.{name}: given per entry (a column)")
        columns[name] = [value] * count
    if msg.seq_base is not None:
        steps = columns.get("seq")
        if not 0 <= msg.seq_base < MAX_SEQ:
            raise TxError(Code.INVALID_BODY, f"field seq_base: 0..{MAX_SEQ - 1}")
        if steps is None or not all(type(s) is int and 0 < s < MAX_SEQ for s in set(steps)):
            raise TxError(
                Code.INVALID_BODY, f"field seq: with seq_base, a step 1..{MAX_SEQ - 1} per entry"
            )
        columns["seq"] = list(itertools.accumulate(steps, initial=msg.seq_base))[1:]
    return columns


def log_v3(ctx: Context, msg: LogV3) -> None:
    """`access.log`, version 3: the body expanded (`_expand`), then v2's handling, where an
    export's entry may name who received it (`to`)."""
    _log_rows(ctx, LogV2(columns=_expand(msg), entries=msg.entries, need=msg.need), EntryV3)


def log_v4(ctx: Context, msg: LogV3) -> None:
    """`access.log`, version 4: v3, and an export's `to` must be a receiver the chain knows
    (`_check_receiver`)."""
    body = LogV2(columns=_expand(msg), entries=msg.entries, need=msg.need)
    _log_rows(ctx, body, EntryV3, receivers=True)


def _compact(columns: dict[str, Any], need: int) -> dict[str, Any]:
    """v2's columns as a v3 body: shared values once, contiguous sequences as steps."""
    count = len(columns["actor"])
    body: dict[str, Any] = {"count": count}
    seqs = columns.get("seq")
    if seqs is not None and min(seqs) > 0:
        columns = {**columns, "seq": [b - a for a, b in itertools.pairwise([seqs[0] - 1, *seqs])]}
        body["seq_base"] = seqs[0] - 1
    same = {n: c[0] for n, c in columns.items() if n not in _NOT_SHARED and c.count(c[0]) == count}
    if same:
        body["same"] = same
    varying = {n: c for n, c in columns.items() if n not in same}
    if varying:
        body["columns"] = varying
    if need:
        body["need"] = need
    return body


# --- version 5: v4, and each row's entries stored by column ----------------------------

#: A row column's value when an entry has none (a v5 row leaves out a column all default).
_ROW_DEFAULTS: dict[str, Any] = {
    "basis": "",
    "reason": "",
    "rids": [],
    "request": b"",
    "request_signer": "",
    "seq": 0,
    "id": "",
    "to": "",
}


def _row_v5(entries: list[list[Any]]) -> list[Any]:
    """A row's entries (`ROW_COLUMNS` each, `to` included) by column: `[count, same, cols]`,
    `same` the columns whose value every entry shares, once, as `[name, value, ...]` (left
    out when that is the column's default), `cols` the others as `[name, [value per entry],
    ...]`. Lists, not maps: the state's canonical encoding sorts no keys (a map per row cost
    more than v4's lists at a few entries per patient). The same fields as a v2 row, so the
    same bounds: only fewer bytes to build, encode and hash (a journal's 500 reads of one
    patient share all but `n`, `rids`, `seq`)."""
    named = zip(ROW_COLUMNS, zip(*entries, strict=True), strict=True)
    return _by_column(len(entries), named)


def _by_column(count: int, named: Iterable[tuple[str, Sequence[Any]]]) -> list[Any]:
    """`_row_v5` of the row's columns, by name (a column of defaults may be left out)."""
    same: list[Any] = []
    cols: list[Any] = []
    for name, column in named:
        first = column[0]
        if column.count(first) != count:
            cols += (name, list(column))
        elif name not in _ROW_DEFAULTS or first != _ROW_DEFAULTS[name]:
            same += (name, first)
    return [count, same, cols]


def _plain_rows(
    ctx: Context, columns: list[list[Any]], kind: type[EntryV2], custodian: str, mark: int
) -> tuple[dict[str, tuple[Any, list[tuple[str, str, str]]]], int] | None:
    """v5's rows of a journal's plain tx, by column without an entry object or a loop step
    per entry: every entry numbered (`seq`, strictly increasing), none citing a request,
    none with a v1 id, a receiver or a patient actor (each needs its own check). The same
    checks as `_log_rows`' loop (each distinct actor once, the skipped entries at or below
    the mark not checked); None when the tx is not plain or a check refuses: the loop then
    runs and refuses, naming the entry."""
    actor, actor_org, pid, action, purpose, outcome, basis, reason, rids, request, ids, seq = (
        columns[:12]
    )
    count = len(actor)
    if (
        request.count(None) != count
        or ids.count("") != count
        or (kind is EntryV3 and columns[12].count("") != count)
        or not 0 < seq[0] <= seq[-1] < MAX_SEQ
        or not all(map(operator.lt, seq, itertools.islice(seq, 1, None)))
    ):
        return None
    first = bisect.bisect_right(seq, mark)  # those at or below the mark: written already
    pairs: dict[tuple[str, str], int] = {}
    for n in range(first, count):
        pairs.setdefault((actor[n], actor_org[n]), n)
    try:
        for (who, _), n in pairs.items():
            if who.startswith("patient:"):
                return None
            _check_actor(ctx, n, kind(*[c[n] for c in columns]), custodian)
    except TxError:
        return None
    rows: dict[str, tuple[Any, list[tuple[str, str, str]]]] = {}
    patients: dict[str, list[int]] = {}  # each patient's entries, in order of first entry
    if len(set(itertools.islice(pid, first, None))) == 1:
        patients[pid[first]] = list(range(first, count))
    else:
        for n in range(first, count):
            patients.setdefault(pid[n], []).append(n)
    single = len(patients) == 1
    for p, at in patients.items():
        named: dict[str, list[Any]] = {"n": at}
        for name, column in (
            ("actor", actor),
            ("actor_org", actor_org),
            ("action", action),
            ("purpose", purpose),
            ("outcome", outcome),
            ("basis", basis),
            ("reason", reason),
            ("rids", rids),
            ("seq", seq),
        ):
            named[name] = column[first:] if single else [column[n] for n in at]
        acts = list(zip(named["actor_org"], named["action"], named["outcome"], strict=True))
        rows[p] = (_by_column(len(at), named.items()), acts)
    return rows, seq[-1]


def log_v5(ctx: Context, msg: LogV3) -> None:
    """`access.log`, version 5: v4's body and checks; a row's entries stored by column
    (`_row_v5`), which the queries read beside v2's rows."""
    body = LogV2(columns=_expand(msg), entries=msg.entries, need=msg.need)
    _log_rows(ctx, body, EntryV3, receivers=True, by_column=True)


def log_v6(ctx: Context, msg: LogV3) -> None:
    """`access.log`, version 6: v5, from the organisation key only. Up to v5 any active key
    of the hospital signed it, so a clinician holding their own key could write entries into
    the hospital's trail, "served by" it: reads or denials that never were, a patient's
    trail filled. Only the node's audit journal writes the trail (node/audit.py, with the
    organisation wallet); an access that is part of a practitioner's own act is recorded by
    that act's contract (`record_entry`: a registration's `create` entry), not by this tx.
    A registration's disclosures are exports to another hospital, not the signer's own act:
    from `records` v4 they too are the organisation key's only."""
    body = LogV2(columns=_expand(msg), entries=msg.entries, need=msg.need)
    _log_rows(ctx, body, EntryV3, receivers=True, by_column=True, org_only=True)


def _forget_mark(ctx: Context, org: str) -> None:
    """governance's rebinding of org: the mark goes with the lost keys. Whoever held them
    until the vote (a thief) could have lifted it to just below MAX_SEQ, and the new home's
    journal, numbering from its clock, would see every entry skipped or refused for good."""
    key = f"acc/seq/{org}"
    if ctx.state.has(key):
        ctx.state.delete(key)


governance.REBIND_HOOKS.append(_forget_mark)


def q_seq(state: StateView, args: dict[str, Any]) -> int:
    """The last journal sequence on the chain of the hospital whose `key` signs (0 if none)."""
    key = args.get("key")
    actor = resolve_actor(state, key) if isinstance(key, bytes) else None
    return 0 if actor is None else int(state.get(f"acc/seq/{actor.org}") or 0)


#: v2's queries, unchanged since: v3 to v6 change only what `access.log` accepts.
_QUERIES_V2: dict[str, QueryFn] = {
    "access/of_patient": q_of_patient_v2,
    "access/by_custodian": q_by_custodian_v2,
    "access/seq": q_seq,
}

CONTRACTS = [
    Contract(
        name="access",
        version=1,
        messages={"access.log": Message("access.log", Log, log)},
        queries={"access/of_patient": q_of_patient, "access/by_custodian": q_by_custodian},
    ),
    Contract(
        name="access",
        version=2,
        messages={"access.log": Message("access.log", LogV2, log_v2)},
        queries=_QUERIES_V2,
    ),
    Contract(
        name="access",
        version=3,
        messages={"access.log": Message("access.log", LogV3, log_v3)},
        queries=_QUERIES_V2,
    ),
    Contract(
        name="access",
        version=4,
        messages={"access.log": Message("access.log", LogV3, log_v4)},
        queries=_QUERIES_V2,
    ),
    Contract(
        name="access",
        version=5,
        messages={"access.log": Message("access.log", LogV3, log_v5)},
        queries=_QUERIES_V2,
    ),
    Contract(
        name="access",
        version=6,
        messages={"access.log": Message("access.log", LogV3, log_v6)},
        queries=_QUERIES_V2,
    ),
]
