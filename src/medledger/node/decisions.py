"""The one decide-and-audit path: how anything off the chain asks `authorize` and logs it.

Every access a hospital serves or asks for is decided by the consortium's single
`contracts.authorize.authorize` and written to the chain as `access.log` entries. The API and
the pages ask through the engine's query (`authorize/check`, which also works against a
remote CometBFT node); the gateway and the sync agent ask on their own replica's committed
state (`fail_closed`), the same function on the same state. Either way the answer is one
`Decision`, and a failure inside authorize is a refusal, never an opening (fail closed).
The audit entry of a decision is built by the one builder, `contracts.access.log_entry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from medledger.contracts import queries
from medledger.contracts.authorize import Decision
from medledger.contracts.identity import Actor
from medledger.ledger.store import StateView

__all__ = ["AuthorizeFn", "Decision", "decide", "fail_closed", "now_ms"]

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
