"""Review 12c: the members' TLS pins kept between member changes (`member_pins`, carry13).

`pins()` keeps what it read unless a member-changing commit began meanwhile (`commits`): it
compares the counter, then stores its answer, in two steps. A commit whose listener runs
between them (the ABCI thread; a thread switch may fall anywhere) stores the new pins, and
`pins()` then overwrites them with the old ones. Before carry13 the next block, whatever it
held, read them again; now only the next `MEMBER_EVENTS` block does: a member's rotated TLS
key (rotated because the old one leaked) stays untrusted, and the leaked one trusted, until
some member changes again, which may be never.
"""

from __future__ import annotations

import inspect
import sys
import threading
from types import FrameType, SimpleNamespace
from typing import Any, cast

from medledger.exchange import client
from medledger.exchange.client import member_pins
from medledger.ledger.results import Event

OLD, NEW = b"tls-key-leaked", b"tls-key-rotated"


class _Engine:
    def __init__(self) -> None:
        self.members = [{"org": "h1", "tls_key": OLD}]

    def query(self, path: str, args: dict[str, Any]) -> Any:
        assert path == "governance/members"
        return list(self.members)


class _App:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_commit_listener(self, fn: Any) -> None:
        self.listeners.append(fn)


def test_a_member_change_committed_while_pins_are_read_is_not_overwritten_by_the_old_ones() -> None:
    engine, app = _Engine(), _App()
    node = SimpleNamespace(engine=engine, app=app, config=SimpleNamespace(org="h0"))
    pins = member_pins(cast(Any, node))
    rotated = SimpleNamespace(events=(Event("member.updated", (("org", "h1"),)),), results=())
    lines, _ = inspect.getsourcelines(client)
    storing = 1 + next(i for i, line in enumerate(lines) if "kept[:] = [found]" in line)

    committing: list[threading.Thread] = []

    def commit() -> None:  # the ABCI thread's commit and its listeners
        for listener in app.listeners:
            listener(rotated)

    def commit_now(frame: FrameType, event: str, _arg: Any) -> Any:
        # The commit lands after `pins()` compared the counter, before it stores its answer.
        if event == "line" and frame.f_lineno == storing:
            frame.f_trace = None
            engine.members = [{"org": "h1", "tls_key": NEW}]
            committing.append(threading.Thread(target=commit))
            committing[0].start()
            committing[0].join(0.2)  # as far as it gets while `pins()` is where it is
        return commit_now

    sys.settrace(lambda frame, event, arg: commit_now if frame.f_code.co_name == "pins" else None)
    try:
        assert pins()["h1"] == OLD  # read before the commit: the old key, for this call
    finally:
        sys.settrace(None)
    committing[0].join(10)
    assert not committing[0].is_alive()
    assert engine.members[0]["tls_key"] == NEW  # the rotation was committed meanwhile
    quiet = SimpleNamespace(events=(), results=())
    for listener in app.listeners:  # the next block: no member changes (before carry13, a re-read)
        listener(quiet)
    # The rotated key is the one pinned.
    assert pins()["h1"] == NEW
