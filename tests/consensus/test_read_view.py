"""The committed read view: several reads of one committed height, whatever runs meanwhile.

Whoever outside the ledger reads state (the exchange's policy) asks the engine for a view and
never takes the engine's or the application's lock itself.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from medledger.consensus.cometbft.engine import CometEngine
from medledger.contracts.identity import resolve_actor
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from tests.support.ledger import make_net


def held_by_another_thread(lock: Any) -> bool:
    """Does a thread other than this one fail to take the lock right now?"""
    taken: list[bool] = []

    def attempt() -> None:
        ok = lock.acquire(blocking=False)
        if ok:
            lock.release()
        taken.append(ok)

    t = threading.Thread(target=attempt)
    t.start()
    t.join()
    return not taken[0]


def test_a_read_view_sees_the_committed_state_while_a_block_is_cut(node: Node) -> None:
    assert node.app is not None
    key = SigningKey.generate().public_key
    node.wallet.submit("identity.register", {"practitioner": "p1", "key": key, "roles": ["nurse"]})
    cutting, committed = threading.Event(), threading.Event()
    node.app.add_commit_listener(lambda _record: committed.set())

    def cut() -> None:
        cutting.set()
        node.engine.cut_block()  # type: ignore[attr-defined]

    cutter = threading.Thread(target=cut)
    with node.engine.read_view() as view:
        # The view holds the lock blocks are cut under: no block commits while it is open.
        assert held_by_another_thread(node.app.lock)
        before = resolve_actor(view, key)
        cutter.start()
        assert cutting.wait(10)
        # The block waits for the view, which still shows the height it opened on.
        assert resolve_actor(view, key) is None and before is None
        assert not committed.is_set()
    cutter.join(10)
    assert committed.is_set()
    with node.engine.read_view() as view:
        actor = resolve_actor(view, key)
    assert actor is not None and actor.org == node.config.org
    assert not held_by_another_thread(node.app.lock)


def test_the_cometbft_engine_view_holds_the_abci_lock_and_the_apps() -> None:
    net = make_net()
    app = net.app()
    engine = CometEngine(app, "tcp://127.0.0.1:0", "http://127.0.0.1:9")  # not started
    try:
        with engine.read_view() as view:
            # No ABCI call (a commit among them) and no other reader of the app runs meanwhile
            # (the ABCI server serves under the app's own lock when the app has one).
            assert held_by_another_thread(engine.lock)
            assert held_by_another_thread(app.lock)
            member = resolve_actor(view, net.orgs["h1"].public_key)
            assert member is not None and member.org == "h1"
        assert not held_by_another_thread(engine.lock)
        assert not held_by_another_thread(app.lock)
    finally:
        engine.close()
        engine.close_app()


def test_an_rpc_engine_has_no_replica_to_view() -> None:
    """The CLI's engine on a running CometBFT node reads through RPC queries; a committed view
    would need a local replica, so it is refused by name rather than faked."""
    from medledger.consensus.cometbft.client import RpcEngine
    from medledger.consensus.engine import NoLocalReplica

    engine = RpcEngine("http://127.0.0.1:1")  # never dialled
    with pytest.raises(NoLocalReplica, match="read with query"):
        engine.read_view()
