"""A registration names its author: an active practitioner of the custodian with a care role,
or the hospital itself; the same tx puts the write on the patient's access trail."""

from __future__ import annotations

from typing import Any

from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.ledger import META_CT, make_net, run_block

PID = "ab" * 32


def _entries(*rids: str) -> list[dict[str, Any]]:
    return [
        {"rid": rid, "pid": PID, "commitment": bytes([i]) * 32, "meta_ct": META_CT}
        for i, rid in enumerate(rids)
    ]


def _world():
    """h0 with dr-a (physician), dr-r (researcher) and dr-gone (revoked); h1 with dr-b."""
    net = make_net()
    app = net.app()
    txs = []
    for org, prac, roles in (
        ("h0", "dr-a", ["physician"]),
        ("h0", "dr-r", ["researcher"]),
        ("h0", "dr-gone", ["physician"]),
        ("h1", "dr-b", ["physician"]),
    ):
        key = SigningKey.generate()
        body = {"practitioner": prac, "key": key.public_key, "roles": roles}
        txs.append(net.tx(net.orgs[org], "identity.register", body))
    txs.append(net.tx(net.orgs["h0"], "identity.revoke", {"practitioner": "dr-gone"}))
    assert all(r.ok for r in run_block(app, txs, net.solo).results)
    return net, app


def test_a_named_author_is_recorded_and_the_write_is_on_the_trail() -> None:
    net, app = _world()
    body = {"entries": _entries("r1", "r2"), "author": "practitioner:h0/dr-a"}
    (result,) = run_block(app, [net.tx(net.orgs["h0"], "records.register", body)], net.solo).results
    assert result.ok, result.log
    entry = app.query_obj("records/entry", {"rid": "r1"})
    assert entry["by"] == "dr-a"
    (created,) = app.query_obj("access/of_patient", {"pid": PID})
    assert (created["action"], created["actor"], created["custodian"], created["rids"]) == (
        "create",
        "practitioner:h0/dr-a",
        "h0",
        ["r1", "r2"],
    )
    assert created["tx"] == entry["tx"]  # one tx: the record and its audit are inseparable
    amended = {**_entries("r1")[0], "version": 2, "commitment": b"\x09" * 32}
    body = {"entries": [amended], "author": "org:h0"}
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "records.register", body)], net.solo).results[0].ok
    )
    latest = app.query_obj("access/of_patient", {"pid": PID})[-1]
    assert (latest["action"], latest["actor"], latest["rids"]) == ("update", "org:h0", ["r1"])


def test_an_author_who_may_not_write_is_refused_and_nothing_is_registered() -> None:
    net, app = _world()
    for author, why in (
        ("practitioner:h0/dr-gone", "not an active practitioner"),  # revoked
        ("practitioner:h0/dr-r", "no role that writes"),  # researcher
        ("practitioner:h1/dr-b", "not org:h0"),  # another hospital's practitioner
        ("practitioner:h0/dr-nobody", "not an active practitioner"),
        ("org:h1", "not org:h0"),
    ):
        body = {"entries": _entries("r1"), "author": author}
        (result,) = run_block(
            app, [net.tx(net.orgs["h0"], "records.register", body)], net.solo
        ).results
        assert result.code == Code.UNAUTHORIZED and why in result.log, (author, result.log)
    assert app.query_obj("records/entry", {"rid": "r1"}) is None
    assert app.query_obj("access/of_patient", {"pid": PID}) == []


def test_without_an_author_the_hospital_itself_registers_and_is_named_on_the_trail() -> None:
    net, app = _world()
    body = {"entries": _entries("r1")}
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "records.register", body)], net.solo).results[0].ok
    )
    assert app.query_obj("records/entry", {"rid": "r1"})["by"] == ""
    # Every registration is on the patient's trail: here the hospital's own key wrote it.
    [entry] = app.query_obj("access/of_patient", {"pid": PID})
    assert (entry["actor"], entry["action"], entry["rids"]) == ("org:h0", "create", ["r1"])
