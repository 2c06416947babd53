"""The access trail: entries are validated, kept in time order per patient, and provable."""

from __future__ import annotations

import pytest

from medledger.contracts.access import (
    DENIAL_REASONS,
    MAX_BASIS,
    MAX_ENTRIES,
    MAX_REASON,
    MAX_RIDS,
)
from medledger.contracts.records import META_CT_SIZES
from medledger.ledger.errors import Code
from tests.support.access import PID, _entry, _with_dr_a, log_body
from tests.support.ledger import make_net, run_block

OTHER_PID = "cd" * 32
META_CT = b"\x01" * META_CT_SIZES[0]

pytestmark = pytest.mark.usefixtures("access_version")  # each version of access


def test_granted_and_denied_accesses_are_kept_in_order() -> None:
    net, app = _with_dr_a()
    run_block(app, [net.tx(net.orgs["h0"], "access.log", log_body([_entry()]))], net.solo)
    denied = _entry(outcome="denied", basis="", reason="no consent", actor_org="h2", actor="org:h2")
    run_block(app, [net.tx(net.orgs["h0"], "access.log", log_body([denied]))], net.solo)
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [(e["outcome"], e["actor_org"], e["custodian"]) for e in trail] == [
        ("granted", "h1", "h0"),
        ("denied", "h2", "h0"),
    ]
    assert trail[0]["time"] < trail[1]["time"]
    assert {e["signer"] for e in trail} == {"org:h0"}  # who served and signed each entry
    assert len(app.query_obj("access/by_custodian", {"org": "h0"})) == 2


def test_a_hospital_cannot_attribute_an_access_to_another_without_its_signed_request() -> None:
    """Issue 11 item 5: h0 signed an entry naming h1's practitioner as actor, and it committed."""
    net, app = _with_dr_a()
    forged = _entry(request=None)
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body([forged])))
    assert result.code == Code.UNAUTHORIZED and "request" in result.log, result
    # With h1's signed request, every replica checks h1 asked; the trail says h0 served it.
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "access.log", log_body([_entry()]))], net.solo)
        .results[0]
        .ok
    )
    (entry,) = app.query_obj("access/of_patient", {"pid": PID})
    assert (entry["actor_org"], entry["custodian"], entry["signer"]) == ("h1", "h0", "org:h0")


@pytest.mark.parametrize(
    ("over", "code", "words"),
    [
        # the actor must be of actor_org
        ({"actor": "practitioner:h2/dr-a"}, Code.UNAUTHORIZED, "is not of h1"),
        ({"actor": "org:h2"}, Code.UNAUTHORIZED, "is not of h1"),
        ({"actor": "dr-a"}, Code.INVALID_BODY, "practitioner:<org>/<id>"),
        ({"actor": "practitioner:h1/dr-nobody"}, Code.NOT_FOUND, "dr-nobody"),
        ({"actor": "org:ghost", "actor_org": "ghost"}, Code.NOT_FOUND, "not a member"),
        # a patient is served by the hospital they signed in to
        ({"actor": f"patient:{PID}"}, Code.UNAUTHORIZED, "actor_org must be h0"),
        (
            {"actor": f"patient:{OTHER_PID}", "actor_org": "h0"},
            Code.UNAUTHORIZED,
            "only their own data",
        ),
        ({"actor": "patient:nope", "actor_org": "h0"}, Code.INVALID_BODY, "actor"),
    ],
)
def test_the_actor_is_someone_of_actor_org(over: dict, code: Code, words: str) -> None:  # type: ignore[type-arg]
    net, app = _with_dr_a()
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body([_entry(**over)])))
    assert result.code == code and words in result.log, result


def test_a_patient_at_their_hospital_is_logged_and_so_is_another_patients_refused_attempt() -> None:
    net, app = _with_dr_a()
    own = _entry(actor=f"patient:{PID}", actor_org="h0", purpose="patient-request")
    attempt = _entry(
        actor=f"patient:{OTHER_PID}",
        actor_org="h0",
        outcome="denied",
        basis="",
        reason="other patient",
    )
    txs = [net.tx(net.orgs["h0"], "access.log", log_body([own, attempt]))]
    assert run_block(app, txs, net.solo).results[0].ok


