"""Review of session 7's custody trash (issue 15, branch `thief`): what a thief holding the
wiped hospital's current signing key can still destroy at the replica peers before the
rebinding vote executes."""

from __future__ import annotations

import sqlite3

import pytest

from medledger.exchange.client import ExchangeError
from medledger.node.replicas import replica_peers
from tests.exchange.conftest import A, Sandbox

OLDER_KEY = b"\x07" * 32  # the hospital's signing key before a routine `--rotate signing`


def _history(sandbox: Sandbox, peer: str, put_by: bytes) -> None:
    """What the peer's custody file says put A's items: `b""` for items stored before the
    trash existed (the column's default when an older custody.db is opened), or an older
    signing key of A's (items put before A rotated its key are not sent again)."""
    db = sqlite3.connect(sandbox.x(peer).custody.path)
    with db:
        db.execute("UPDATE items SET put_by = ? WHERE owner = ?", (put_by, A))
    db.close()


@pytest.mark.parametrize("put_by", [b"", OLDER_KEY], ids=["before-the-trash", "rotated-key"])
def test_a_thief_cannot_empty_the_trash_of_what_an_older_key_put(
    ingested: tuple[Sandbox, list[str]], put_by: bytes
) -> None:
    """`custody-empty-trash` destroys the trashed versions that a key other than the caller's
    put, meant for the member rebound by vote. But the thief's key is not the only key that is
    not the rebound one: every item a peer stored before this session (put_by empty) and every
    item put before the hospital's last key rotation qualifies too. The thief drops them all
    (to the trash) and then empties the trash: nothing is left for the recovery."""
    sandbox, _ = ingested
    thief = sandbox.x(A).client  # A's current signing key, taken with the machine
    peers = replica_peers(sandbox.root.engine, A)
    for peer in peers:
        _history(sandbox, peer, put_by)
        ids = [i.id for i in thief.custody_list(peer)[0]]
        for i in range(0, len(ids), 500):
            thief.custody_drop(peer, ids[i : i + 500])
        held = sandbox.x(peer).custody.usage(A).trash_items
        assert held >= len(ids) > 0
        try:
            thief.custody_empty_trash(peer)
        except ExchangeError:
            pass  # refused: the fix (only a key installed by a rebinding vote may)
        assert sandbox.x(peer).custody.usage(A).trash_items == held, (
            f"{peer}: the thief emptied the trash of what {A}'s older key put"
        )
