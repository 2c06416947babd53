"""Erasure: a patient's request, every holder's attestation, a deadline, a public status.

`erasure.request` is signed by the patient's key, or on their behalf by a custodian of the
patient with the evidence's hash and the practitioner who took it
(`patients.acting_for_patient`; a hospital that never treated the patient cannot have their
records made unreadable).

An erasure cannot be undone, and any member can make itself a custodian with one record
(records.py). So a request a hospital files on the patient's behalf is only *pending* for
`on_behalf_delay_ms` (policy, 72 h): `erasure.pending` (pid, effective_ms) and the on-behalf
notices (`patient.acted_for`, one `patient.notify` per other custodian) tell the patient and
the others; until then the patient's key, or an active DPO of another custodian whose custody
began before the request, may cancel it (`erasure.cancel`), and nothing else happens: no
obligation, no notice to the holders, `patients.erasure_requested` stays None (authorize,
consent, research and referral go on as before), `erasure/status` by pid answers None (the
pending request is at `erasure/pending`). At `effective_ms` the block's end opens it. A
request signed by the patient's own key opens at once. Opening it finds every holder of the
patient's data from the chain itself, at that block:
    custodians    hospitals with records in the index (`records`)
    copy holders  hospitals a consent let prefetch copies, hospitals a referral delivered
                  records to, a study's sponsor and the custodians that released data to it

Each holder must attest its crypto-shredding (`erasure.attest`: from v2 by its organisation
key, its node that erased the vault; v1 took its DPO's key too) before the deadline (30
days, GDPR art. 12(3)); an attestation may simply reference the holder's `records.shredded`
entry (leave `digest` empty). A custodian's own care records are
under legal retention (20 years from the record, French hospital files): its erasure is
refused with that reason (`retention until YYYY-MM-DD`), while its copies of other hospitals'
records, and every copy held elsewhere, must still be erased. Unattested obligations are
flagged at the deadline (`erasure.overdue`). From the request on, `authorize` lets no one but
the custodian read the patient's records, and no new consent, enrolment or referral is
accepted for them.

State (prefix `erasure/`):
    erasure/seq                                  last request id
    erasure/req/<id:012d>                        the request and its overall status
                                                 (pending, cancelled, open, overdue, done)
    erasure/pending/<pid>                        the patient's pending request id
    erasure/wait/<effective:016d>/<id:012d>      pending requests, by when they open
    erasure/ob/<id:012d>/<holder>                one holder's obligation
    erasure/pid/<pid>                            the patient's request (patients.erasure_requested)
    erasure/due/<deadline:016d>/<id:012d>        deadlines
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from typing import Any

from medledger.contracts import consent, records, referral, research
from medledger.contracts.common import DAY_MS, check_pid
from medledger.contracts.governance import contract_version
from medledger.contracts.identity import acting_org
from medledger.contracts.patients import (
    acting_for_patient,
    announce_on_behalf,
    check_hash,
    erasure_requested,
    may_cancel,
)
from medledger.contracts.policies import DueQueue, params
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

DUE = DueQueue("erasure/due/")
WAIT = DueQueue("erasure/wait/")
_EPOCH = datetime.date(1970, 1, 1)


@dataclass
class Request:
    pid: str
    evidence_hash: bytes = b""
    taken_by: str = ""  # who took the request (see patients.acting_for_patient)
    channel: str = ""


@dataclass
class Cancel:
    """The patient's key, or an earlier custodian's DPO, stops a pending request."""

    request: int


@dataclass
class Attest:
    request: int
    digest: bytes = b""  # hash of the vault's erasure receipt; empty: use records.shredded's
    records: int = 0  # how many records (or copies) were destroyed
    # Replica peers that signed a receipt for dropping the erased keys, and those pending
    # (records.check_replicas).
    replicas_dropped: list[str] = field(default_factory=list)
    replicas_pending: list[str] = field(default_factory=list)


def iso_date(ms: int) -> str:
    return (_EPOCH + datetime.timedelta(days=ms // DAY_MS)).isoformat()


def add_years(ms: int, years: int) -> int:
    """The same instant `years` calendar years later (29 February -> 28 February), integers only."""
    day = _EPOCH + datetime.timedelta(days=ms // DAY_MS)
    try:
        later = day.replace(year=day.year + years)
    except ValueError:
        later = day.replace(year=day.year + years, day=28)
    return (later - _EPOCH).days * DAY_MS + ms % DAY_MS


def _custodians(state: StateView, pid: str) -> dict[str, tuple[int, int]]:
    """custodian -> (number of records, time of the latest) for this patient."""
    found: dict[str, tuple[int, int]] = {}
    for custodian, entry in records.indexed(state, pid):
        n, latest = found.get(custodian, (0, 0))
        found[custodian] = (n + 1, max(latest, int(entry["time"])))
    return found


def _copy_holders(state: StateView, pid: str) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for source in (consent.holders, referral.holders, research.holders):
        for org, why in source(state, pid).items():
            merged.setdefault(org, []).extend(why)
    return merged


def get_request(state: StateView, rid: int) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"erasure/req/{rid:012d}")
    return found


def obligations(state: StateView, rid: int) -> list[dict[str, Any]]:
    return [o for _, o in state.scan(f"erasure/ob/{rid:012d}/")]


def _settle(ctx: Context, req: dict[str, Any]) -> None:
    """Recompute the request's status from its obligations: done, overdue or open."""
    statuses = {o["status"] for o in obligations(ctx.state, req["id"])}
    before = req["status"]
    if statuses <= {"attested", "refused"}:
        req["status"] = "done"
    elif "overdue" in statuses:
        req["status"] = "overdue"
    else:
        req["status"] = "open"
    ctx.state.put(f"erasure/req/{req['id']:012d}", req)
    if req["status"] == "done" and before != "done":
        DUE.remove(ctx.state, req["deadline"], req["id"])
        ctx.emit("erasure.completed", id=req["id"], pid=req["pid"])


