"""Key escrow: which peers hold a member's key shares, and the SHA-256 of each share.

A member splits its vault KEK and backup key k of n (consortium params `escrow_threshold`,
`escrow_shares`) and seals each share to one holder's box key; the shares themselves live at
the holders (their custody store), never on the chain. What the chain keeps is what lets
anyone check a released share and name a holder who withholds or corrupts one: the holders
(chosen here, deterministically, so no member picks its own friends, and by standing, so
no applicant places itself by its choice of org id: `holders_for`), each share's x and
hash, the threshold and an epoch. Nothing in it says anything about a patient, and a share's
hash tells nothing of the key (a share is as random as the key it hides).

A holder releases its share only after a `rebind_member` of that org executed (two thirds of
the members moved its identity to new keys) *after* the escrow was deposited: `release_check`.

State (prefix `escrow/`):
    escrow/<org>    {org, epoch, threshold, holders: [{org, x, sha256, box_key}], time}
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from medledger.contracts import governance
from medledger.contracts.common import check_id
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

#: Most holders an escrow may name (the sharing's x are 0..n-1; see vault.shamir).
MAX_HOLDERS = 16
#: The governance action that lets holders release (owned by governance, issue 16).
REBIND_ACTION = "rebind_member"


def _key(org: str) -> str:
    return f"escrow/{org}"


def record(state: StateView, org: str) -> dict[str, Any] | None:
    """The member's current escrow record, or None."""
    found: dict[str, Any] | None = state.get(_key(org))
    return found


def holders_for(state: StateView, org: str) -> list[str]:
    """The peers that hold `org`'s shares: `escrow_shares` members with a box key.

    v2 takes the longest-standing members (`since`: admission, or genesis), ties (the founders,
    or members admitted in one block) ranked by SHA-256(org, member) so that the load spreads.
    A newcomer ranks after every member admitted before it, whatever org id it chose: it holds
    a share of an older member's keys only once fewer than `escrow_shares` older ones are left.
    v1 took the next members after org in the ring of sorted org ids, which an applicant
    steers by its choice of id (review finding 17)."""
    wanted = min(int(governance.params(state).get("escrow_shares", 3)), MAX_HOLDERS)
    boxed = [m for m in governance.members(state) if m.get("box_key")]
    if governance.contract_version(state, "escrow") >= 2:
        others = [m for m in boxed if m["org"] != org]
        others.sort(
            key=lambda m: (
                int(m.get("since") or 0),
                hashlib.sha256(f"{org}\x00{m['org']}".encode()).digest(),
            )
        )
        return [str(m["org"]) for m in others[:wanted]]
    ring = sorted(m["org"] for m in boxed)
    if org not in ring:
        ring = sorted([*ring, org])
    start = ring.index(org)
    return (ring[start + 1 :] + ring[:start])[:wanted]


def threshold_for(state: StateView) -> int:
    return int(governance.params(state).get("escrow_threshold", 2))


def is_current(state: StateView, org: str) -> bool:
    """True when `org`'s escrow matches today's members, params and holders' box keys (if not,
    the node deposits a new one: `medledger backup escrow`, and at start)."""
    found = record(state, org)
    if found is None:
        return False
    wanted = holders_for(state, org)
    if found["threshold"] != threshold_for(state) or [h["org"] for h in found["holders"]] != wanted:
        return False
    for holder in found["holders"]:
        member = governance.member(state, holder["org"])
        if member is None or bytes(member.get("box_key") or b"") != bytes(holder["box_key"]):
            return False
    return True


def release_check(state: StateView, org: str) -> tuple[dict[str, Any] | None, str]:
    """(the rebind proposal that allows releasing `org`'s shares, "") or (None, why not)."""
    found = record(state, org)
    if found is None:
        return None, f"{org} has no escrow on the chain"
    if governance.member(state, org) is None:
        return None, f"{org} is not a member"
    rebinds = [
        p
        for p in governance.q_proposals(state, {"status": "executed"})
        if p["action"] == REBIND_ACTION and p["args"].get("org") == org
    ]
    after = [p for p in rebinds if int(p.get("decided", 0)) > int(found["time"])]
    if not after:
        return None, (
            f"no rebind_member of {org} executed since its escrow (epoch {found['epoch']}): "
            "the members have not voted its recovery"
        )
    return after[-1], ""


