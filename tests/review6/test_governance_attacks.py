"""Review of issue 16's governance (session 6): acts a member can sign against the others.

Each test is an attack; it passes when the contract refuses it."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.ledger import make_net, run_block

# DER SubjectPublicKeyInfo header of an uncompressed P-256 key; 0x04 || X || Y follows.
P256_HEADER = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


def _tls_key() -> bytes:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def off_curve_tls_key() -> bytes:
    """The shape of a P-256 key (header, 0x04, 32 + 32 bytes) whose point is on no curve."""
    return P256_HEADER + b"\x04" + b"\x01" * 64


def _update(net: Any, org: str, body: dict[str, Any]) -> bytes:
    tx: bytes = net.tx(net.orgs[org], "governance.update_member", body)
    return tx


def _member(app: Any, org: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        m for m in app.query_obj("governance/members", {}) if m["org"] == org
    )
    return found


def test_a_tls_key_whose_point_is_not_on_the_curve_is_refused() -> None:
    """Every node builds a trust anchor from every member's tls_key at each handshake; a key
    that does not load (a point off the curve) must never reach the chain."""
    net = make_net(3)
    app = net.app()
    result = app.check_tx(_update(net, "h1", {"tls_key": off_curve_tls_key()}))
    assert result.code == Code.INVALID_BODY and "tls_key" in result.log
    args = {"org": "h9", "name": "H9", "key": SigningKey.generate().public_key}
    args["tls_key"] = off_curve_tls_key()
    propose = net.tx(net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args})
    assert app.check_tx(propose).code == Code.INVALID_BODY


def test_a_member_cannot_take_the_keys_of_an_open_rebinding_to_block_it() -> None:
    """h3 reads the keys proposed for h1's rebinding on the chain and claims them first with
    its own update_member (TLS, box and validator keys need no proof of possession): if that
    passed, the rebinding's last vote would fail on 'this key belongs to a member' for ever."""
    net = make_net(4)
    app = net.app()
    args = {
        "org": "h1",
        "key": SigningKey.generate().public_key,
        "box_key": b"\x21" * 32,
        "tls_key": _tls_key(),
        "addresses": {"gateway": "10.0.0.7:7443"},
    }
    propose = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": args}
    )
    assert run_block(app, [propose], net.solo).results[0].ok
    for field in ("tls_key", "box_key"):
        claim = app.check_tx(_update(net, "h3", {field: args[field]}))
        assert claim.code == Code.CONFLICT and field in claim.log, (field, claim.log)
    votes = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": 1, "approve": True})
        for o in ("h2", "h3")  # with h0's: three of four, as an admission
    ]
    out = run_block(app, votes, net.solo)
    assert all(r.ok for r in out.results), [r.log for r in out.results]
    assert _member(app, "h1")["tls_key"] == args["tls_key"]


def test_rebinding_a_member_takes_two_thirds_of_the_members_as_admission_does() -> None:
    """Rebinding hands the org's identity, its replicas and (with its escrow's shares) its
    vault keys to whoever holds the new keys. In four members, h0 and h2 alone (half of the
    consortium) must not be enough: admitting a member takes three of four."""
    net = make_net(4)
    app = net.app()
    args = {"org": "h1", "key": SigningKey.generate().public_key, "tls_key": _tls_key()}
    propose = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": args}
    )
    run_block(app, [propose], net.solo)
    vote = net.tx(net.orgs["h2"], "governance.vote", {"proposal": 1, "approve": True})
    run_block(app, [vote], net.solo)
    proposal = app.query_obj("governance/proposal", {"id": 1})
    assert proposal["status"] == "open", "two of four members rebound a third"
    assert _member(app, "h1")["key"] != args["key"]


def test_a_box_key_of_small_order_is_refused() -> None:
    """Nothing can be sealed to a small-order X25519 key (libsodium refuses): a holder with one
    would make the escrow of every member it holds shares for fail at each deposit."""
    from nacl.public import PublicKey, SealedBox

    net = make_net(4)
    app = net.app()
    for bad in (b"\x00" * 32, b"\x01" + b"\x00" * 31, b"\xec" + b"\xff" * 30 + b"\x7f"):
        try:
            SealedBox(PublicKey(bad)).encrypt(b"a share")
            sealed = True
        except RuntimeError:
            sealed = False
        assert not sealed  # why it must not be a member's box key
        result = app.check_tx(_update(net, "h2", {"box_key": bad}))
        assert result.code == Code.INVALID_BODY and "box_key" in result.log, result.log


def test_a_rebinding_retires_the_practitioner_keys_that_lived_on_the_lost_machine() -> None:
    """Practitioners' keys are kept in the hospital's home (keys/practitioners/): whoever took
    the machine has them. After the vote that rebinds the org, they must not still sign for
    it (the new machine registers its practitioners again)."""
    from tests.support.ledger import register_body

    net = make_net(4)
    app = net.app()
    stolen = SigningKey.generate()
    register = net.tx(net.orgs["h1"], "identity.register", register_body("dr-c", stolen))
    assert run_block(app, [register], net.solo).results[0].ok
    assert app.query_obj("identity/actor", {"key": stolen.public_key})["active"]
    args = {"org": "h1", "key": SigningKey.generate().public_key, "tls_key": _tls_key()}
    propose = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": args}
    )
    run_block(app, [propose], net.solo)
    votes = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": 1, "approve": True})
        for o in ("h2", "h3")
    ]
    assert all(r.ok for r in run_block(app, votes, net.solo).results)
    assert _member(app, "h1")["key"] == args["key"]
    actor = app.query_obj("identity/actor", {"key": stolen.public_key})
    assert actor is None or not actor["active"], "a key from the lost machine still signs for h1"


def test_two_newcomers_cannot_choose_org_ids_that_make_them_a_members_escrow_holders() -> None:
    """Holders are "the next escrow_shares members after the org in the sorted ring": the
    ring's order is the org ids', and an applicant chooses its own id. Two colluding
    applicants named right after h1 ("h1a", "h1b") become two of h1's holders: with the
    default threshold of 2 they rebuild its vault KEK and backup key without any vote."""
    from dataclasses import replace

    net = make_net(4)
    members = [replace(m, box_key=bytes([i + 1]) * 32) for i, m in enumerate(net.genesis.members)]
    net.genesis = replace(net.genesis, members=members)
    app = net.app()
    voters = ["h2", "h3"]
    for pid, org in enumerate(("h1a", "h1b"), start=1):
        key = SigningKey.generate()
        args = {"org": org, "name": org.upper(), "key": key.public_key}
        args["box_key"] = bytes([0x40 + pid]) * 32
        propose = net.tx(
            net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args}
        )
        votes = [
            net.tx(net.orgs[o], "governance.vote", {"proposal": pid, "approve": True})
            for o in voters
        ]
        run_block(app, [propose, *votes], net.solo)
        net.orgs[org] = key
        voters.append(org)  # the first colluder votes the second in
    orgs = [m["org"] for m in app.query_obj("governance/members", {})]
    assert {"h1a", "h1b"} <= set(orgs)
    status = app.query_obj("escrow/status", {"org": "h1"})
    newcomers = [h for h in status["holders"] if h in ("h1a", "h1b")]
    assert len(newcomers) < status["threshold"], f"h1's holders: {status['holders']}"
