"""Identity: a hospital registers, re-roles and revokes only its own practitioners."""

from __future__ import annotations

from typing import Any

from medledger.contracts.identity import resolve_actor
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from medledger.ledger.store import StateView
from tests.support.ledger import make_net, run_block


def test_register_update_and_revoke() -> None:
    net = make_net()
    app = net.app()
    key = SigningKey.generate()
    h0 = net.orgs["h0"]
    run_block(
        app,
        [
            net.tx(
                h0,
                "identity.register",
                {"practitioner": "dr-a", "key": key.public_key, "roles": ["nurse"]},
            )
        ],
        net.solo,
    )
    actor = resolve_actor(StateView(app.store), key.public_key)
    assert actor is not None and (actor.org, actor.practitioner, actor.roles, actor.active) == (
        "h0",
        "dr-a",
        ("nurse",),
        True,
    )

    run_block(
        app,
        [
            net.tx(
                h0,
                "identity.update_roles",
                {"practitioner": "dr-a", "roles": ["nurse", "emergency"]},
            )
        ],
        net.solo,
    )
    assert resolve_actor(StateView(app.store), key.public_key).roles == ("emergency", "nurse")  # type: ignore[union-attr]

    # Another hospital cannot revoke h0's practitioner.
    other = app.check_tx(net.tx(net.orgs["h1"], "identity.revoke", {"practitioner": "dr-a"}))
    assert other.code == Code.NOT_FOUND

    run_block(
        app, [net.tx(h0, "identity.revoke", {"practitioner": "dr-a", "reason": "left"})], net.solo
    )
    assert resolve_actor(StateView(app.store), key.public_key).active is False  # type: ignore[union-attr]
    again = app.check_tx(net.tx(h0, "identity.revoke", {"practitioner": "dr-a"}))
    assert again.code == Code.CONFLICT


def test_registration_errors_name_the_field() -> None:
    net = make_net()
    app = net.app()
    h0 = net.orgs["h0"]
    key = SigningKey.generate().public_key
    cases: list[tuple[dict[str, Any], str]] = [
        ({"practitioner": "dr-a", "key": key, "roles": ["surgeon-general"]}, "roles"),
        ({"practitioner": "dr-a", "key": key, "roles": []}, "roles"),
        ({"practitioner": "dr-a", "key": b"short", "roles": ["nurse"]}, "key"),
        ({"practitioner": "Dr A", "key": key, "roles": ["nurse"]}, "practitioner"),
        ({"practitioner": "dr-a", "roles": ["nurse"]}, "key"),
        ({"practitioner": "dr-a", "key": h0.public_key, "roles": ["nurse"]}, "key"),
    ]
    for body, field in cases:
        result = app.check_tx(net.tx(h0, "identity.register", body))
        assert result.code in (Code.INVALID_BODY, Code.CONFLICT), (body, result)
        assert field in result.log, (body, result.log)