def pending_request(state: StateView, pid: str) -> dict[str, Any] | None:
    """The patient's request still waiting to open (filed on their behalf), if any."""
    rid = state.get(f"erasure/pending/{pid}")
    return None if rid is None else get_request(state, int(rid))


def request(ctx: Context, msg: Request) -> None:
    check_pid(msg.pid)
    who = acting_for_patient(ctx, msg.pid, msg.evidence_hash, msg.taken_by, msg.channel)
    if erasure_requested(ctx.state, msg.pid) is not None:
        raise TxError(Code.CONFLICT, "this patient's erasure was already requested")
    pending = pending_request(ctx.state, msg.pid)
    if pending is not None:
        if who.on_behalf:
            raise TxError(Code.CONFLICT, "this patient's erasure is already pending")
        # The patient's own key asks for it now: the pending one gives way to theirs.
        pending["status"] = "cancelled"
        pending["cancelled"] = {"by": "superseded", "time": ctx.time_ms, "tx": ctx.tx_id}
        ctx.state.put(f"erasure/req/{pending['id']:012d}", pending)
        ctx.state.delete(f"erasure/pending/{msg.pid}")
        WAIT.remove(ctx.state, pending["effective_ms"], pending["id"])
        ctx.emit("erasure.cancelled", id=pending["id"], pid=msg.pid, by="superseded")
    rid = int(ctx.state.get("erasure/seq") or 0) + 1
    ctx.state.put("erasure/seq", rid)
    req: dict[str, Any] = {
        "id": rid,
        "pid": msg.pid,
        "signed": who.to_obj(),
        "time": ctx.time_ms,
        "holders": [],
        "status": "pending",
        "tx": ctx.tx_id,
    }
    if who.on_behalf:
        effective = ctx.time_ms + params(ctx.state)["on_behalf_delay_ms"]
        req["effective_ms"] = effective
        ctx.state.put(f"erasure/req/{rid:012d}", req)
        ctx.state.put(f"erasure/pending/{msg.pid}", rid)
        WAIT.add(ctx.state, effective, rid)
        ctx.emit("erasure.pending", id=rid, pid=msg.pid, org=who.org, effective_ms=effective)
        announce_on_behalf(ctx, msg.pid, who, "erasure.request", id=rid)
        return
    req["effective_ms"] = ctx.time_ms
    _open(ctx, req)


