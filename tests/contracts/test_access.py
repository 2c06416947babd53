"""The access trail: entries are validated, kept in time order per patient, and provable."""

from __future__ import annotations

from medledger.ledger.errors import Code

from ..ledger.helpers import make_net, run_block

PID = "ab" * 32


def _entry(**over):  # type: ignore[no-untyped-def]
    e = {
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
    return e


def test_granted_and_denied_accesses_are_kept_in_order() -> None:
    net = make_net()
    app = net.app()
    run_block(app, [net.tx(net.orgs["h0"], "access.log", {"entries": [_entry()]})], net.solo)
    denied = _entry(outcome="denied", basis="", reason="no consent", actor_org="h2", actor="org:h2")
    run_block(app, [net.tx(net.orgs["h0"], "access.log", {"entries": [denied]})], net.solo)
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [(e["outcome"], e["actor_org"], e["custodian"]) for e in trail] == [
        ("granted", "h1", "h0"),
        ("denied", "h2", "h0"),
    ]
    assert trail[0]["time"] < trail[1]["time"]
    assert len(app.query_obj("access/by_custodian", {"org": "h0"})) == 2


def test_entries_must_say_why() -> None:
    net = make_net()
    app = net.app()
    cases = [
        (_entry(basis=""), "basis"),
        (_entry(outcome="denied", basis=""), "reason"),
        (_entry(action="peek"), "action"),
        (_entry(pid="nope"), "pid"),
    ]
    for entry, field in cases:
        result = app.check_tx(net.tx(net.orgs["h0"], "access.log", {"entries": [entry]}))
        assert result.code == Code.INVALID_BODY, result
        assert field in result.log


def test_a_registration_can_log_the_records_disclosure_to_an_entitled_hospital() -> None:
    from medledger.contracts.records import disclosed
    from medledger.ledger.store import StateView

    net = make_net()
    app = net.app()
    entries = [
        {"rid": f"r{i}", "pid": PID, "commitment": bytes([i]) * 32, "meta_ct": b"\x01" * 40}
        for i in range(3)
    ]
    body = {
        "entries": entries,
        "disclosures": [{"org": "h1", "basis": "consent:4", "rids": ["r0", "r2"]}],
    }
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "records.register", body)], net.solo).results[0].ok
    )
    (export,) = [
        e for e in app.query_obj("access/of_patient", {"pid": PID}) if e["action"] == "export"
    ]
    assert (export["actor_org"], export["custodian"], export["basis"], export["rids"]) == (
        "h1",
        "h0",
        "consent:4",
        ["r0", "r2"],
    )
    state = StateView(app.store)
    assert disclosed(state, "h1", "r0") and not disclosed(state, "h1", "r1")


def test_a_disclosure_names_another_member_and_records_of_its_own_tx() -> None:
    net = make_net()
    app = net.app()
    entry = {"rid": "r9", "pid": PID, "commitment": b"\x02" * 32, "meta_ct": b"\x01" * 40}
    for disclosure, field in [
        ({"org": "h0", "basis": "consent:1", "rids": ["r9"]}, "org"),
        ({"org": "nobody", "basis": "consent:1", "rids": ["r9"]}, "org"),
        ({"org": "h1", "basis": "", "rids": ["r9"]}, "basis"),
        ({"org": "h1", "basis": "consent:1", "rids": ["elsewhere"]}, "rids"),
    ]:
        body = {"entries": [entry], "disclosures": [disclosure]}
        result = app.check_tx(net.tx(net.orgs["h0"], "records.register", body))
        assert result.code == Code.INVALID_BODY and field in result.log, result
