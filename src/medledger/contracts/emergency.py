"""Emergency access (break-the-glass): care first, accountability right after.

A practitioner with the `emergency` role opens access to a patient's records, at every
hospital, without consent, for a limited time (24 h by default, at most the policy maximum),
with a mandatory justification. Even a reason code ("unconscious", "life-threatening") is a
fact about the patient's health, so none goes on the chain: the justification (a code from
`REASONS` and the practitioner's note, with a random salt) stays with the practitioner's
hospital (`medledger.node.notes`), where its DPO reviews it, and only its SHA-256, `reason_hash`,
is posted: mandatory, and it binds the hospital to the text it will show. A tx that still
carries a `reason` is refused, naming the field.

Everyone concerned hears of it at once: `emergency.opened` carries the pid (the patient's
portal shows it) and one `emergency.notify` goes to each custodian holding the patient's
records (their DPO's queue). A DPO of the practitioner's hospital reviews it: `approved`, or
`flagged`, which also ends the access immediately. A practitioner who opens more than the
policy threshold within the sliding window (30 days) is flagged automatically.

Access is personal: only the practitioner who opened it may use it, for purpose `emergency`,
while it lasts (block time) and while they still hold the emergency role.

State (prefix `emergency/`):
    emergency/seq                                     last id
    emergency/id/<id:012d>                            the opening, its review
    emergency/by/<pid>/<org>/<practitioner>/<id:012d> what authorize reads: expiry
    emergency/count/<org>/<practitioner>/<opened:016d>/<id:012d>  openings in the window
    emergency/flag/<org>/<practitioner>               an overuse flag
    emergency/due/<expires:016d>/<id:012d>            expiries (end_block emits them)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medledger.contracts.common import check_pid
from medledger.contracts.identity import resolve_actor
from medledger.contracts.patients import check_hash
from medledger.contracts.policies import DueQueue, params
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

REASONS = ("life-threatening", "unconscious", "unable-to-consent", "urgent-care", "other")
VERDICTS = ("approved", "flagged")
DUE = DueQueue("emergency/due/")


@dataclass
class Open:
    pid: str
    reason_hash: bytes = b""  # SHA-256 of the justification kept off chain (mandatory)
    duration_ms: int = 0  # 0: the policy default
    reason: str = ""  # refused when given: the reason code is inside the justification


@dataclass
class Review:
    id: int
    verdict: str  # approved | flagged
    note_hash: bytes = b""


def get_opening(state: StateView, eid: int) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"emergency/id/{eid:012d}")
    return found


def _custodians(state: StateView, pid: str) -> list[str]:
    return sorted({str(c) for _, c in state.scan(f"rec/pid/{pid}/")})


def open_(ctx: Context, msg: Open) -> None:
    actor = resolve_actor(ctx.state, ctx.signer)
    if actor is None or not actor.active or actor.practitioner is None:
        raise TxError(Code.UNAUTHORIZED, "break-the-glass is opened by an active practitioner")
    if "emergency" not in actor.roles:
        raise TxError(Code.UNAUTHORIZED, "signer lacks the 'emergency' role")
    check_pid(msg.pid)
    if msg.reason:
        raise TxError(
            Code.INVALID_BODY,
            "field reason: a reason code tells about the patient's health and stays off chain, "
            "in the justification whose hash is reason_hash",
        )
    if not msg.reason_hash:
        raise TxError(
            Code.INVALID_BODY,
            "field reason_hash: a justification is mandatory (the SHA-256 of the reason code "
            "and note your hospital keeps)",
        )
    check_hash(msg.reason_hash, "reason_hash")
    p = params(ctx.state)
    duration = msg.duration_ms or min(p["emergency_default_ms"], p["emergency_max_ms"])
    if not 0 < duration <= p["emergency_max_ms"]:
        raise TxError(
            Code.INVALID_BODY,
            f"field duration_ms: 1..{p['emergency_max_ms']} (the policy maximum)",
        )
    org, practitioner = actor.org, actor.practitioner
    eid = int(ctx.state.get("emergency/seq") or 0) + 1
    ctx.state.put("emergency/seq", eid)
    expires = ctx.time_ms + duration
    custodians = _custodians(ctx.state, msg.pid)
    ctx.state.put(
        f"emergency/id/{eid:012d}",
        {
            "id": eid,
            "pid": msg.pid,
            "org": org,
            "practitioner": practitioner,
            "reason_hash": msg.reason_hash,
            "opened": ctx.time_ms,
            "expires": expires,
            "custodians": custodians,
            "status": "open",
            "review": None,
            "tx": ctx.tx_id,
        },
    )
    ctx.state.put(
        f"emergency/by/{msg.pid}/{org}/{practitioner}/{eid:012d}",
        {"opened": ctx.time_ms, "expires": expires},
    )
    DUE.add(ctx.state, expires, eid)
    ctx.emit(
        "emergency.opened",
        id=eid,
        pid=msg.pid,
        org=org,
        practitioner=practitioner,
        expires=expires,
    )
    for custodian in custodians:
        ctx.emit("emergency.notify", id=eid, pid=msg.pid, custodian=custodian)
    _count_openings(ctx, org, practitioner, eid, p)


def _count_openings(ctx: Context, org: str, practitioner: str, eid: int, p: dict[str, int]) -> None:
    """Keep the sliding window's openings; flag the practitioner above the threshold."""
    prefix = f"emergency/count/{org}/{practitioner}/"
    ctx.state.put(f"{prefix}{ctx.time_ms:016d}/{eid:012d}", eid)
    since = ctx.time_ms - p["emergency_window_ms"]
    count = 0
    for key, _ in list(ctx.state.scan(prefix)):
        if int(key[len(prefix) : len(prefix) + 16]) <= since:
            ctx.state.delete(key)  # out of the window: never counted again
        else:
            count += 1
    if count > p["emergency_threshold"]:
        ctx.state.put(
            f"emergency/flag/{org}/{practitioner}",
            {
                "org": org,
                "practitioner": practitioner,
                "count": count,
                "window_ms": p["emergency_window_ms"],
                "threshold": p["emergency_threshold"],
                "time": ctx.time_ms,
                "last": eid,
            },
        )
        ctx.emit("emergency.overuse", org=org, practitioner=practitioner, count=count)


