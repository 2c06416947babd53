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
- `actor` names someone of `actor_org`: "practitioner:<actor_org>/<id>" or "org:<actor_org>",
  or "patient:<pid>" for a patient signed in at the serving hospital (then `actor_org` is the
  signer's hospital, and the pid is the entry's own, except in a denial: another patient's
  refused attempt is evidence worth keeping).
- An entry whose `actor_org` is another hospital is a remote access: it must carry `request`,
  the hash of that hospital's signed request which the serving hospital keeps as evidence,
  and the actor must be a registered practitioner (or the organisation) of a member. So a
  hospital cannot, without a request it can be asked to show, attribute an act to another.

`basis` is a code, not text: what authorize names (`custodian`, `patient`, `consent:<id>`,
`referral:<id>`, `emergency:<id>`, `enrolment:<study>`), so that a hospital cannot write a
diagnosis next to a pid in it.

Bounds (free text on the chain can never be erased): `reason` at most `MAX_REASON`
characters, `basis` at most `MAX_BASIS`, `rids` at most `MAX_RIDS` per entry (callers split a
longer list into several entries), `MAX_ENTRIES` entries per tx.

State (prefix `acc/`):
    acc/pid/<pid>/<time:016d>/<tx id hex>/<n:04d>   one entry, in time order per patient
    acc/org/<org>/<time:016d>/<tx id hex>/<n:04d>   -> same entry key (who served what)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medledger.contracts.common import check_id
from medledger.contracts.records import MAX_BASIS, acting_org, check_pid
from medledger.ledger.contract import Context, Contract, Message, parse_message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

ACTIONS = ("read", "search", "create", "update", "export", "delete", "break-glass")
OUTCOMES = ("granted", "denied")
PURPOSES = ("treatment", "emergency", "research", "patient-request", "audit", "operations")
MAX_ENTRIES = 500
MAX_RIDS = 1000  # per entry
MAX_REASON = 300  # characters: a denial's reason, as authorize words it
MAX_ACTOR = 140  # "practitioner:" + two ids of at most 64
BASES = ("custodian", "patient")  # bases without an id
BASIS_KINDS = ("consent", "referral", "emergency", "enrolment")  # "<kind>:<id>"


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
    request: bytes = b""  # hash of the signed request kept as evidence, if remote


@dataclass
class Log:
    entries: list[dict[str, Any]]


def _check(i: int, raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise TxError(Code.INVALID_BODY, f"field entries[{i}]: expected a map")
    try:
        e = parse_message(Entry, raw)
    except TxError as exc:
        raise TxError(exc.code, f"entries[{i}]: {exc.message}") from None
    check_pid(e.pid, f"entries[{i}].pid")
    check_id(e.actor_org, f"entries[{i}].actor_org")
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
    if e.request and len(e.request) != 32:
        raise TxError(Code.INVALID_BODY, f"field entries[{i}].request: must be 32 bytes")
    if len(e.reason) > MAX_REASON:
        raise TxError(
            Code.INVALID_BODY, f"field entries[{i}].reason: at most {MAX_REASON} characters"
        )
    if len(e.basis) > MAX_BASIS:
        raise TxError(
            Code.INVALID_BODY, f"field entries[{i}].basis: at most {MAX_BASIS} characters"
        )
    if e.basis:
        check_basis(e.basis, f"entries[{i}].basis")
    if len(e.rids) > MAX_RIDS:
        raise TxError(
            Code.INVALID_BODY,
            f"field entries[{i}].rids: at most {MAX_RIDS} per entry (split into several entries)",
        )
    for j, rid in enumerate(e.rids):
        check_id(rid, f"entries[{i}].rids[{j}]")
    return e


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
        return
    # A remote access: another hospital asked, and the signer holds its signed request.
    if not e.request:
        raise TxError(
            Code.UNAUTHORIZED,
            f"field entries[{i}].request: an access by {e.actor_org}, served by {custodian}, "
            "needs the hash of its signed request",
        )
    if not ctx.state.has(f"gov/member/{e.actor_org}"):
        raise TxError(Code.NOT_FOUND, f"field entries[{i}].actor_org: not a member hospital")
    if practitioner is not None and not ctx.state.has(f"id/prac/{org}/{practitioner}"):
        raise TxError(Code.NOT_FOUND, f"{where}: {org} registered no practitioner {practitioner}")


def log(ctx: Context, msg: Log) -> None:
    custodian, _ = acting_org(ctx)
    if not 0 < len(msg.entries) <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field entries: 1..{MAX_ENTRIES} entries per tx")
    for n, raw in enumerate(msg.entries):
        entry = _check(n, raw)
        _check_actor(ctx, n, entry, custodian)
        record_entry(ctx, custodian, n, entry)


def record_entry(ctx: Context, custodian: str, n: int, e: Entry) -> str:
    """Write one access entry (the n-th of its tx); returns its key. Other contracts use it
    to record accesses that happen as part of their own txs (a disclosure at registration).

    `custodian` is the signer's hospital (the callers take it from `acting_org`), and the
    signing key is named beside it: the entry says who served it, not who claims to have."""
    org, practitioner = acting_org(ctx)
    signer = f"org:{org}" if practitioner is None else f"practitioner:{org}/{practitioner}"
    suffix = f"{ctx.time_ms:016d}/{ctx.tx_id.hex()}/{n:04d}"
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
            "request": e.request,
            "time": ctx.time_ms,
            "height": ctx.height,
            "tx": ctx.tx_id,
            "n": n,
        },
    )
    ctx.state.put(f"acc/org/{custodian}/{suffix}", key)
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


CONTRACTS = [
    Contract(
        name="access",
        version=1,
        messages={"access.log": Message("access.log", Log, log)},
        queries={"access/of_patient": q_of_patient, "access/by_custodian": q_by_custodian},
    )
]
