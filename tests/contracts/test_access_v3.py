"""`access` v3 (issue 18, session 9): a research export's entry names the hospital that
received the patient's derived facts (`to`), so the patient's trail says where they went;
a v2 chain replays as before (its layout has no `to`)."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.contracts.access import log_body
from medledger.ledger.app import Application
from tests.support.access import PID, _entry
from tests.support.ledger import ACCESS_VERSION, Net, make_net, run_block


def _net(version: int) -> tuple[Net, Application]:
    before = ACCESS_VERSION[0]
    ACCESS_VERSION[0] = version
    try:
        net = make_net()
    finally:
        ACCESS_VERSION[0] = before
    app = net.app()
    assert app.query_obj("governance/contracts", {})["access"] == version
    return net, app


def _export(**over: Any) -> dict[str, Any]:
    """h0 sends a patient's partial facts for study s1 (the research agent's entry)."""
    return _entry(
        **{
            "actor": "org:h0",
            "actor_org": "h0",
            "action": "export",
            "purpose": "research",
            "basis": "enrolment:s1",
            "rids": [],
            "to": "h1",
            **over,
        }
    )


def _log(net: Net, app: Application, entries: list[dict[str, Any]], version: int) -> Any:
    tx = net.tx(net.orgs["h0"], "access.log", log_body(entries, version))
    return run_block(app, [tx], net.solo).results[0]


def test_new_consortia_name_the_receiving_hospital_on_the_patients_trail() -> None:
    net, app = _net(3)
    assert _log(net, app, [_export(seq=1), _export(seq=2, action="read", to="")], 3).ok
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [(e["action"], e["to"]) for e in trail] == [("export", "h1"), ("read", "")]
    assert trail[0]["custodian"] == "h0"


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"action": "read"}, "only an export names one"),
        ({"to": "h0"}, "a member hospital other than h0"),  # itself
        ({"to": "h9"}, "a member hospital other than h0"),  # no member
        ({"to": "H1/../x"}, "a member hospital other than h0"),
    ],
)
def test_a_receiver_is_another_member_and_only_of_an_export(over: dict[str, Any], why: str) -> None:
    net, app = _net(3)
    result = _log(net, app, [_export(seq=1, **over)], 3)
    assert not result.ok and why in result.log, result.log
    assert app.query_obj("access/of_patient", {"pid": PID}) == []


def test_an_older_chain_keeps_its_layout() -> None:
    """Under v2 the journal leaves `to` out (`log_body`), and a body carrying it is refused
    as before; an entry without `to` is written the same bytes under v2 and v3."""
    assert "to" not in log_body([_export(seq=1)], 2)["columns"]
    assert "to" not in log_body([_export()], 1)["entries"][0]
    net2, app2 = _net(2)
    body = log_body([_export(seq=1)], 3)
    refused = run_block(app2, [net2.tx(net2.orgs["h0"], "access.log", body)], net2.solo)
    assert not refused.results[0].ok
    assert _log(net2, app2, [_export(seq=1)], 2).ok
    (entry,) = app2.query_obj("access/of_patient", {"pid": PID})
    assert entry["to"] == ""  # read back in the same shape
    net3, app3 = _net(3)
    assert _log(net3, app3, [_export(seq=1, to="")], 3).ok
    rows: list[list[Any]] = []
    for app in (app2, app3):
        with app.read_view() as view:
            rows.extend(row for _, row in view.scan(f"acc/ptx/{PID}/"))
    custodian, signer, _height, entries = rows[0]
    assert [custodian, signer, entries] == [rows[1][0], rows[1][1], rows[1][3]]
    assert len(entries[0]) == 13  # no 14th column without a receiver
