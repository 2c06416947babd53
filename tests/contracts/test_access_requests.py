"""A hospital asks a patient for access: the request is recorded, decides nothing, and shows
as granted once the patient consents."""

from __future__ import annotations

from medledger.ledger.errors import Code
from tests.support.ledger import META_CT, T0, make_net, run_block

PID = "ef" * 32


def test_a_request_is_recorded_then_granted_by_a_consent() -> None:
    net = make_net()
    app = net.app()
    # h0 holds the patient's care records: the patient signs in on its portal.
    record = {"rid": "r-1", "pid": PID, "commitment": b"\x01" * 32, "meta_ct": META_CT}
    run_block(app, [net.tx(net.orgs["h0"], "records.register", {"entries": [record]})], net.solo)
    ask = {"pid": PID, "categories": ["labs"], "purpose": "treatment", "reason_hash": b"\x03" * 32}
    run_block(app, [net.tx(net.orgs["h1"], "consent.request", ask)], net.solo)
    (req,) = app.query_obj("consent/requests", {"pid": PID})
    assert (req["org"], req["categories"], req["granted"]) == ("h1", ["labs"], False)
    # Asking grants nothing.
    meta = {"custodian": "h0", "category": "labs"}
    decision = app.query_obj(
        "authorize/check",
        {"actor": "h1", "pid": PID, "meta": meta, "purpose": "treatment", "at_ms": T0 + 10_000},
    )
    assert decision["allowed"] is False
    grant = {
        "pid": PID,
        "grantee": "org:h1",
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": T0,
        "end_ms": 0,
        "evidence_hash": b"\x04" * 32,  # the patient's authenticated portal request
        "channel": "portal",
    }
    run_block(app, [net.tx(net.orgs["h0"], "consent.grant", grant)], net.solo)
    (req,) = app.query_obj("consent/requests", {"pid": PID})
    assert req["granted"] is True


def test_bad_requests_name_the_field() -> None:
    net = make_net()
    app = net.app()
    for body, field in [
        ({"pid": "x", "categories": ["labs"], "purpose": "treatment"}, "pid"),
        ({"pid": PID, "categories": ["gossip"], "purpose": "treatment"}, "categories"),
        ({"pid": PID, "categories": ["labs"], "purpose": "marketing"}, "purpose"),
    ]:
        result = app.check_tx(net.tx(net.orgs["h1"], "consent.request", body))
        assert result.code == Code.INVALID_BODY and field in result.log, result
