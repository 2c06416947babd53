"""Review (session 7, found while checking access v2's column checks): ids that become key
segments (`common.check_id`: org ids, practitioner ids, record ids...) are matched with
`^...$`, and Python's `$` also matches before a final newline."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.ledger import make_net, register_body, run_block


def _tls_key() -> bytes:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_practitioner_id_with_a_trailing_newline_is_refused() -> None:
    """h0 registers "dr-b" and then "dr-b\\n": two practitioners that every page, CLI table
    and patient's access history prints alike ("practitioner:h0/dr-b"), with other keys and
    roles. The look-alike's reads land on the trail under the same visible name."""
    net = make_net(3)
    app = net.app()
    first = net.tx(net.orgs["h0"], "identity.register", register_body("dr-b"))
    assert run_block(app, [first], net.solo).results[0].ok
    twin = app.check_tx(net.tx(net.orgs["h0"], "identity.register", register_body("dr-b\n")))
    assert twin.code == Code.INVALID_BODY, "a look-alike practitioner id was accepted"


def test_an_applicant_cannot_take_a_members_org_id_with_a_trailing_newline() -> None:
    """An applicant asking to be admitted as "h1\\n" is shown to the voters, and later on
    every patient's trail and portal, as member h1."""
    net = make_net(4)
    app = net.app()
    args = {"org": "h1\n", "name": "H1", "key": SigningKey.generate().public_key}
    args["tls_key"] = _tls_key()
    propose = net.tx(net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args})
    assert app.check_tx(propose).code == Code.INVALID_BODY, "a look-alike org id was accepted"


def test_an_address_with_a_trailing_newline_is_refused() -> None:
    """Members' addresses are written into other nodes' configurations (CometBFT's peers):
    `host:port` must end there."""
    net = make_net(3)
    app = net.app()
    body = {"addresses": {"gateway": "10.0.0.7:7443\n"}}
    result = app.check_tx(net.tx(net.orgs["h1"], "governance.update_member", body))
    assert result.code == Code.INVALID_BODY, "an address ending in a newline was accepted"
