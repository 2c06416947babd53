"""Access: the audit trail. Every read, search, create, export or denial becomes an entry.

An entry `{actor, org, pid, rids, action, purpose, basis, outcome, reason}` is written by the
hospital whose node served (or refused) the access, naming the practitioner or hospital that
asked. Entries are shaped to map one to one onto a FHIR AuditEvent following IHE BALP
(Basic Audit Log Patterns): action -> AuditEvent.action/subtype, actor/org -> agent,
pid -> entity (patient), rids -> entity (data), purpose -> purposeOfEvent, outcome -> outcome,
basis -> the authorization that allowed it (consent, emergency, referral, enrolment, custodian).

State (prefix `acc/`):
    acc/pid/<pid>/<time:016d>/<tx id hex>/<n:04d>   one entry, in time order per patient
    acc/org/<org>/<time:016d>/<tx id hex>/<n:04d>   -> same entry key (who served what)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medledger.contracts.common import check_id
from medledger.contracts.records import acting_org, check_pid
from medledger.ledger.contract import Context, Contract, Message, parse_message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

ACTIONS = ("read", "search", "create", "update", "export", "delete", "break-glass")
OUTCOMES = ("granted", "denied")
PURPOSES = ("treatment", "emergency", "research", "patient-request", "audit", "operations")
MAX_ENTRIES = 500


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
    for j, rid in enumerate(e.rids):
        check_id(rid, f"entries[{i}].rids[{j}]")
    return e


def log(ctx: Context, msg: Log) -> None:
    custodian, _ = acting_org(ctx)
    if not 0 < len(msg.entries) <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field entries: 1..{MAX_ENTRIES} entries per tx")
    for n, raw in enumerate(msg.entries):
        record_entry(ctx, custodian, n, _check(n, raw))


def record_entry(ctx: Context, custodian: str, n: int, e: Entry) -> str:
    """Write one access entry (the n-th of its tx); returns its key. Other contracts use it
    to record accesses that happen as part of their own txs (a disclosure at registration)."""
    suffix = f"{ctx.time_ms:016d}/{ctx.tx_id.hex()}/{n:04d}"
    key = f"acc/pid/{e.pid}/{suffix}"
    ctx.state.put(
        key,
        {
            "actor": e.actor,
            "actor_org": e.actor_org,
            "custodian": custodian,
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
