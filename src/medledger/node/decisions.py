"""The one decide-and-audit path: how anything off the chain asks `authorize` and logs it.

Every access a hospital serves or asks for is decided by the consortium's single
`contracts.authorize.authorize` and written to the chain as `access.log` entries. The API and
the pages ask through the engine's query (`authorize/check`, which also works against a
remote CometBFT node); the gateway and the sync agent ask on their own replica's committed
state (`fail_closed`), the same function on the same state. Either way the answer is one
`Decision`, and a failure inside authorize is a refusal, never an opening (fail closed).

`decide_and_audit` is the one call that decides an access and builds the `access.log`
entries recording it (`audit`, over the one builder `contracts.access.log_entry`); callers
that decide record by record (search pages, the gateway) build the entries of the decisions
they made with `audit`. Every caller writes the entries through the hospital's audit journal
(`node.audit`, node/audit.py) when its timing rule says: the API and the pages answer once
the entries are durable (they reach the chain in the journal's next shared tx), the gateway
waits for the commit before it serves a remote read, and the sync agent logs a push before
it sends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medledger.contracts import queries
from medledger.contracts.access import log_entry
from medledger.contracts.authorize import Decision
from medledger.contracts.identity import Actor
from medledger.ledger.store import StateView

__all__ = [
    "Access",
    "Audited",
    "AuthorizeFn",
    "Decision",
    "audit",
    "decide",
    "decide_and_audit",
    "fail_closed",
    "now_ms",
]

AuthorizeFn = Callable[[StateView, Actor, str, dict[str, Any], str, int], Any]


def now_ms() -> int:
    return int(time.time() * 1000)


def decide(
    engine: queries.Queryable,
    key: bytes,
    pid: str,
    meta: dict[str, Any],
    purpose: str,
    at_ms: int | None = None,
) -> Decision:
    """authorize's verdict for the holder of `key`, asked through the engine's query."""
    result = queries.authorize_check(
        engine,
        {
            "key": key,
            "pid": pid,
            "meta": meta,
            "purpose": purpose,
            "at_ms": now_ms() if at_ms is None else at_ms,
        },
    )
    return Decision.from_obj(result)


def fail_closed(ask: Callable[[], Any]) -> Decision:
    """authorize's verdict from `ask()` (authorize called on a replica's committed state, by
    the gateway and the sync agent through exchange.policy); any failure is a refusal."""
    try:
        result = ask()
    except ImportError:
        return Decision(False, "", "authorization unavailable on this node")
    except Exception as exc:  # a bug or bad input must never open access
        return Decision(False, "", f"authorization failed: {type(exc).__name__}")
    return Decision(bool(result.allowed), str(result.basis or ""), str(result.reason or ""))


@dataclass(frozen=True)
class Access:
    """What every audit entry of one access shares: who (`actor`, of `actor_org`) does what
    (`action`, for `purpose`) to whose data (`pid`), and the signed `request` of another
    hospital's actor, if any (see contracts.access), and the hospital an export sent to."""

    actor: str
    actor_org: str
    pid: str
    action: str
    purpose: str
    request: dict[str, Any] | None = None
    to: str = ""


@dataclass(frozen=True)
class Audited:
    """A decision and the `access.log` entries that record it, for the caller to write."""

    decision: Decision
    entries: list[dict[str, Any]]


def audit(
    access: Access, decision: Decision, rids: Sequence[str] = (), *, per_entry: int = 0
) -> list[dict[str, Any]]:
    """The `access.log` entries recording `decision`: every record named, at most `per_entry`
    of them per entry when given (the contract bounds an entry's rids), one entry when none."""
    names = list(rids)
    step = per_entry or max(1, len(names))
    chunks = [names[i : i + step] for i in range(0, len(names), step)] or [[]]
    return [
        log_entry(
            actor=access.actor,
            actor_org=access.actor_org,
            pid=access.pid,
            action=access.action,
            purpose=access.purpose,
            decision=decision,
            rids=chunk,
            request=access.request,
            to=access.to,
        )
        for chunk in chunks
    ]


def decide_and_audit(
    ask: Callable[[], Decision], access: Access, rids: Sequence[str] = (), *, per_entry: int = 0
) -> Audited:
    """Decide an access and build its audit entries: `ask()` is authorize's verdict (`decide`
    through the engine, or the replica's `fail_closed` policy); the caller writes the entries
    when its timing rule says (see the module doc), and serves only what was allowed."""
    decision = ask()
    return Audited(decision, audit(access, decision, rids, per_entry=per_entry))
