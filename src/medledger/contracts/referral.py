"""Referral: hospital A sends a patient to hospital B for a procedure on a date.

`referral.create` (by A) names the receiving hospital, the date, the categories B needs and,
optionally, the records A will deliver. It needs the patient's consent: either an active
consent granting B treatment access, or the hash of the evidence A holds (the patient signed
the referral letter). The procedure itself is clinical data, so only the hash of the referral
letter is posted.

With it, B may read those categories of A's records during a window around the date
(`referral_before_ms` .. `referral_after_ms`, policy parameters frozen into the referral when
it is made). When B records the admission (`referral.admit`), the contract creates an
obligation: A delivers the named records by a deadline (`referral_delivery_ms`).
`referral.deliver` posts the delivered rids and their commitments, which must be the ones
registered in the records index; `referral.confirm` is B saying the resources it received
hash to those commitments (B checks off chain; the chain checks B confirms exactly what was
delivered). Both are the exchange's statements of what it sent and received (the sync
agents send them, exchange/sync/delivery.py): from v2 only the organisation key signs them;
v1 took any practitioner key of that side, so a clinician's key could mark a delivery made
or received that never was (the commitments are public, on the chain). An obligation not
delivered by its deadline is flagged by end_block
(`obligation.overdue`); a late delivery is still accepted and marked late.

Who admits and cancels (v3, session 15): admitting creates the sender's delivery obligation
and is a clinical act at the receiving hospital, so it needs the organisation key or a care
role (records' `WRITER_ROLES`: physician, nurse, emergency); cancelling ends the patient's
referral (and the receiver's reading window it opened), the undoing of what a physician
ordered by `referral.create`, so it needs the organisation key or a physician, on either
side. v1 and v2 took any key of that side, a researcher's, a DPO's or an admin's.

Either side may cancel a referral not yet admitted. Its reason sits next to the pid for ever,
so it is a code from `CANCEL_REASONS` (or empty), never free text: "the tumour proved
inoperable" would be a clinical fact. Lists are bounded: at most `MAX_RIDS` records.

State (prefix `referral/`):
    referral/seq                                   last id
    referral/id/<id:012d>                          the referral and its obligation
    referral/to/<pid>/<to org>/<id:012d>           what authorize reads
    referral/due/<deadline:016d>/<id:012d>         delivery deadlines
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from medledger.contracts.access import RECEIVER_RULES
from medledger.contracts.categories import ALL, check_categories, covers
from medledger.contracts.common import check_id, check_pid
from medledger.contracts.consent import get_consent
from medledger.contracts.governance import contract_version, is_member
from medledger.contracts.identity import acting_org, roles_of
from medledger.contracts.patients import check_hash, erasure_requested
from medledger.contracts.policies import DueQueue, params
from medledger.contracts.records import WRITER_ROLES, is_shredded
from medledger.contracts.records import entry as record_entry
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

MAX_RIDS = 500
CANCEL_REASONS = ("patient-declined", "rescheduled", "entered-in-error", "other")
DUE = DueQueue("referral/due/")


@dataclass
class Create:
    pid: str
    to: str
    date_ms: int
    categories: list[str]
    procedure_hash: bytes  # SHA-256 of the referral letter kept off chain
    rids: list[str] = field(default_factory=list)  # the records A will deliver
    consent: int = 0  # an active consent granting `to` treatment access ...
    evidence_hash: bytes = b""  # ... or the hash of the patient's signed agreement


@dataclass
class Admit:
    id: int


@dataclass
class Deliver:
    id: int
    rids: list[str]
    commitments: list[bytes]


@dataclass
class Confirm:
    id: int
    commitments: list[bytes]


@dataclass
class Cancel:
    id: int
    reason: str = ""  # "" or a code from CANCEL_REASONS


def get_referral(state: StateView, rid: int) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"referral/id/{rid:012d}")
    return found


def _save(state: StateView, ref: dict[str, Any]) -> None:
    state.put(f"referral/id/{ref['id']:012d}", ref)
    state.put(
        f"referral/to/{ref['pid']}/{ref['to']}/{ref['id']:012d}",
        {
            "id": ref["id"],
            "from": ref["from"],
            "categories": ref["categories"],
            "start_ms": ref["window"][0],
            "end_ms": ref["window"][1],
            "consent": ref["consent"],
            "status": ref["status"],
        },
    )


def _record_of(state: StateView, rid: str, pid: str, custodian: str, where: str) -> dict[str, Any]:
    entry = record_entry(state, rid)
    if entry is None or entry["pid"] != pid or entry["custodian"] != custodian:
        raise TxError(
            Code.NOT_FOUND, f"field {where}: {rid!r} is not a record of {custodian} for this pid"
        )
    return entry


def _check_consent_proof(ctx: Context, msg: Create, to: str) -> None:
    if msg.consent:
        consent = get_consent(ctx.state, msg.consent)
        if (
            consent is None
            or consent["pid"] != msg.pid
            or consent["grantee"] != f"org:{to}"
            or consent["purpose"] != "treatment"
        ):
            raise TxError(
                Code.REFUSED, f"field consent: {msg.consent} is not a treatment consent to {to}"
            )
        ended = consent["end_ms"] and consent["end_ms"] <= ctx.time_ms
        if consent["status"] != "active" or ended:
            raise TxError(Code.REFUSED, f"field consent: consent {msg.consent} is not in force")
        if msg.evidence_hash:
            check_hash(msg.evidence_hash, "evidence_hash")
    elif msg.evidence_hash:
        check_hash(msg.evidence_hash, "evidence_hash")
    else:
        raise TxError(
            Code.REFUSED,
            "a referral needs the patient's consent: field consent (a consent id) or "
            "evidence_hash (the hash of the patient's signed agreement)",
        )


def create(ctx: Context, msg: Create) -> None:
    origin, practitioner = acting_org(ctx, role="physician")
    check_pid(msg.pid)
    check_id(msg.to, "to")
    if msg.to == origin:
        raise TxError(Code.INVALID_BODY, "field to: a hospital does not refer to itself")
    if not is_member(ctx.state, msg.to):
        raise TxError(Code.NOT_FOUND, f"field to: {msg.to!r} is not a member hospital")
    categories = check_categories(msg.categories)
    if categories == [ALL]:
        raise TxError(Code.INVALID_BODY, "field categories: name the categories B needs")
    check_hash(msg.procedure_hash, "procedure_hash")
    p = params(ctx.state)
    window = [msg.date_ms - p["referral_before_ms"], msg.date_ms + p["referral_after_ms"]]
    if msg.date_ms <= 0 or window[1] <= ctx.time_ms:
        raise TxError(Code.INVALID_BODY, "field date_ms: the referral's window is already over")
    if len(msg.rids) > MAX_RIDS or len(set(msg.rids)) != len(msg.rids):
        raise TxError(Code.INVALID_BODY, f"field rids: distinct record ids, at most {MAX_RIDS}")
    for i, record in enumerate(msg.rids):
        _record_of(ctx.state, record, msg.pid, origin, f"rids[{i}]")
    if is_shredded(ctx.state, origin, msg.pid) or erasure_requested(ctx.state, msg.pid) is not None:
        raise TxError(Code.REFUSED, "the patient's data is erased or under an erasure request")
    _check_consent_proof(ctx, msg, msg.to)
    rid = int(ctx.state.get("referral/seq") or 0) + 1
    ctx.state.put("referral/seq", rid)
    ref = {
        "id": rid,
        "pid": msg.pid,
        "from": origin,
        "by": practitioner or "",
        "to": msg.to,
        "date_ms": msg.date_ms,
        "categories": categories,
        "procedure_hash": msg.procedure_hash,
        "rids": list(msg.rids),
        "consent": msg.consent,
        "evidence_hash": msg.evidence_hash,
        "window": window,
        "status": "created",
        "obligation": None,
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
    }
    _save(ctx.state, ref)
    ctx.emit(
        "referral.created", id=rid, pid=msg.pid, to=msg.to, date=msg.date_ms, **{"from": origin}
    )


def _own(ctx: Context, rid: int, side: str, node_act: str = "") -> dict[str, Any]:
    """The referral, if the signer is of its `side`. From v2, an act named in `node_act` (a
    delivery, a confirmation: what the hospital's exchange says it sent or received) needs
    the organisation key: v1 took any practitioner key of that side, with whichever role."""
    ref = get_referral(ctx.state, rid)
    if ref is None:
        raise TxError(Code.NOT_FOUND, f"no referral {rid}")
    org, practitioner = acting_org(ctx)
    if ref[side] != org:
        raise TxError(Code.UNAUTHORIZED, f"only {ref[side]} may do this on referral {rid}")
    if node_act and practitioner is not None and contract_version(ctx.state, "referral") >= 2:
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {org}/{practitioner} may not {node_act}; it is signed by "
            "the hospital's organisation key (its exchange, which holds the records)",
        )
    return ref


#: v3: the roles a practitioner signing an admission or a cancellation needs (the
#: organisation key holds every role).
ADMIT_ROLES = WRITER_ROLES
CANCEL_ROLES = frozenset({"physician"})


def _check_role(
    ctx: Context, org: str, practitioner: str | None, roles: frozenset[str], act: str
) -> None:
    """From v3, a practitioner signing `referral.admit` or `referral.cancel` (`act`) holds
    one of `roles`; v1 and v2 took any key of the side, whatever its role."""
    if practitioner is None or contract_version(ctx.state, "referral") < 3:
        return
    if not roles.intersection(roles_of(ctx.state, org, practitioner)):
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {org}/{practitioner} may not {act} a referral; it needs "
            f"the organisation key or one of the roles {', '.join(sorted(roles))}",
        )


def admit(ctx: Context, msg: Admit) -> None:
    ref = _own(ctx, msg.id, "to")
    _check_role(ctx, *acting_org(ctx), ADMIT_ROLES, "admit")
    if ref["status"] != "created":
        raise TxError(Code.CONFLICT, f"referral {msg.id} is {ref['status']}")
    if ctx.time_ms > ref["window"][1]:
        raise TxError(Code.EXPIRED, f"referral {msg.id}: its window is over")
    deadline = ctx.time_ms + params(ctx.state)["referral_delivery_ms"]
    ref["status"] = "admitted"
    ref["obligation"] = {
        "status": "pending",
        "created": ctx.time_ms,
        "deadline": deadline,
        "overdue": False,
        "delivered": None,
        "confirmed": None,
    }
    _save(ctx.state, ref)
    DUE.add(ctx.state, deadline, msg.id)
    ctx.emit("referral.admitted", id=msg.id, pid=ref["pid"], to=ref["to"])
    ctx.emit(
        "obligation.created",
        referral=msg.id,
        pid=ref["pid"],
        to=ref["to"],
        deadline=deadline,
        **{"from": ref["from"]},
    )


def deliver(ctx: Context, msg: Deliver) -> None:
    ref = _own(ctx, msg.id, "from", "state a referral's delivery")
    if ref["status"] != "admitted":
        raise TxError(Code.CONFLICT, f"referral {msg.id} is {ref['status']}, not admitted")
    if not msg.rids or len(msg.rids) > MAX_RIDS or len(set(msg.rids)) != len(msg.rids):
        raise TxError(Code.INVALID_BODY, f"field rids: 1..{MAX_RIDS} distinct record ids")
    if len(msg.commitments) != len(msg.rids):
        raise TxError(Code.INVALID_BODY, "field commitments: one per rid, in the same order")
    if ref["rids"]:
        missing = sorted(set(ref["rids"]) - set(msg.rids))
        extra = sorted(set(msg.rids) - set(ref["rids"]))
        if missing or extra:
            raise TxError(
                Code.REFUSED,
                f"field rids: deliver exactly the named records (missing {missing}, extra {extra})",
            )
    for i, (rid, commitment) in enumerate(zip(msg.rids, msg.commitments, strict=True)):
        entry = _record_of(ctx.state, rid, ref["pid"], ref["from"], f"rids[{i}]")
        if commitment != entry["commitment"]:
            raise TxError(
                Code.REFUSED,
                f"field commitments[{i}]: not the registered commitment of record {rid}",
            )
    ob = ref["obligation"]
    ob["delivered"] = {
        "rids": list(msg.rids),
        "commitments": list(msg.commitments),
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
        "late": ctx.time_ms > ob["deadline"],
    }
    ob["status"] = "delivered"
    ref["status"] = "delivered"
    _save(ctx.state, ref)
    DUE.remove(ctx.state, ob["deadline"], msg.id)
    ctx.emit("referral.delivered", id=msg.id, pid=ref["pid"], to=ref["to"], records=len(msg.rids))


def confirm(ctx: Context, msg: Confirm) -> None:
    ref = _own(ctx, msg.id, "to", "confirm a referral's delivery")
    if ref["status"] != "delivered":
        raise TxError(Code.CONFLICT, f"referral {msg.id} is {ref['status']}, not delivered")
    delivered = ref["obligation"]["delivered"]
    if len(msg.commitments) != len(delivered["rids"]):
        raise TxError(
            Code.INVALID_BODY,
            f"field commitments: {len(delivered['rids'])} expected, in the delivery's order",
        )
    for i, (rid, commitment) in enumerate(zip(delivered["rids"], msg.commitments, strict=True)):
        if commitment != delivered["commitments"][i]:
            raise TxError(
                Code.REFUSED,
                f"field commitments[{i}]: record {rid} does not match its registered commitment",
            )
    ref["obligation"]["confirmed"] = {"time": ctx.time_ms, "tx": ctx.tx_id}
    ref["obligation"]["status"] = "fulfilled"
    ref["status"] = "confirmed"
    _save(ctx.state, ref)
    ctx.emit("obligation.fulfilled", referral=msg.id, pid=ref["pid"], to=ref["to"])


def cancel(ctx: Context, msg: Cancel) -> None:
    if msg.reason and msg.reason not in CANCEL_REASONS:
        raise TxError(
            Code.INVALID_BODY,
            f"field reason: empty or one of {', '.join(CANCEL_REASONS)} (no free text on chain)",
        )
    ref = get_referral(ctx.state, msg.id)
    if ref is None:
        raise TxError(Code.NOT_FOUND, f"no referral {msg.id}")
    org, practitioner = acting_org(ctx)
    if org not in (ref["from"], ref["to"]):
        raise TxError(
            Code.UNAUTHORIZED, f"referral {msg.id} is between {ref['from']} and {ref['to']}"
        )
    _check_role(ctx, org, practitioner, CANCEL_ROLES, "cancel")
    if ref["status"] != "created":
        raise TxError(Code.CONFLICT, f"referral {msg.id} is {ref['status']}: too late to cancel")
    ref["status"] = "cancelled"
    ref["cancelled"] = {"by": org, "reason": msg.reason, "time": ctx.time_ms}
    _save(ctx.state, ref)
    ctx.emit("referral.cancelled", id=msg.id, pid=ref["pid"], by=org)


def end_block(ctx: Context) -> None:
    for rid in DUE.pop_due(ctx.state, ctx.time_ms):
        ref = get_referral(ctx.state, rid)
        if ref is None or ref["status"] != "admitted":
            continue
        ob = ref["obligation"]
        ob["overdue"] = True
        ob["status"] = "overdue"
        _save(ctx.state, ref)
        ctx.emit(
            "obligation.overdue",
            referral=rid,
            pid=ref["pid"],
            to=ref["to"],
            deadline=ob["deadline"],
            **{"from": ref["from"]},
        )


# -- what authorize asks --------------------------------------------------------------------


def entries_for(state: StateView, pid: str, org: str) -> list[dict[str, Any]]:
    return [v for _, v in state.scan(f"referral/to/{pid}/{org}/")]


def _receives_by_referral(state: StateView, pid: str, to: str, custodian: str) -> bool:
    """access v4: a referral of the patient from the custodian to `to` (any status)."""
    return any(r.get("from") == custodian for r in entries_for(state, pid, to))


RECEIVER_RULES.append(_receives_by_referral)


def index_of(state: StateView, pid: str) -> list[dict[str, Any]]:
    """Every index entry of referrals of the patient, to any hospital."""
    return [v for _, v in state.scan(f"referral/to/{pid}/")]


def check(
    state: StateView,
    entry: dict[str, Any],
    custodian: str,
    category: str,
    purpose: str,
    at_ms: int,
) -> tuple[int, str | None]:
    """(checks passed, None) if this referral lets its receiver read the record, else why not."""
    rid = entry["id"]
    if entry["status"] == "cancelled":
        return 0, f"referral cancelled: referral {rid}"
    if entry["from"] != custodian:
        return 1, f"other hospital: referral {rid} covers records held by {entry['from']}"
    if purpose != "treatment":
        return 2, f"other purpose: referral {rid} is for treatment, not {purpose}"
    if not covers(entry["categories"], category):
        cats = ", ".join(entry["categories"])
        return 3, f"other category: referral {rid} covers {cats}, not {category}"
    if entry["consent"]:
        consent = get_consent(state, entry["consent"])
        revoked = 0 if consent is None else int(consent.get("revoked", {}).get("time", 0))
        if consent is None or (revoked and at_ms >= revoked):
            return 4, f"consent revoked: referral {rid} rests on consent {entry['consent']}"
    if not entry["start_ms"] <= at_ms <= entry["end_ms"]:
        return 4, f"referral outside window: referral {rid} is open around its date only"
    return 6, None


def holders(state: StateView, pid: str) -> dict[str, list[str]]:
    """Hospitals that received this patient's records by a referral delivery."""
    found: dict[str, list[str]] = {}
    for key, entry in state.scan(f"referral/to/{pid}/"):
        if entry["status"] in ("delivered", "confirmed"):
            found.setdefault(key.split("/")[3], []).append(f"referral:{entry['id']}")
    return found


# -- queries -------------------------------------------------------------------------------


def q_status(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    rid = args.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise TxError(Code.INVALID_BODY, "referral/status needs an integer id")
    return get_referral(state, rid)


def q_list(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Referrals, newest first: a hospital's (sent or received) or a patient's."""
    org, pid = args.get("org"), args.get("pid")
    found = []
    for _, ref in state.scan("referral/id/"):
        if org is not None and org not in (ref["from"], ref["to"]):
            continue
        if pid is not None and ref["pid"] != pid:
            continue
        found.append(ref)
    found.reverse()
    return found


_V1 = Contract(
    name="referral",
    version=1,
    messages={
        "referral.create": Message("referral.create", Create, create),
        "referral.admit": Message("referral.admit", Admit, admit),
        "referral.deliver": Message("referral.deliver", Deliver, deliver),
        "referral.confirm": Message("referral.confirm", Confirm, confirm),
        "referral.cancel": Message("referral.cancel", Cancel, cancel),
    },
    queries={"referral/status": q_status, "referral/list": q_list},
    end_block=end_block,
)

#: v2 (session 14): `referral.deliver` and `referral.confirm` only from the organisation key.
#: v3 (session 15): `referral.admit` needs the organisation key or a care role,
#: `referral.cancel` the organisation key or a physician (`_check_role`).
CONTRACTS = [_V1, dataclasses.replace(_V1, version=2), dataclasses.replace(_V1, version=3)]
