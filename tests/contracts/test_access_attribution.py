"""The access trail cannot be forged (issue 11 review, item 6).

An entry naming another hospital's actor carries that hospital's signed exchange request, and
every replica verifies it: the actor's (or its hospital's) registered key, the serving
hospital as audience, a time near the block time, one tx per request. A denial's reason is a
code from `DENIAL_REASONS`, never free text next to a pid.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from medledger.contracts.access import DENIAL_REASONS, denial_code, reason_in_words
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.access import (
    DR_A,
    ORG_KEYS,
    PID,
    _entry,
    _with_dr_a,
    log_body,
    signed_request,
)
from tests.support.ledger import T0, run_block
from tests.support.world import World

pytestmark = pytest.mark.usefixtures("access_version")  # each version of access


def _log(entry: dict[str, Any], by: str = "h0") -> Any:
    net, app = _with_dr_a()
    return app.check_tx(net.tx(net.orgs[by], "access.log", log_body([entry])))


# -- review repros, adapted ----------------------------------------------------------------


def test_a_hospital_attributes_a_read_to_another_hospitals_practitioner_with_any_hash() -> None:
    w = World()
    entry: dict[str, Any] = {
        "actor": "practitioner:h0/dr-a",  # alice's own physician at h0
        "actor_org": "h0",
        "pid": w.pid,
        "action": "export",
        "purpose": "treatment",
        "outcome": "granted",
        "basis": "custodian",
        "request": os.urandom(32),  # before: a bare hash, only its length was checked
    }
    result = w.send("h1", "access.log", log_body([entry]))
    assert not result.ok, result
    # Nor with a request shaped right but signed by h1 itself: it is not dr-a's key.
    entry["request"] = signed_request(w.keys["h1"], audience="h1", time_ms=w.now)
    result = w.send("h1", "access.log", log_body([entry]))
    assert result.code == Code.UNAUTHORIZED and "not a registered key of h0" in result.log


def test_a_denial_carries_300_characters_of_free_text_next_to_a_pid_forever() -> None:
    w = World()
    entry = {
        "actor": "org:h1",
        "actor_org": "h1",
        "pid": w.pid,
        "action": "read",
        "purpose": "treatment",
        "outcome": "denied",
        "reason": "HIV positive since 2019, on antiretrovirals; psychiatric admission 2024",
    }
    result = w.send("h1", "access.log", log_body([entry]))
    assert result.code == Code.INVALID_BODY and "not a denial code" in result.log, result
    entry["reason"] = "no consent"  # the code is all the chain gets
    assert w.send("h1", "access.log", log_body([entry])).ok


# -- what a remote entry's request must be ---------------------------------------------------


def test_a_remote_entry_backed_by_the_actors_signed_request_commits_and_names_the_signer() -> None:
    net, app = _with_dr_a()
    txs = [net.tx(net.orgs["h0"], "access.log", log_body([_entry()]))]
    assert run_block(app, txs, net.solo).results[0].ok
    (entry,) = app.query_obj("access/of_patient", {"pid": PID})
    assert entry["request_signer"] == "practitioner:h1/dr-a"
    assert len(entry["request"]) == 32  # the digest the custodian's evidence table keys


def test_the_hospitals_organisation_key_may_sign_for_its_practitioner() -> None:
    entry = _entry(request=signed_request(ORG_KEYS["h1"]))
    assert _log(entry).code == Code.OK


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        # another hospital's key, or another practitioner's
        (lambda: signed_request(ORG_KEYS["h2"]), "not a registered key of h1"),
        (lambda: signed_request(SigningKey(b"\x0a" * 32)), "not a registered key of h1"),
        # addressed to another custodian: h0 cannot reuse a request h1 sent to h2
        (lambda: signed_request(DR_A, audience="h2"), "signature: does not verify"),
        # far from the block time: an old request dug out of the evidence
        (lambda: signed_request(DR_A, time_ms=T0 - 3_600_000), "time_ms"),
        (lambda: signed_request(DR_A, time_ms=T0 + 3_600_000), "time_ms"),
        # a signature over something else
        (lambda: {**signed_request(DR_A), "target": "/exchange/v1/index"}, "does not verify"),
        (lambda: {**signed_request(DR_A), "nonce": b"\x01"}, "nonce 16 bytes"),
        (lambda: {**signed_request(DR_A), "target": "/" * 600}, "target at most"),
        (lambda: b"\x07" * 32, "request"),
    ],
)
def test_a_remote_entry_without_the_actors_request_for_this_custodian_is_refused(
    request_: Any, words: str
) -> None:
    result = _log(_entry(request=request_()))
    assert result.code in (Code.UNAUTHORIZED, Code.INVALID_BODY), result
    assert words in result.log, result.log


@pytest.mark.parametrize(
    ("over", "words"),
    [
        # h1 asked about PID; h0 cannot log it as a read of another patient, purpose or record
        ({"pid": "cd" * 32}, "pid: the signed request asked about another"),
        ({"purpose": "research"}, "purpose: the signed request asked for another"),
        ({"rids": ["r1", "r9"]}, "rids: records the signed request did not ask"),
    ],
)
def test_an_entry_is_about_what_the_signed_request_asked(over: dict[str, Any], words: str) -> None:
    asked = {"pid": PID, "purpose": "treatment", "rids": ["r1", "r2"]}
    result = _log(_entry(**over, request=signed_request(DR_A, asked=asked)))
    assert result.code == Code.UNAUTHORIZED and words in result.log, result.log


def test_the_request_body_must_be_the_one_signed_and_travel_with_the_first_entry() -> None:
    request = signed_request(DR_A)
    swapped = {**request, "body": b'{"pid": "' + PID.encode() + b'"}'}
    result = _log(_entry(request=swapped))
    assert result.code == Code.UNAUTHORIZED and "does not hash to body_hash" in result.log
    bare = {k: v for k, v in request.items() if k != "body"}
    result = _log(_entry(request=bare))
    assert result.code == Code.INVALID_BODY and "carries its body" in result.log


def test_an_organisation_actor_is_backed_only_by_the_organisation_key() -> None:
    entry = _entry(actor="org:h1", request=signed_request(DR_A))
    result = _log(entry)
    assert result.code == Code.UNAUTHORIZED and "signed by practitioner:h1/dr-a" in result.log


def test_one_request_backs_the_entries_of_one_tx_only() -> None:
    net, app = _with_dr_a()
    request = signed_request(DR_A)
    # One tx, one entry per basis (as the gateway groups them): the body travels once.
    without_body = {k: v for k, v in request.items() if k != "body"}
    first = [_entry(request=request, rids=["r1"]), _entry(request=without_body, rids=["r2"])]
    txs = [net.tx(net.orgs["h0"], "access.log", log_body(first))]
    assert run_block(app, txs, net.solo).results[0].ok
    replay = _entry(request=request, pid="cd" * 32)
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body([replay])))
    assert result.code == Code.UNAUTHORIZED and "another tx" in result.log, result


def test_a_local_entry_carries_no_request() -> None:
    local = _entry(actor="org:h0", actor_org="h0", request=signed_request(ORG_KEYS["h0"]))
    result = _log(local)
    assert result.code == Code.INVALID_BODY and "only an access by another" in result.log


# -- denial codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worded", "code"),
    [
        ("no consent: nothing grants h1 access to this patient's labs for treatment", "no consent"),
        ("consent revoked: consent 4 was revoked", "consent revoked"),
        ("consent not yet valid: starts at 2027", "consent not yet valid"),
        ("role: nurse may not act for research", "role"),
        ("policy forbid no-research-on-mental-health", "policy forbid"),
        ("actor revoked: the practitioner or their hospital is no longer active", "actor revoked"),
        ("other patient: a patient token only reaches its own", "other patient"),
        ("authorization failed: KeyError", "authorization failed"),
        ("record metadata unreadable", "record metadata unreadable"),
        ("HIV positive", "denied"),
        ("", "denied"),
    ],
)
def test_a_worded_reason_goes_on_the_chain_as_its_code(worded: str, code: str) -> None:
    assert denial_code(worded) == code
    assert code in DENIAL_REASONS


def test_every_denial_code_commits_and_reads_in_words() -> None:
    net, app = _with_dr_a()
    entries = [_entry(outcome="denied", basis="", reason=code) for code in DENIAL_REASONS]
    txs = [net.tx(net.orgs["h0"], "access.log", log_body(entries))]
    assert run_block(app, txs, net.solo).results[0].ok
    assert reason_in_words("consent expired") == "consent expired: your consent had expired"


def test_a_granted_entry_has_no_reason() -> None:
    result = _log(_entry(reason="no consent"))
    assert result.code == Code.INVALID_BODY and "only a denial" in result.log


def test_every_phrase_authorize_names_is_a_denial_code() -> None:
    from medledger.contracts import authorize

    doc = authorize.__doc__ or ""
    listed = doc.split("then details:")[1].split("When several")[0].split("(These")[0]
    phrases = {p.strip() for p in listed.replace("\n", " ").split(",") if p.strip()}
    assert len(phrases) > 20 and phrases <= set(DENIAL_REASONS), phrases - set(DENIAL_REASONS)
