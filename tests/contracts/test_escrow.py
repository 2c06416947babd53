"""The escrow contract: who holds a member's key shares, checked on the chain."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from medledger.contracts import escrow
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.ledger import make_net, run_block


def _net(n: int = 4):
    net = make_net(n)
    members = [replace(m, box_key=bytes([i + 1]) * 32) for i, m in enumerate(net.genesis.members)]
    net.genesis = replace(net.genesis, members=members)
    return net


#: escrow v2's holders in `_net(4)` (founders all: SHA-256(owner, member) order).
H0_HOLDERS = ["h1", "h3", "h2"]
H2_HOLDERS = ["h3", "h1", "h0"]


def _hashes(n: int) -> list[bytes]:
    return [hashlib.sha256(bytes([i])).digest() for i in range(n)]


def _deposit(net, org: str, holders: list[str], threshold: int = 2, hashes=None, epoch: int = 1):
    hashes = hashes or _hashes(len(holders))
    body = {"holders": holders, "hashes": hashes, "threshold": threshold, "epoch": epoch}
    return net.tx(net.orgs[org], "escrow.deposit", body)


def test_holders_are_the_longest_standing_members_whatever_their_org_ids() -> None:
    """Founders tie on standing: SHA-256(owner, member) orders them (each owner its own
    order, so the load spreads); a member admitted later comes after all of them."""
    net = _net(4)
    app = net.app()
    status = app.query_obj("escrow/status", {"org": "h2"})
    assert status["holders"] == H2_HOLDERS  # escrow_shares 3 by default
    assert status["threshold"] == 2
    assert status["record"] is None and not status["current"]
    assert app.query_obj("escrow/status", {"org": "h0"})["holders"] == H0_HOLDERS
    # "h0a" sorts right after h0; with four shares it still comes last, after every founder
    change = {"action": "set_param", "args": {"name": "escrow_shares", "value": 4}}
    admit = {"org": "h0a", "name": "H0A", "key": SigningKey.generate().public_key}
    admit["box_key"] = b"\x55" * 32
    txs = [
        net.tx(net.orgs["h1"], "governance.propose", change),
        net.tx(net.orgs["h1"], "governance.propose", {"action": "admit_member", "args": admit}),
    ]
    txs += [
        net.tx(net.orgs[o], "governance.vote", {"proposal": p, "approve": True})
        for p in (1, 2)
        for o in ("h2", "h3")
    ]
    assert all(r.ok for r in run_block(app, txs, net.solo).results)
    assert app.query_obj("escrow/status", {"org": "h0"})["holders"] == [*H0_HOLDERS, "h0a"]


def test_escrow_v1_chains_keep_the_ring_of_org_ids() -> None:
    """A chain started under escrow v1 replays as it was: the next members in the ring."""
    net = _net(4)
    net.genesis = replace(net.genesis, contracts={**net.genesis.contracts, "escrow": 1})
    app = net.app()
    assert app.query_obj("escrow/status", {"org": "h2"})["holders"] == ["h3", "h0", "h1"]


def test_a_member_deposits_its_escrow_and_each_new_one_is_a_new_epoch() -> None:
    net = _net(4)
    app = net.app()
    out = run_block(app, [_deposit(net, "h0", H0_HOLDERS)], net.solo)
    assert out.results[0].ok, out.results[0].log
    status = app.query_obj("escrow/status", {"org": "h0"})
    record = status["record"]
    assert status["current"]
    assert [(h["org"], h["x"]) for h in record["holders"]] == [("h1", 0), ("h3", 1), ("h2", 2)]
    assert [h["sha256"] for h in record["holders"]] == _hashes(3)
    assert record["holders"][0]["box_key"] == bytes([2]) * 32  # h1's, as it was then
    assert record["epoch"] == 1 and record["threshold"] == 2
    # a deposit made for epoch 1 again (racing, or retried) is refused
    out = run_block(app, [_deposit(net, "h0", H0_HOLDERS)], net.solo)
    assert out.results[0].code == Code.CONFLICT and "epoch 2" in out.results[0].log
    # while it is current, no new epoch (the old machine's thief would spoil the recovery)
    out = run_block(app, [_deposit(net, "h0", H0_HOLDERS, epoch=2)], net.solo)
    assert out.results[0].code == Code.REFUSED and "is current" in out.results[0].log
    # a holder's new box key makes it stale: epoch 2 goes
    update = net.tx(net.orgs["h1"], "governance.update_member", {"box_key": b"\x09" * 32})
    assert run_block(app, [update], net.solo).results[0].ok
    run_block(app, [_deposit(net, "h0", H0_HOLDERS, epoch=2)], net.solo)
    assert app.query_obj("escrow/record", {"org": "h0"})["epoch"] == 2
    # nobody says no rebind yet: holders refuse to release
    assert (
        "no rebind_member of h0" in app.query_obj("escrow/status", {"org": "h0"})["release_refused"]
    )


def test_a_member_cannot_choose_its_holders_nor_its_threshold() -> None:
    net = _net(4)
    app = net.app()
    cases = [
        (_deposit(net, "h0", ["h1", "h2"]), "field holders"),  # fewer than the param names
        (_deposit(net, "h0", ["h1", "h2", "h3"]), "field holders"),  # its own order
        (_deposit(net, "h0", H0_HOLDERS, threshold=1), "field threshold"),
        (_deposit(net, "h0", H0_HOLDERS, hashes=[b"x" * 31] * 3), "field hashes[0]"),
        (_deposit(net, "h0", H0_HOLDERS, hashes=_hashes(2)), "field hashes"),
    ]
    out = run_block(app, [tx for tx, _ in cases], net.solo)
    for result, (_, field) in zip(out.results, cases, strict=True):
        assert not result.ok and result.code == Code.INVALID_BODY and field in result.log
    assert app.query_obj("escrow/record", {"org": "h0"}) is None


def test_only_a_member_deposits_and_only_for_itself() -> None:
    net = _net(4)
    app = net.app()
    net.orgs["stranger"] = SigningKey.generate()
    out = run_block(app, [_deposit(net, "stranger", ["h1", "h2", "h3"])], net.solo)
    assert out.results[0].code == Code.UNAUTHORIZED
    # h1's deposit is h1's escrow, whatever it lists
    out = run_block(app, [_deposit(net, "h1", ["h1", "h2", "h3"])], net.solo)
    assert out.results[0].code == Code.INVALID_BODY


def test_too_few_peers_for_the_threshold_is_refused() -> None:
    net = _net(2)  # one peer: it alone would hold the keys
    app = net.app()
    out = run_block(app, [_deposit(net, "h0", ["h1"])], net.solo)
    assert (
        out.results[0].code == Code.REFUSED and "fewer than escrow_threshold" in out.results[0].log
    )


def test_an_escrow_stops_being_current_when_a_param_or_a_holder_changes() -> None:
    net = _net(4)
    app = net.app()
    run_block(app, [_deposit(net, "h0", H0_HOLDERS)], net.solo)
    assert app.query_obj("escrow/status", {"org": "h0"})["current"]
    change = {"action": "set_param", "args": {"name": "escrow_shares", "value": 2}}
    votes = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": 1, "approve": True})
        for o in ("h1", "h2")
    ]
    run_block(app, [net.tx(net.orgs["h0"], "governance.propose", change), *votes], net.solo)
    status = app.query_obj("escrow/status", {"org": "h0"})
    assert not status["current"] and status["holders"] == H0_HOLDERS[:2]
    assert escrow.MAX_HOLDERS == 16


def _rebind(net, app, org: str, proposer: str, voters: list[str]):
    """Two thirds of the members (`org` counted, not voting) bind it to a new key."""
    new_key = SigningKey.generate()
    args = {"org": org, "key": new_key.public_key, "box_key": b"\x77" * 32}
    pid = len(app.query_obj("governance/proposals", {})) + 1
    propose = {"action": "rebind_member", "args": args}
    txs = [net.tx(net.orgs[proposer], "governance.propose", propose)]
    txs += [
        net.tx(net.orgs[v], "governance.vote", {"proposal": pid, "approve": True}) for v in voters
    ]
    run_block(app, txs, net.solo)
    assert app.query_obj("governance/proposal", {"id": pid})["status"] == "executed"
    net.orgs[org] = new_key
    return pid


def test_holders_may_release_only_after_a_rebinding_newer_than_the_escrow() -> None:
    net = _net(4)
    app = net.app()
    run_block(app, [_deposit(net, "h0", H0_HOLDERS)], net.solo)
    assert app.query_obj("escrow/status", {"org": "h0"})["rebind"] is None
    pid = _rebind(net, app, "h0", "h1", ["h2", "h3"])  # 3 of 4
    status = app.query_obj("escrow/status", {"org": "h0"})
    assert status["rebind"] == pid and status["release_refused"] == ""
    # the recovered member escrows again under its new key: nothing to release any more
    run_block(app, [_deposit(net, "h0", H0_HOLDERS, epoch=2)], net.solo)
    status = app.query_obj("escrow/status", {"org": "h0"})
    assert status["rebind"] is None and "since its escrow (epoch 2)" in status["release_refused"]


def test_a_rebinding_before_the_escrow_releases_nothing() -> None:
    net = _net(4)
    app = net.app()
    _rebind(net, app, "h0", "h1", ["h2", "h3"])
    run_block(app, [_deposit(net, "h0", H0_HOLDERS)], net.solo)
    assert app.query_obj("escrow/status", {"org": "h0"})["rebind"] is None
