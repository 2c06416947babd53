"""The members' TLS keys a node pins: kept between commits, read again only after a block
that may have changed them (`exchange.client.member_pins`)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from medledger.exchange.client import changes_members, member_pins
from medledger.ledger.results import Event, TxResult


class _Chain:
    """A replica's answers to the members' query, counted; and its commit listeners."""

    def __init__(self) -> None:
        self.members = [{"org": "h0", "tls_key": b"k0"}, {"org": "h1", "tls_key": b"k1"}]
        self.reads = 0
        self.listeners: list[Callable[[Any], None]] = []

    def query(self, path: str, args: dict[str, Any]) -> Any:
        assert path == "governance/members"
        self.reads += 1
        return [dict(m) for m in self.members]

    def add_commit_listener(self, fn: Callable[[Any], None]) -> None:
        self.listeners.append(fn)

    def commit(self, *event_types: str, end_block: tuple[str, ...] = ()) -> None:
        results = [TxResult(0, "", (Event("practitioner.registered"),))]
        results += [TxResult(0, "", (Event(t, (("org", "h1"),)),)) for t in event_types]
        record = SimpleNamespace(results=results, events=tuple(Event(t) for t in end_block))
        for fn in self.listeners:
            fn(record)


def _node(chain: _Chain) -> Any:
    return SimpleNamespace(engine=chain, app=chain, config=SimpleNamespace(org="h0"))


def test_pins_are_read_once_and_kept_across_blocks_that_change_no_member() -> None:
    chain = _Chain()
    pins = member_pins(_node(chain))
    assert pins() == {"h0": b"k0", "h1": b"k1"}
    for _ in range(5):
        chain.commit()  # registrations only
        chain.commit("param.set", "proposal.voted")
    assert pins() == {"h0": b"k0", "h1": b"k1"}
    assert chain.reads == 1


def test_a_member_s_new_tls_key_is_pinned_after_the_block_that_changed_it() -> None:
    chain = _Chain()
    pins = member_pins(_node(chain))
    assert pins()["h1"] == b"k1"
    chain.members[1]["tls_key"] = b"k1-new"
    chain.commit("member.updated")
    assert chain.reads == 2  # read again in the committing thread, at once
    assert pins()["h1"] == b"k1-new"
    del chain.members[1]
    chain.commit("proposal.executed", "member.removed")
    assert pins() == {"h0": b"k0"}
    assert chain.reads == 3


def _marks(*event_types: str, end_block: tuple[str, ...] = ()) -> bool:
    chain = _Chain()
    seen: list[bool] = []
    chain.add_commit_listener(lambda r: seen.append(changes_members(r)))
    chain.commit(*event_types, end_block=end_block)
    return seen == [True]


def test_the_blocks_that_may_change_members_are_told_by_their_events() -> None:
    for event in ("member.admitted", "member.rebound", "member.removed", "member.power"):
        assert _marks(event), event
    assert _marks("member.updated", "proposal.voted")
    assert _marks(end_block=("contract.activated",))  # an end-block event counts too
    assert not _marks()  # registrations only
    assert not _marks("proposal.created", "param.set", "escrow.deposited")