@pytest.mark.parametrize(
    ("over", "words"),
    [
        # Issue 11 item 5: a 400 KB reason and 20,000 rids in one entry had committed.
        ({"outcome": "denied", "basis": "", "reason": "x" * 400_000}, "not a denial code"),
        ({"rids": [f"r{i}" for i in range(20_000)]}, "rids: at most"),
        ({"outcome": "denied", "basis": "", "reason": "x" * MAX_REASON}, "not a denial code"),
        ({"rids": [f"r{i}" for i in range(MAX_RIDS + 1)]}, "rids"),
        ({"basis": "consent:" + "1" * MAX_BASIS}, "basis: at most"),
        # a basis is a code, never text that could say something of the patient
        ({"basis": "HIV clinic follow-up"}, "is not a basis"),
        ({"basis": "consent:HIV follow-up"}, "not a valid id"),
        ({"actor": "practitioner:h1/" + "a" * 200}, "actor: at most"),
    ],
)
def test_every_field_of_an_entry_is_bounded(over: dict, words: str) -> None:  # type: ignore[type-arg]
    net, app = _with_dr_a()
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body([_entry(**over)])))
    assert result.code in (Code.INVALID_BODY, Code.TOO_LARGE), result
    assert words in result.log or result.code == Code.TOO_LARGE, result.log


def test_the_bounds_still_let_a_full_entry_and_a_full_tx_through() -> None:
    net, app = _with_dr_a()
    full = _entry(rids=[f"r{i}" for i in range(MAX_RIDS)], basis="enrolment:" + "s" * 64)
    longest = max(DENIAL_REASONS, key=len)
    denial = _entry(outcome="denied", basis="", reason=longest, rids=[])
    many = [denial] * MAX_ENTRIES
    for entries in ([full], many):
        txs = [net.tx(net.orgs["h0"], "access.log", log_body(entries))]
        assert run_block(app, txs, net.solo).results[0].ok
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body([*many, denial])))
    assert result.code == Code.INVALID_BODY and "entries" in result.log


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
        result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body([entry])))
        assert result.code == Code.INVALID_BODY, result
        assert field in result.log


def test_a_registration_can_log_the_records_disclosure_to_an_entitled_hospital() -> None:
    from medledger.contracts.records import disclosed
    from medledger.ledger.store import StateView

    net = make_net()
    app = net.app()
    entries = [
        {"rid": f"r{i}", "pid": PID, "commitment": bytes([i]) * 32, "meta_ct": META_CT}
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
    entry = {"rid": "r9", "pid": PID, "commitment": b"\x02" * 32, "meta_ct": META_CT}
    for disclosure, field in [
        ({"org": "h0", "basis": "consent:1", "rids": ["r9"]}, "org"),
        ({"org": "nobody", "basis": "consent:1", "rids": ["r9"]}, "org"),
        ({"org": "h1", "basis": "", "rids": ["r9"]}, "basis"),
        ({"org": "h1", "basis": "consent:1", "rids": ["elsewhere"]}, "rids"),
        ({"org": "h1", "basis": "c" * (MAX_BASIS + 1), "rids": ["r9"]}, "basis"),
        ({"org": "h1", "basis": "consent:1", "rids": ["r9", "r9"]}, "repeated"),
        ({"org": "h1", "basis": "oncology", "rids": ["r9"]}, "is not a basis"),
    ]:
        body = {"entries": [entry], "disclosures": [disclosure]}
        result = app.check_tx(net.tx(net.orgs["h0"], "records.register", body))
        assert result.code == Code.INVALID_BODY and field in result.log, result


@pytest.mark.parametrize("size", [1, 40, 138, META_CT_SIZES[0] - 1, META_CT_SIZES[-1] + 1, 2048])
def test_an_index_entry_whose_metadata_is_not_padded_is_refused(size: int) -> None:
    """Issue 11 item 2: a 138-byte meta_ct was always "Heart failure"; only bucket sizes pass."""
    net = make_net()
    app = net.app()
    entry = {"rid": "r1", "pid": PID, "commitment": b"\x02" * 32, "meta_ct": b"\x01" * size}
    result = app.check_tx(net.tx(net.orgs["h0"], "records.register", {"entries": [entry]}))
    assert result.code == Code.INVALID_BODY and "meta_ct" in result.log, result
    for ok in META_CT_SIZES:
        entry = {**entry, "rid": f"r{ok}", "meta_ct": b"\x01" * ok}
        assert app.check_tx(net.tx(net.orgs["h0"], "records.register", {"entries": [entry]})).ok
