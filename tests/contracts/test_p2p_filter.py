"""Whom a node peers with: CometBFT (`filter_peers`) asks the app `/p2p/filter/id/<node id>`
after its handshake authenticated the node key, and the app accepts only the node ids in
current members' `addresses.p2p`, from committed state (the real processes:
tests/cometbft/test_network.py::test_a_stranger_node_gets_no_peer)."""

from __future__ import annotations

from typing import Any

from medledger.contracts import default_registry
from medledger.ledger import codec
from medledger.ledger.app import Application
from medledger.ledger.errors import Code
from medledger.ledger.store import Store
from tests.support.ledger import make_net, run_block

LYON_NODE = "1111111111111111111111111111111111111111"
PARIS_NODE = "2222222222222222222222222222222222222222"
PARIS_NEW_NODE = "3333333333333333333333333333333333333333"


def _p2p(node_id: str, host: str = "10.0.0.5") -> dict[str, str]:
    return {"gateway": f"{host}:7443", "p2p": f"{node_id}@{host}:26656"}


def _peer(app: Application, node_id: str) -> int:
    return app.query(f"/p2p/filter/id/{node_id}", b"").code


def _net_with_nodes() -> tuple[Any, Application]:
    net = make_net(3)
    app = net.app()
    updates = [
        net.tx(net.orgs["h0"], "governance.update_member", {"addresses": _p2p(LYON_NODE)}),
        net.tx(net.orgs["h1"], "governance.update_member", {"addresses": _p2p(PARIS_NODE)}),
    ]
    assert all(r.ok for r in run_block(app, updates, net.solo).results)
    return net, app


def _govern(net: Any, app: Application, action: str, args: dict[str, Any]) -> None:
    """h0 proposes, h2 approves: two of three, executed."""
    propose = net.tx(net.orgs["h0"], "governance.propose", {"action": action, "args": args})
    created = run_block(app, [propose], net.solo).results[0]
    assert created.ok, created.log
    (event,) = [e for e in created.events if e.type == "proposal.created"]
    vote = net.tx(
        net.orgs["h2"], "governance.vote", {"proposal": int(event.get("id")), "approve": True}
    )
    assert run_block(app, [vote], net.solo).results[0].ok


def test_a_members_node_is_accepted_and_named_a_strangers_refused() -> None:
    _, app = _net_with_nodes()
    accepted = app.query(f"/p2p/filter/id/{LYON_NODE}", b"")
    assert accepted.code == 0 and codec.decode(accepted.value) == "h0"
    refused = app.query("/p2p/filter/id/" + "9" * 40, b"")
    assert refused.code == Code.UNAUTHORIZED and "no current member's" in refused.log
    # A member without a p2p address (h2) lends no node id to anyone.
    assert _peer(app, "") != 0


def test_an_address_is_not_filtered_and_the_answer_says_so() -> None:
    """CometBFT asks about the remote address before its handshake: a NAT's, or an ephemeral
    port. Every address passes; the node id decides, once authenticated."""
    _, app = _net_with_nodes()
    answer = app.query("/p2p/filter/addr/203.0.113.7:51234", b"")
    assert answer.code == 0 and "not filtered" in answer.log
    assert app.query("/p2p/filter/port/1", b"").code == Code.NOT_FOUND


def test_a_removed_members_node_is_refused_from_the_removal_block() -> None:
    net, app = _net_with_nodes()
    assert _peer(app, PARIS_NODE) == 0
    _govern(net, app, "remove_member", {"org": "h1"})
    assert _peer(app, PARIS_NODE) == Code.UNAUTHORIZED
    assert _peer(app, LYON_NODE) == 0


def test_a_member_that_moves_its_node_is_accepted_at_the_new_id_only() -> None:
    """A new machine (new node key) is announced in the member's own update; the old id is
    refused from that block on."""
    net, app = _net_with_nodes()
    moved = net.tx(
        net.orgs["h1"], "governance.update_member", {"addresses": _p2p(PARIS_NEW_NODE, "10.0.0.9")}
    )
    assert run_block(app, [moved], net.solo).results[0].ok
    assert _peer(app, PARIS_NEW_NODE) == 0
    assert _peer(app, PARIS_NODE) == Code.UNAUTHORIZED


def test_a_rebound_members_new_node_replaces_the_lost_one() -> None:
    """Recovery: the wiped machine's node key may be the thief's now; the rebinding's request
    (made by keygen on the fresh machine) carries the new node id."""
    from tests.contracts.test_member_keys import _rebind_args

    net, app = _net_with_nodes()
    rebind = _rebind_args("h1", addresses=_p2p(PARIS_NEW_NODE, "10.0.0.9"))
    _govern(net, app, "rebind_member", rebind)
    assert _peer(app, PARIS_NEW_NODE) == 0
    assert _peer(app, PARIS_NODE) == Code.UNAUTHORIZED


def test_before_init_chain_no_node_is_accepted() -> None:
    """No members known yet: refuse everyone rather than guess (CometBFT runs InitChain in its
    start-up handshake, before its p2p switch starts, so this is only a safety net)."""
    net = make_net(3)
    app = Application(Store(":memory:"), net.genesis, default_registry())
    assert _peer(app, LYON_NODE) != 0