# -- the message ---------------------------------------------------------------------------


@dataclass
class Deposit:
    """A member's own escrow: the holders (as `holders_for` names them), the threshold, the
    SHA-256 of each plaintext share in the holders' order (share i has x = i), and the epoch
    it makes."""

    holders: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    threshold: int = 0
    epoch: int = 0  # the one this deposit makes: the last + 1 (a stale or racing one fails)


def deposit(ctx: Context, msg: Deposit) -> None:
    org = governance.require_member(ctx)
    state = ctx.state
    for i, holder in enumerate(msg.holders):
        check_id(holder, f"holders[{i}]")
    wanted = holders_for(state, org)
    if msg.holders != wanted:
        raise TxError(Code.INVALID_BODY, f"field holders: must be {wanted} (params and members)")
    k = threshold_for(state)
    if k < 2:
        raise TxError(Code.REFUSED, "param escrow_threshold: must be at least 2 (one peer alone)")
    if len(wanted) < k:
        raise TxError(
            Code.REFUSED,
            f"field holders: {len(wanted)} peers with a box key, fewer than escrow_threshold {k}",
        )
    if msg.threshold != k:
        raise TxError(Code.INVALID_BODY, f"field threshold: must be escrow_threshold {k}")
    if len(msg.hashes) != len(msg.holders):
        raise TxError(Code.INVALID_BODY, "field hashes: one per holder")
    for i, digest in enumerate(msg.hashes):
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise TxError(Code.INVALID_BODY, f"field hashes[{i}]: must be a 32-byte SHA-256")
    previous = record(state, org)
    epoch = 1 if previous is None else int(previous["epoch"]) + 1
    if msg.epoch != epoch:
        raise TxError(Code.CONFLICT, f"field epoch: the next escrow of {org} is epoch {epoch}")
    # Whoever stole the member's key signs for it until the rebinding executes: it must not
    # replace a current escrow by one of shares nobody holds (the holders would then release
    # nothing). A new epoch comes when members, params or holders' keys changed, or after a
    # rebinding of the member (its recovery escrows again).
    if previous is not None and is_current(state, org) and release_check(state, org)[0] is None:
        raise TxError(
            Code.REFUSED,
            f"field epoch: {org}'s escrow epoch {previous['epoch']} is current; a new one only "
            "once members, params or holders' keys change, or after a rebind_member of it",
        )
    holders = []
    for x, (holder, digest) in enumerate(zip(msg.holders, msg.hashes, strict=True)):
        member = governance.member(state, holder) or {}
        holders.append(
            {"org": holder, "x": x, "sha256": digest, "box_key": bytes(member["box_key"])}
        )
    state.put(
        _key(org),
        {"org": org, "epoch": epoch, "threshold": k, "holders": holders, "time": ctx.time_ms},
    )
    ctx.emit("escrow.deposited", org=org, epoch=epoch)


# -- queries -------------------------------------------------------------------------------


def q_record(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    return record(state, str(args.get("org")))


def q_status(state: StateView, args: dict[str, Any]) -> dict[str, Any]:
    """What a member's node and its holders ask: the record, whether it is current, the
    holders the params name today, and whether holders may release (and why not)."""
    org = str(args.get("org"))
    rebind, why = release_check(state, org)
    return {
        "record": record(state, org),
        "current": is_current(state, org),
        "holders": holders_for(state, org),
        "threshold": threshold_for(state),
        "rebind": None if rebind is None else int(rebind["id"]),
        "release_refused": why,
    }


_V1 = Contract(
    name="escrow",
    version=1,
    messages={"escrow.deposit": Message("escrow.deposit", Deposit, deposit)},
    queries={"escrow/record": q_record, "escrow/status": q_status},
)
# v2: holders by standing, not by org id (see holders_for); the handlers ask the version.
CONTRACTS = [_V1, dataclasses.replace(_V1, version=2)]