def _open(ctx: Context, req: dict[str, Any]) -> None:
    """The request takes effect: every holder's obligation, from the chain at this block."""
    p = params(ctx.state)
    rid, pid = req["id"], req["pid"]
    deadline = ctx.time_ms + p["erasure_deadline_ms"]
    custodians = _custodians(ctx.state, pid)
    copies = _copy_holders(ctx.state, pid)
    holders = sorted(set(custodians) | set(copies))
    for org in holders:
        ob: dict[str, Any] = {"holder": org, "custody": None, "copies": None, "attestation": None}
        if org in custodians:
            n, latest = custodians[org]
            until = add_years(latest, p["retention_years"])
            retained = until > ctx.time_ms
            ob["custody"] = {
                "records": n,
                "retention_until": until,
                "status": "refused" if retained else "pending",
                "reason": f"retention until {iso_date(until)}" if retained else "",
            }
        if org in copies:
            ob["copies"] = {"sources": sorted(set(copies[org])), "status": "pending"}
        parts = [x for x in (ob["custody"], ob["copies"]) if x is not None]
        ob["status"] = "pending" if any(x["status"] == "pending" for x in parts) else "refused"
        ob["reason"] = ob["custody"]["reason"] if ob["status"] == "refused" else ""
        ctx.state.put(f"erasure/ob/{rid:012d}/{org}", ob)
        ctx.emit(
            "erasure.notify",
            id=rid,
            pid=pid,
            holder=org,
            action="erase" if ob["status"] == "pending" else "retain",
        )
    req.update(deadline=deadline, holders=holders, status="open")
    ctx.state.put(f"erasure/req/{rid:012d}", req)
    ctx.state.put(f"erasure/pid/{pid}", rid)
    DUE.add(ctx.state, deadline, rid)
    ctx.emit("erasure.requested", id=rid, pid=pid, holders=len(holders), deadline=deadline)
    _settle(ctx, req)


def cancel(ctx: Context, msg: Cancel) -> None:
    req = get_request(ctx.state, msg.request)
    if req is None:
        raise TxError(Code.NOT_FOUND, f"no erasure request {msg.request}")
    if req["status"] != "pending":
        raise TxError(
            Code.CONFLICT, f"erasure request {msg.request} is {req['status']}, not pending"
        )
    by = may_cancel(ctx.state, ctx.signer, req["pid"], req["signed"]["org"], req["time"])
    req["status"] = "cancelled"
    req["cancelled"] = {"by": by, "time": ctx.time_ms, "tx": ctx.tx_id}
    ctx.state.put(f"erasure/req/{msg.request:012d}", req)
    ctx.state.delete(f"erasure/pending/{req['pid']}")
    WAIT.remove(ctx.state, req["effective_ms"], msg.request)
    ctx.emit("erasure.cancelled", id=msg.request, pid=req["pid"], by=by)


def attest(ctx: Context, msg: Attest) -> None:
    org, practitioner = acting_org(ctx, role="dpo")
    if practitioner is not None and contract_version(ctx.state, "erasure") >= 2:
        # v1 took it from the holder's DPO too: one person's key then declared the vault
        # erased (any digest) without the node that erases it.
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {org}/{practitioner} may not attest an erasure; "
            "erasure.attest is signed by the hospital's organisation key (its node, which "
            "erased the vault: `medledger vault erase`)",
        )
    req = get_request(ctx.state, msg.request)
    if req is None:
        raise TxError(Code.NOT_FOUND, f"no erasure request {msg.request}")
    key = f"erasure/ob/{msg.request:012d}/{org}"
    ob = ctx.state.get(key)
    if ob is None:
        raise TxError(Code.NOT_FOUND, f"{org} holds nothing under erasure request {msg.request}")
    if ob["status"] == "attested":
        raise TxError(Code.CONFLICT, f"{org} already attested erasure request {msg.request}")
    custody = ob["custody"]
    if (
        custody is not None
        and custody["status"] == "refused"
        and custody["retention_until"] <= ctx.time_ms
    ):
        custody["status"] = "pending"  # the retention period has run out since
        custody["reason"] = ""
    parts = [x for x in (custody, ob["copies"]) if x is not None and x["status"] != "refused"]
    if not parts:
        raise TxError(Code.REFUSED, f"care records under legal {custody['reason']}")
    if msg.records < 0:
        raise TxError(Code.INVALID_BODY, "field records: must not be negative")
    digest = msg.digest
    if digest:
        check_hash(digest, "digest")
    else:
        shredded = records.shred_statement(ctx.state, org, req["pid"])
        if shredded is None:
            raise TxError(
                Code.INVALID_BODY,
                "field digest: required unless this hospital posted records.shredded first",
            )
        digest = bytes(shredded["digest"])
    replicas = records.check_replicas(ctx.state, org, msg.replicas_dropped, msg.replicas_pending)
    for part in parts:
        part["status"] = "attested"
    late = ctx.time_ms > req["deadline"]
    ob["attestation"] = {
        "digest": digest,
        "records": msg.records,
        "by": practitioner or "",
        "time": ctx.time_ms,
        "late": late,
        "tx": ctx.tx_id,
        **replicas,
    }
    ob["status"] = "attested"
    ob["reason"] = custody["reason"] if custody is not None else ""
    ctx.state.put(key, ob)
    ctx.emit("erasure.attested", id=msg.request, pid=req["pid"], holder=org, late=int(late))
    _settle(ctx, req)


