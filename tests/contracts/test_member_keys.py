"""A member's keys and addresses on the chain: admitted with them, rotated by the member's own
signed update, rebound by the others' vote when lost; no key is ever shared by two members."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medledger.contracts.governance import tls_keys, update_proof_message
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from medledger.ledger.store import StateView
from tests.support.ledger import make_net, register_body, run_block


def _tls_key() -> bytes:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _trusted(app) -> dict[str, bytes]:
    return tls_keys(StateView(app.store))


def _member(app, org: str) -> dict[str, Any]:
    return next(m for m in app.query_obj("governance/members", {}) if m["org"] == org)


def _vote_through(net, app, pid: int, voters: tuple[str, ...]):
    txs = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": pid, "approve": True}) for o in voters
    ]
    return run_block(app, txs, net.solo)


def _update(net, org: str, body: dict[str, Any]) -> bytes:
    tx: bytes = net.tx(net.orgs[org], "governance.update_member", body)
    return tx


ADDRESSES = {
    "gateway": "10.0.0.5:7443",
    "api": "ehr.chu-nantes.example:8443",
    "p2p": "0123456789abcdef0123456789abcdef01234567@10.0.0.5:26656",
    "rpc": "10.0.0.5:26657",
}


def test_an_admitted_member_carries_its_tls_key_and_addresses() -> None:
    net = make_net(3)
    app = net.app()
    tls = _tls_key()
    args = {
        "org": "h9",
        "name": "H9",
        "key": SigningKey.generate().public_key,
        "tls_key": tls,
        "addresses": ADDRESSES,
    }
    propose = net.tx(net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args})
    run_block(app, [propose], net.solo)
    _vote_through(net, app, 1, ("h1",))
    assert _member(app, "h9")["tls_key"] == tls
    assert _member(app, "h9")["addresses"] == ADDRESSES
    assert _trusted(app)["h9"] == tls


def test_admission_refuses_bad_tls_keys_addresses_and_keys_of_other_members() -> None:
    net = make_net(3)
    app = net.app()
    tls = _tls_key()
    run_block(app, [_update(net, "h1", {"tls_key": tls})], net.solo)

    def refusal(**extra):
        args = {"org": "h9", "name": "H9", "key": SigningKey.generate().public_key, **extra}
        tx = net.tx(net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args})
        result = app.check_tx(tx)
        return result.code, result.log

    code, log = refusal(tls_key=b"\x30" * 91)
    assert code == Code.INVALID_BODY and "args.tls_key" in log
    code, log = refusal(tls_key=b"\x30" * 201)
    assert code == Code.INVALID_BODY and "at most 200" in log
    code, log = refusal(tls_key=tls)  # h1's
    assert code == Code.CONFLICT and "args.tls_key" in log
    code, log = refusal(box_key=b"\x07" * 32, addresses={"smtp": "mail:25"})
    assert code == Code.INVALID_BODY and "smtp" in log
    code, log = refusal(addresses={"gateway": "10.0.0.5"})
    assert code == Code.INVALID_BODY and "args.addresses.gateway" in log
    code, log = refusal(addresses={"gateway": "h:" + "1" * 130})
    assert code == Code.INVALID_BODY and "at most 120" in log
    code, log = refusal(addresses={"p2p": "10.0.0.5:26656"})
    assert code == Code.INVALID_BODY and "node id" in log
    practitioner = SigningKey.generate()
    run_block(
        app,
        [net.tx(net.orgs["h2"], "identity.register", register_body("dr-a", practitioner))],
        net.solo,
    )
    code, log = refusal(key=practitioner.public_key)
    assert code == Code.CONFLICT and "practitioner dr-a of h2" in log


def test_a_member_rotates_its_signing_key_with_proof_of_possession() -> None:
    net = make_net(3)
    app = net.app()
    old, new = net.orgs["h1"], SigningKey.generate()
    forged = _update(net, "h1", {"key": new.public_key, "key_proof": b"\x00" * 64})
    result = app.check_tx(forged)
    assert result.code == Code.UNAUTHORIZED and "key_proof" in result.log
    proof = new.sign(update_proof_message("h1", old.public_key))
    out = run_block(
        app, [_update(net, "h1", {"key": new.public_key, "key_proof": proof})], net.solo
    )
    assert out.results[0].ok
    assert _member(app, "h1")["key"] == new.public_key
    body = register_body("dr-b")
    assert app.check_tx(net.tx(old, "identity.register", body)).code == Code.UNAUTHORIZED
    assert run_block(app, [net.tx(new, "identity.register", body)], net.solo).results[0].ok


def test_a_member_cannot_take_another_members_key_even_with_a_proof() -> None:
    """h1 cannot sign a proof for h2's key (it lacks the private half); and a key proved for one
    org is refused for another: the proof names the org and the old key."""
    net = make_net(3)
    app = net.app()
    theirs = net.orgs["h2"]
    proof = theirs.sign(update_proof_message("h1", net.orgs["h1"].public_key))
    result = app.check_tx(_update(net, "h1", {"key": theirs.public_key, "key_proof": proof}))
    assert result.code == Code.CONFLICT and "field key" in result.log
    fresh = SigningKey.generate()
    replayed = fresh.sign(update_proof_message("h2", net.orgs["h2"].public_key))
    result = app.check_tx(_update(net, "h1", {"key": fresh.public_key, "key_proof": replayed}))
    assert result.code == Code.UNAUTHORIZED


def test_tls_box_and_addresses_rotate_and_the_old_tls_key_is_no_longer_trusted() -> None:
    net = make_net(3)
    app = net.app()
    first, second = _tls_key(), _tls_key()
    run_block(app, [_update(net, "h0", {"tls_key": first, "addresses": ADDRESSES})], net.solo)
    assert _trusted(app)["h0"] == first
    box = b"\x05" * 32
    out = run_block(app, [_update(net, "h0", {"tls_key": second, "box_key": box})], net.solo)
    assert [e.type for e in out.results[0].events] == ["member.updated"]
    record = _member(app, "h0")
    assert (record["tls_key"], record["box_key"], record["addresses"]) == (second, box, ADDRESSES)
    assert first not in _trusted(app).values()
    taken = app.check_tx(_update(net, "h1", {"box_key": box}))
    assert taken.code == Code.CONFLICT and "box_key" in taken.log
    empty = app.check_tx(_update(net, "h1", {}))
    assert empty.code == Code.INVALID_BODY


def test_rotating_a_validators_key_moves_its_power() -> None:
    net = make_net(3)
    app = net.app()
    old_v, new_v = b"\x11" * 32, b"\x12" * 32
    key9 = SigningKey.generate()
    args: dict[str, Any] = {"org": "h9", "name": "H9", "key": key9.public_key, "power": 10}
    args["validator_key"] = old_v
    run_block(
        app,
        [net.tx(net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args})],
        net.solo,
    )
    _vote_through(net, app, 1, ("h1",))
    net.orgs["h9"] = key9
    out = run_block(app, [_update(net, "h9", {"validator_key": new_v})], net.solo)
    updates = {(u.pub_key, u.power) for u in out.validator_updates}
    assert updates == {(old_v, 0), (new_v, 10)}


def _rebind_args(org: str = "h1", **extra) -> dict[str, Any]:
    return {
        "org": org,
        "key": SigningKey.generate().public_key,
        "box_key": b"\x21" * 32,
        "tls_key": _tls_key(),
        "addresses": {"gateway": "10.0.0.7:7443"},
        **extra,
    }


def test_a_lost_member_is_rebound_by_a_vote_and_registers_its_practitioners_again() -> None:
    net = make_net(4)
    app = net.app()
    lost = net.orgs["h1"]
    stolen = SigningKey.generate()  # dr-c's key, kept in the lost machine's home
    body = register_body("dr-c", stolen)
    run_block(app, [net.tx(lost, "identity.register", body)], net.solo)
    new = SigningKey.generate()
    args = {**_rebind_args(), "key": new.public_key}
    propose = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": args}
    )
    run_block(app, [propose], net.solo)
    own_vote = net.tx(lost, "governance.vote", {"proposal": 1, "approve": False})
    assert app.check_tx(own_vote).code == Code.REFUSED  # a thief of the old key has no say
    out = _vote_through(net, app, 1, ("h2", "h3"))  # 3 of 4, h1 counted
    events = [(e.type, dict(e.attrs)) for e in out.results[-1].events]
    assert ("member.rebound", {"org": "h1"}) in events
    assert ("practitioner.retired", {"org": "h1", "practitioner": "dr-c"}) in events
    record = _member(app, "h1")
    assert (record["key"], record["tls_key"]) == (new.public_key, args["tls_key"])
    (dr_c,) = app.query_obj("identity/practitioners", {"org": "h1"})
    assert dr_c["id"] == "dr-c" and not dr_c["active"] and dr_c["retired"]
    assert not app.query_obj("identity/actor", {"key": stolen.public_key})["active"]
    assert app.check_tx(net.tx(lost, "identity.register", register_body("x"))).code == (
        Code.UNAUTHORIZED
    )
    # the new machine registers dr-c again, with a key made there; the stolen one stays dead
    fresh = SigningKey.generate()
    again = [
        net.tx(new, "identity.register", register_body("dr-c", fresh)),
        net.tx(new, "identity.register", register_body("dr-d")),
        net.tx(new, "identity.register", {**register_body("dr-e"), "key": stolen.public_key}),
    ]
    later = run_block(app, again, net.solo)
    assert [r.ok for r in later.results] == [True, True, False]
    assert app.query_obj("identity/actor", {"key": fresh.public_key})["active"]
    assert not app.query_obj("identity/actor", {"key": stolen.public_key})["active"]
    # only a retired id is taken again: an active one stays its holder's
    twice = net.tx(new, "identity.register", register_body("dr-d"))
    assert app.check_tx(twice).code == Code.CONFLICT


def test_a_member_cannot_rebind_itself_nor_rebind_onto_anothers_keys() -> None:
    net = make_net(4)
    app = net.app()

    def propose(by: str, args: dict[str, Any]):
        tx = net.tx(net.orgs[by], "governance.propose", {"action": "rebind_member", "args": args})
        return app.check_tx(tx)

    own = propose("h1", _rebind_args("h1"))
    assert own.code == Code.REFUSED and "update_member" in own.log
    stolen = propose("h0", _rebind_args("h1", key=net.orgs["h2"].public_key))
    assert stolen.code == Code.CONFLICT and "args.key" in stolen.log
    ghost = propose("h0", _rebind_args("nobody"))
    assert ghost.code == Code.NOT_FOUND and "args.org" in ghost.log


def test_rebinding_a_validator_moves_its_power_to_the_new_validator_key() -> None:
    net = make_net(3)
    app = net.app()
    key9 = SigningKey.generate()
    args: dict[str, Any] = {"org": "h9", "name": "H9", "key": key9.public_key, "power": 5}
    args["validator_key"] = b"\x31" * 32
    run_block(
        app,
        [net.tx(net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args})],
        net.solo,
    )
    _vote_through(net, app, 1, ("h1",))
    missing = _rebind_args("h9")
    tx = net.tx(net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": missing})
    assert app.check_tx(tx).code == Code.INVALID_BODY  # a validator must get a new validator key
    rebind = _rebind_args("h9", validator_key=b"\x32" * 32)
    tx = net.tx(net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": rebind})
    run_block(app, [tx], net.solo)
    out = _vote_through(net, app, 2, ("h1", "h2"))
    assert {(u.pub_key, u.power) for u in out.validator_updates} == {
        (b"\x31" * 32, 0),
        (b"\x32" * 32, 5),
    }


def test_a_removed_members_tls_key_is_no_longer_trusted() -> None:
    net = make_net(3)
    app = net.app()
    tls = _tls_key()
    run_block(app, [_update(net, "h2", {"tls_key": tls})], net.solo)
    assert "h2" in _trusted(app)
    remove = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "remove_member", "args": {"org": "h2"}}
    )
    run_block(app, [remove], net.solo)
    _vote_through(net, app, 1, ("h1",))
    assert "h2" not in _trusted(app)
    assert app.check_tx(_update(net, "h2", {"tls_key": _tls_key()})).code == Code.UNAUTHORIZED


def test_governance_v1_chains_replay_rebindings_as_they_passed() -> None:
    """Under governance v1 a rebinding took two thirds of the others (h0 and h2 of four) and
    retired nothing: a chain started under v1 replays so until its members activate v2."""
    net = make_net(4)
    net.genesis = replace(net.genesis, contracts={**net.genesis.contracts, "governance": 1})
    app = net.app()
    kept = SigningKey.generate()
    run_block(
        app, [net.tx(net.orgs["h1"], "identity.register", register_body("dr-c", kept))], net.solo
    )
    propose = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": _rebind_args()}
    )
    run_block(app, [propose], net.solo)
    _vote_through(net, app, 1, ("h2",))
    assert app.query_obj("governance/proposal", {"id": 1})["status"] == "executed"
    assert app.query_obj("identity/actor", {"key": kept.public_key})["active"]


def test_a_rebinding_two_thirds_cannot_reach_is_refused_when_proposed() -> None:
    """Of two members, the one left is half: two thirds without the lost member's own vote
    is out of reach, so the proposal is refused at once rather than left open for nothing."""
    net = make_net(2)
    app = net.app()
    tx = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": _rebind_args()}
    )
    refused = app.check_tx(tx)
    assert refused.code == Code.REFUSED and "two thirds of 2 members" in refused.log