def review(ctx: Context, msg: Review) -> None:
    opening = get_opening(ctx.state, msg.id)
    if opening is None:
        raise TxError(Code.NOT_FOUND, f"no emergency access {msg.id}")
    actor = resolve_actor(ctx.state, ctx.signer)
    if (
        actor is None
        or not actor.active
        or actor.practitioner is None
        or "dpo" not in actor.roles
        or actor.org != opening["org"]
    ):
        raise TxError(
            Code.UNAUTHORIZED,
            f"a review is made by a DPO of {opening['org']}, the opener's hospital",
        )
    if actor.practitioner == opening["practitioner"]:
        raise TxError(Code.UNAUTHORIZED, "nobody reviews their own emergency access")
    if msg.verdict not in VERDICTS:
        raise TxError(Code.INVALID_BODY, f"field verdict: one of {', '.join(VERDICTS)}")
    if msg.note_hash:
        check_hash(msg.note_hash, "note_hash")
    if opening["review"] is not None:
        raise TxError(Code.CONFLICT, f"emergency access {msg.id} was already reviewed")
    opening["review"] = {
        "verdict": msg.verdict,
        "by": actor.practitioner,
        "note_hash": msg.note_hash,
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
    }
    if msg.verdict == "flagged" and opening["expires"] > ctx.time_ms:
        # A flagged opening ends now: misuse must not go on while it is being looked into.
        DUE.remove(ctx.state, opening["expires"], msg.id)
        opening["expires"] = ctx.time_ms
        opening["status"] = "closed"
        ctx.state.put(
            f"emergency/by/{opening['pid']}/{opening['org']}/{opening['practitioner']}/"
            f"{msg.id:012d}",
            {"opened": opening["opened"], "expires": ctx.time_ms, "flagged": True},
        )
    ctx.state.put(f"emergency/id/{msg.id:012d}", opening)
    ctx.emit(
        f"emergency.{msg.verdict}",
        id=msg.id,
        pid=opening["pid"],
        org=opening["org"],
        practitioner=opening["practitioner"],
    )


def end_block(ctx: Context) -> None:
    for eid in DUE.pop_due(ctx.state, ctx.time_ms):
        opening = get_opening(ctx.state, eid)
        if opening is None or opening["status"] != "open":
            continue
        opening["status"] = "expired"
        ctx.state.put(f"emergency/id/{eid:012d}", opening)
        ctx.emit(
            "emergency.expired",
            id=eid,
            pid=opening["pid"],
            org=opening["org"],
            practitioner=opening["practitioner"],
            reviewed=int(opening["review"] is not None),
        )


# -- what authorize asks --------------------------------------------------------------------


def openings_of(
    state: StateView, pid: str, org: str, practitioner: str
) -> list[tuple[int, int, int, bool]]:
    """(id, opened, expires, flagged) of this practitioner's openings for this patient."""
    prefix = f"emergency/by/{pid}/{org}/{practitioner}/"
    return [
        (int(k[len(prefix) :]), int(v["opened"]), int(v["expires"]), bool(v.get("flagged")))
        for k, v in state.scan(prefix)
    ]


# -- queries -------------------------------------------------------------------------------


def q_get(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    eid = args.get("id")
    if not isinstance(eid, int) or isinstance(eid, bool):
        raise TxError(Code.INVALID_BODY, "emergency/get needs an integer id")
    return get_opening(state, eid)


def q_list(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Openings, newest first, filtered by pid, opener's org, or those awaiting review."""
    pid, org = args.get("pid"), args.get("org")
    unreviewed = bool(args.get("unreviewed"))
    found = []
    for _, opening in state.scan("emergency/id/"):
        if pid is not None and opening["pid"] != pid:
            continue
        if org is not None and opening["org"] != org and org not in opening["custodians"]:
            continue
        if unreviewed and opening["review"] is not None:
            continue
        found.append(opening)
    found.reverse()
    return found


def q_flags(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    org = args.get("org")
    return [f for _, f in state.scan(f"emergency/flag/{org}/" if org else "emergency/flag/")]


CONTRACTS = [
    Contract(
        name="emergency",
        version=1,
        messages={
            "emergency.open": Message("emergency.open", Open, open_),
            "emergency.review": Message("emergency.review", Review, review),
        },
        queries={"emergency/get": q_get, "emergency/list": q_list, "emergency/flags": q_flags},
        end_block=end_block,
    )
]
