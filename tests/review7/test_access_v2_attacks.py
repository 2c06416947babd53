"""Review of session 7's `access` v2 (branch `auditv2`): the per-org journal sequence mark
(`acc/seq/<org>`), under which every entry is skipped as "already on the chain"."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medledger.contracts.access import MAX_SEQ, log_body
from medledger.ledger.app import Application
from medledger.ledger.keys import SigningKey
from tests.support.access import PID, _entry
from tests.support.ledger import T0, Net, make_net, run_block


def _tls_key() -> bytes:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _own(seq: int, rid: str) -> dict[str, Any]:
    """An entry h1's journal sends: h1 itself read one of its records of PID."""
    return _entry(
        actor="org:h1", actor_org="h1", basis="custodian", rids=[rid], seq=seq, request=None
    )


def _log(net: Net, app: Application, key: SigningKey, entries: list[dict[str, Any]]) -> Any:
    tx = net.tx(key, "access.log", log_body(entries, 2))
    return run_block(app, [tx], net.solo).results[0]


def test_a_thiefs_sequence_mark_does_not_swallow_the_rebound_members_trail() -> None:
    """The thief holds h1's organisation key until the rebinding vote: it logs one entry
    numbered just below MAX_SEQ. The mark is per org and outlives the rebinding, so the
    rebound h1's journal (numbering from its clock in µs, and from the chain's mark only
    once its replica has caught up) sends entries the contract skips without a word: a
    committed tx, no row. With the mark read, its numbers run past MAX_SEQ and every tx is
    refused for good. Either way the rebound hospital's reads are no longer on the trail."""
    net = make_net(4)
    app = net.app()
    assert app.query_obj("governance/contracts", {})["access"] >= 2
    thief = net.orgs["h1"]
    assert _log(net, app, thief, [_own(MAX_SEQ - 1, "stolen")]).ok
    rebound = SigningKey.generate()
    args = {"org": "h1", "key": rebound.public_key, "tls_key": _tls_key()}
    propose = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "rebind_member", "args": args}
    )
    votes = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": 1, "approve": True})
        for o in ("h2", "h3")
    ]
    assert all(r.ok for r in run_block(app, [propose, *votes], net.solo).results)
    assert app.query_obj("governance/members", {})[1]["key"] == rebound.public_key
    first = (T0 + 3_600_000) * 1000  # the new journal's first number: its clock in µs
    result = _log(net, app, rebound, [_own(first, "after-recovery")])
    assert result.ok, result.log
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert "after-recovery" in [r for e in trail for r in e["rids"]], (
        "the rebound member's entry was skipped under the thief's mark"
    )
