"""The exchange's one question to the ledger: may this actor see this record, and on what basis?

Both sides ask it of their own replica. The custodian's gateway asks before serving; the
requester's sync agent asks before requesting, so it only asks for what the custodian will
grant (and does not fill the audit trail with denials it could foresee). The answer comes from
the consortium's single `authorize` (medledger.contracts.authorize), evaluated on committed
state: the same function on the same state, so both sides agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medledger.consensus.engine import NoLocalReplica
from medledger.contracts.authorize import Decision
from medledger.contracts.identity import Actor, resolve_actor
from medledger.ledger.store import StateView
from medledger.node import decisions

if TYPE_CHECKING:
    from medledger.node import Node

AuthorizeFn = decisions.AuthorizeFn


def load_authorize() -> AuthorizeFn:
    """The consortium's authorize; imported late so the exchange loads without it."""
    from medledger.contracts.authorize import authorize

    fn: AuthorizeFn = authorize
    return fn


def record_meta(entry: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What authorize is told of a record: its opened metadata plus where it is held."""
    return {
        **meta,
        "rid": entry["rid"],
        "custodian": entry["custodian"],
        "version": entry["version"],
        "time": entry.get("time", 0),
    }


class Policy:
    """Decisions on this node's committed replica state."""

    def __init__(self, node: Node, authorize: AuthorizeFn | None = None) -> None:
        try:  # an engine reading a remote node over RPC has no view to decide on
            with node.engine.read_view():
                pass
        except NoLocalReplica:
            raise ValueError(
                "the exchange needs the node's own ledger replica (run the node)"
            ) from None
        self.node = node
        self._authorize = authorize

    @property
    def authorize(self) -> AuthorizeFn:
        if self._authorize is None:
            self._authorize = load_authorize()
        return self._authorize

    @contextmanager
    def state(self) -> Iterator[StateView]:
        """A read-only view of committed state, held steady against a concurrent commit."""
        with self.node.engine.read_view() as view:
            yield view

    def actor(self, key: bytes) -> Actor | None:
        with self.state() as state:
            return resolve_actor(state, key)

    def decide(
        self,
        actor: Actor,
        pid: str,
        meta: dict[str, Any],
        purpose: str,
        at_ms: int | None = None,
        state: StateView | None = None,
    ) -> Decision:
        """authorize's verdict; any failure inside it is a refusal (fail closed)."""
        at = int(time.time() * 1000) if at_ms is None else at_ms

        def ask() -> Any:
            if state is None:
                with self.state() as view:
                    return self.authorize(view, actor, pid, meta, purpose, at)
            return self.authorize(state, actor, pid, meta, purpose, at)

        return decisions.fail_closed(ask)
