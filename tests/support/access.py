"""Access-trail helpers shared by the access-contract tests: signed exchange requests and
entries of practitioner dr-a of h1 reading patient PID at h0."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from medledger.contracts import access
from medledger.contracts.access import request_bytes
from medledger.ledger.app import Application
from medledger.ledger.keys import SigningKey
from tests.support.ledger import ACCESS_VERSION, T0, Net, make_net, run_block

PID = "ab" * 32
DR_A = SigningKey(b"\x05" * 32)  # h1's practitioner dr-a
ORG_KEYS = make_net().orgs  # the same keys in every make_net()
_nonces = itertools.count(1)


def log_body(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """An `access.log` body of these entries for the version test nets start with."""
    return access.log_body(entries, ACCESS_VERSION[0])


def signed_request(
    key: SigningKey,
    audience: str = "h0",
    time_ms: int = T0,
    target: str = "/exchange/v1/records",
    asked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A request as the exchange signs it (exchange/signing.py), addressed to `audience`,
    asking `asked` (by default PID's records r1 and r2 for treatment)."""
    nonce = next(_nonces).to_bytes(16, "big")
    if asked is None:
        asked = {"pid": PID, "purpose": "treatment", "rids": ["r1", "r2"], "height": 2}
    body = json.dumps(asked).encode()
    body_hash = hashlib.sha256(body).digest()
    signed = request_bytes("POST", target, body_hash, time_ms, nonce, audience)
    return {
        "key": key.public_key,
        "time_ms": time_ms,
        "nonce": nonce,
        "signature": key.sign(signed),
        "method": "POST",
        "target": target,
        "body_hash": body_hash,
        "body": body,
    }


def _signer_of(actor: str, actor_org: str) -> SigningKey:
    if actor == "practitioner:h1/dr-a":
        return DR_A
    return ORG_KEYS.get(actor_org, SigningKey(b"\x09" * 32))


def _with_dr_a() -> tuple[Net, Application]:
    """Three members; h1 registered its practitioner dr-a."""
    net = make_net()
    app = net.app()
    body = {"practitioner": "dr-a", "key": DR_A.public_key, "roles": ["nurse"]}
    assert (
        run_block(app, [net.tx(net.orgs["h1"], "identity.register", body)], net.solo).results[0].ok
    )
    return net, app


def _entry(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "actor": "practitioner:h1/dr-a",
        "actor_org": "h1",
        "pid": PID,
        "action": "read",
        "purpose": "treatment",
        "outcome": "granted",
        "basis": "consent:7",
        "rids": ["r1", "r2"],
    }
    e.update(over)
    # A remote access carries its hospital's signed request; `request=None`: none at all.
    if "request" not in over and e["actor_org"] != "h0":
        asked = {"pid": e["pid"], "purpose": e["purpose"], "rids": e["rids"]}
        e["request"] = signed_request(_signer_of(str(e["actor"]), str(e["actor_org"])), asked=asked)
    if e.get("request") is None:
        e.pop("request", None)
    return e