def end_block(ctx: Context) -> None:
    for rid in WAIT.pop_due(ctx.state, ctx.time_ms):
        req = get_request(ctx.state, rid)
        if req is None or req["status"] != "pending":
            continue
        ctx.state.delete(f"erasure/pending/{req['pid']}")
        _open(ctx, req)
    for rid in DUE.pop_due(ctx.state, ctx.time_ms):
        req = get_request(ctx.state, rid)
        if req is None or req["status"] == "done":
            continue
        for ob in obligations(ctx.state, rid):
            if ob["status"] != "pending":
                continue
            ob["status"] = "overdue"
            ctx.state.put(f"erasure/ob/{rid:012d}/{ob['holder']}", ob)
            ctx.emit("erasure.overdue", id=rid, pid=req["pid"], holder=ob["holder"])
        _settle(ctx, req)


def _holds_copies_under_request(state: StateView, pid: str, org: str) -> bool:
    """Whether org holds copies of the patient under their erasure request (an obligation
    with copies): records v2 then takes its `records.shredded` though it was no custodian."""
    rid = erasure_requested(state, pid)
    ob = None if rid is None else state.get(f"erasure/ob/{rid:012d}/{org}")
    return ob is not None and ob["copies"] is not None


records.SHRED_RULES.append(_holds_copies_under_request)


# -- queries -------------------------------------------------------------------------------


def q_status(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    """A request with every holder's obligation: by id, or the patient's (pid)."""
    rid = args.get("id")
    if rid is None and isinstance(args.get("pid"), str):
        rid = erasure_requested(state, args["pid"])
        if rid is None:
            return None
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise TxError(Code.INVALID_BODY, "erasure/status needs an integer id or a pid")
    req = get_request(state, rid)
    if req is None:
        return None
    return {**req, "obligations": obligations(state, rid)}


def q_pending(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    """The patient's request still waiting to open, with `effective_ms` (or None)."""
    pid = args.get("pid")
    if not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "erasure/pending needs pid")
    return pending_request(state, pid)


def q_list(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Requests, newest first; `holder` keeps those where that hospital has an obligation."""
    holder, status = args.get("holder"), args.get("status")
    found = []
    for _, req in state.scan("erasure/req/"):
        if holder is not None and holder not in req["holders"]:
            continue
        if status is not None and req["status"] != status:
            continue
        found.append(req)
    found.reverse()
    return found


_V1 = Contract(
    name="erasure",
    version=1,
    messages={
        "erasure.request": Message("erasure.request", Request, request),
        "erasure.attest": Message("erasure.attest", Attest, attest),
        "erasure.cancel": Message("erasure.cancel", Cancel, cancel),
    },
    queries={
        "erasure/status": q_status,
        "erasure/list": q_list,
        "erasure/pending": q_pending,
    },
    end_block=end_block,
)

#: v2 (session 14): `erasure.attest` only from the organisation key (v1: its DPO's too).
CONTRACTS = [_V1, dataclasses.replace(_V1, version=2)]
