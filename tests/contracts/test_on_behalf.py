"""Acting in a patient's name (issue 11, item 1): only the patient's own key, or a custodian of
the patient naming the practitioner who took the request and the evidence's hash.

In `World`, alice's care records are at h0 (and her key is bound there); h1 and h2 never
treated her unless a test registers records for her there.
"""

from __future__ import annotations

from typing import Any

from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.world import EVIDENCE, World

NOTE = b"\x05" * 32  # the hash of a DPO's written note


def consent_body(w: World, grantee: str, **extra: Any) -> dict[str, Any]:
    return {
        "pid": w.pid,
        "grantee": grantee,
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
        "evidence_hash": EVIDENCE,
        **extra,
    }


def granted_id(result: Any) -> int:
    return int(next(e.get("id") for e in result.events if e.type == "consent.granted"))


# -- who may act: the refusals ---------------------------------------------------------------


def test_a_hospital_that_never_treated_the_patient_cannot_grant_itself_access() -> None:
    w = World()
    for signer, extra in [("h1", {"taken_by": "dr-b"}), ("h1/dr-b", {})]:
        result = w.send(signer, "consent.grant", consent_body(w, "org:h1", **extra))
        assert result.code == Code.UNAUTHORIZED, result
        assert "not a custodian of this patient: h1" in result.log
    assert w.q("consent/list", {"pid": w.pid}) == []
    assert not w.auth("h1/dr-b").allowed


def test_a_revoked_practitioner_acts_for_no_patient() -> None:
    w = World()
    w.ok("h0", "identity.revoke", {"practitioner": "dr-a", "reason": "left"})
    own_key = w.send("h0/dr-a", "consent.grant", consent_body(w, "org:h1"))
    assert own_key.code == Code.UNAUTHORIZED and "practitioner h0/dr-a is revoked" in own_key.log
    named = w.send("h0", "consent.grant", consent_body(w, "org:h1", taken_by="dr-a"))
    assert named.code == Code.UNAUTHORIZED and "practitioner h0/dr-a is revoked" in named.log


def test_only_a_role_allowed_by_the_policy_takes_a_patients_request() -> None:
    w = World()
    for signer, extra in [("h0/res-a", {}), ("h0", {"taken_by": "res-a"})]:
        result = w.send(signer, "consent.grant", consent_body(w, "org:h1", **extra))
        assert result.code == Code.UNAUTHORIZED
        assert "h0/res-a lacks a role allowed to take a patient's request" in result.log
    # A practitioner signs only the requests they took themself.
    other = w.send("h0/dr-a", "consent.grant", consent_body(w, "org:h1", taken_by="dpo-a"))
    assert other.code == Code.UNAUTHORIZED and "taken_by" in other.log


def test_a_stranger_cannot_file_an_erasure_request() -> None:
    w = World()
    result = w.send("h1", "erasure.request", {"pid": w.pid, "evidence_hash": EVIDENCE})
    assert result.code == Code.UNAUTHORIZED and "not a custodian" in result.log
    assert w.q("erasure/status", {"pid": w.pid}) is None
    assert w.auth("h0/dr-a").allowed  # the patient's records stay readable


def test_a_stranger_cannot_enrol_or_withdraw_the_patient() -> None:
    w = World()
    w.study("s1")
    body = {"study": "s1", "pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": "dr-b"}
    enrol = w.send("h1", "research.enrol", body)
    assert enrol.code == Code.UNAUTHORIZED and "not a custodian" in enrol.log
    w.ok("patient:alice", "research.enrol", {"study": "s1", "pid": w.pid})
    withdraw = w.send("h1", "research.withdraw", body)
    assert withdraw.code == Code.UNAUTHORIZED and "not a custodian" in withdraw.log
    assert w.q("research/enrolment", {"study": "s1", "pid": w.pid})["status"] == "enrolled"


def test_copies_and_shredded_records_make_no_custodian() -> None:
    w = World()
    w.grant("org:h1")  # h1 may hold copies of alice's records: that is not custody
    refused = w.send("h1", "consent.grant", consent_body(w, "org:h2", taken_by="dr-b"))
    assert refused.code == Code.UNAUTHORIZED and "not a custodian" in refused.log
    receipt = {"pid": w.pid, "digest": NOTE, "records": 3}
    w.ok("h0", "records.shredded", receipt)  # h0 destroyed alice's keys
    gone = w.send("h0", "consent.grant", consent_body(w, "org:h2", taken_by="dr-a"))
    assert gone.code == Code.UNAUTHORIZED and "not a custodian" in gone.log


def test_the_portal_channel_is_the_custodians_organisation_key_only() -> None:
    w = World()
    portal = consent_body(w, "org:h1", channel="portal")
    assert w.send("h1", "consent.grant", portal).code == Code.UNAUTHORIZED
    by_hand = w.send("h0/dr-a", "consent.grant", portal)
    assert by_hand.code == Code.UNAUTHORIZED and "channel" in by_hand.log
    result = w.ok("h0", "consent.grant", portal)
    signed = w.q("consent/get", {"id": granted_id(result)})["signed"]
    assert (signed["org"], signed["practitioner"], signed["channel"]) == ("h0", "", "portal")


# -- who may act: the custodian, done right ----------------------------------------------------


def test_a_custodian_with_practitioner_and_evidence_acts_for_the_patient() -> None:
    w = World()
    result = w.ok("h0", "consent.grant", consent_body(w, "org:h1", taken_by="dr-a"))
    consent = w.q("consent/get", {"id": granted_id(result)})
    assert consent["signed"] == {
        "by": "hospital",
        "org": "h0",
        "practitioner": "dr-a",
        "evidence_hash": EVIDENCE,
        "channel": "desk",
    }
    assert w.auth("h1/dr-b").basis == f"consent:{consent['id']}"
    w.study("s1")
    w.ok("h0/dr-a", "research.enrol", {"study": "s1", "pid": w.pid, "evidence_hash": EVIDENCE})
    erasure = {"pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": "dpo-a"}
    w.ok("h0", "erasure.request", erasure)
    assert w.q("erasure/pending", {"pid": w.pid})["signed"]["practitioner"] == "dpo-a"


# -- self-grants: notified, contested, confirmed -----------------------------------------------


def self_grant(w: World) -> int:
    """alice is also treated at h1; h0 records a consent giving itself h1's records."""
    w.records("h1", w.pid, ["r-h1-labs"])
    body = consent_body(w, "org:h0", custodian="h1", taken_by="dr-a")
    result = w.ok("h0", "consent.grant", body)
    return granted_id(result)


def test_a_self_grant_notifies_the_patient_and_the_other_custodians() -> None:
    w = World()
    w.records("h2", w.pid, ["r-h2-labs"])
    w.records("h1", w.pid, ["r-h1-labs"])
    result = w.ok("h0", "consent.grant", consent_body(w, "org:h0", taken_by="dr-a"))
    events = {(e.type, e.get("custodian")): dict(e.attrs) for e in result.events}
    told = events[("consent.self_granted", None)]
    assert told["pid"] == w.pid and told["org"] == "h0" and told["practitioner"] == "dr-a"
    notified = sorted(str(c) for kind, c in events if kind == "consent.notify")
    assert notified == ["h1", "h2"]  # every other custodian, not h0 itself
    assert all(events[("consent.notify", c)]["pid"] == w.pid for c in notified)
    assert w.q("consent/get", {"id": granted_id(result)})["self_granted"] is True
    # A consent to another hospital is no self-grant, but it is notified all the same.
    other = w.ok("h0", "consent.grant", consent_body(w, "org:h1", taken_by="dr-a"))
    assert [(e.type, e.get("custodian")) for e in other.events] == [
        ("consent.granted", None),
        ("patient.acted_for", None),
        ("consent.notify", "h1"),
        ("consent.notify", "h2"),
    ]


def test_a_contest_by_another_custodians_dpo_suspends_access_until_the_patient_confirms() -> None:
    w = World()
    cid = self_grant(w)
    granted_at = w.now
    assert w.auth("h0/dr-a", custodian="h1").basis == f"consent:{cid}"
    contest = {"id": cid, "reason": "no-care-relationship", "evidence_hash": NOTE}
    result = w.ok("h1/dpo-b", "consent.contest", contest)
    assert [e.type for e in result.events] == ["consent.contested"]
    contested_at = w.now
    denied = w.auth("h0/dr-a", custodian="h1")
    assert not denied.allowed and denied.reason.startswith("consent contested"), denied
    assert w.q("consent/get", {"id": cid})["status"] == "contested"
    assert w.send("h1/dpo-b", "consent.contest", contest).code == Code.CONFLICT

    # Only the patient's own key confirms it; the granting hospital cannot.
    assert w.send("h0", "consent.confirm", {"id": cid}).code == Code.UNAUTHORIZED
    w.ok("patient:alice", "consent.confirm", {"id": cid})
    assert w.auth("h0/dr-a", custodian="h1").basis == f"consent:{cid}"
    # Audits replay decisions at their time: before the contest allowed, during it denied.
    assert w.auth("h0/dr-a", custodian="h1", at=granted_at).allowed
    assert not w.auth("h0/dr-a", custodian="h1", at=contested_at).allowed
    # Once the patient confirmed it, it can no longer be contested.
    again = w.send("h1/dpo-b", "consent.contest", contest)
    assert again.code == Code.CONFLICT and "confirmed" in again.log


def test_a_contested_consent_may_still_be_revoked() -> None:
    w = World()
    cid = self_grant(w)
    w.ok(
        "h1/dpo-b",
        "consent.contest",
        {"id": cid, "reason": "patient-denies", "evidence_hash": NOTE},
    )
    w.ok("patient:alice", "consent.revoke", {"id": cid})
    assert w.q("consent/get", {"id": cid})["status"] == "revoked"
    assert w.send("patient:alice", "consent.confirm", {"id": cid}).code == Code.CONFLICT


def test_who_may_contest() -> None:
    w = World()
    cid = self_grant(w)
    contest = {"id": cid, "reason": "evidence-doubtful", "evidence_hash": NOTE}
    cases = [
        ("h1/dr-b", Code.UNAUTHORIZED, "DPO"),  # not a DPO
        ("h1", Code.UNAUTHORIZED, "DPO"),  # an organisation key is not a DPO
        ("h0/dpo-a", Code.UNAUTHORIZED, "its own consent"),  # the granting hospital
    ]
    for signer, code, fragment in cases:
        result = w.send(signer, "consent.contest", contest)
        assert result.code == code and fragment in result.log, (signer, result)
    bad_reason = w.send("h1/dpo-b", "consent.contest", {**contest, "reason": "gossip"})
    assert bad_reason.code == Code.INVALID_BODY and "field reason" in bad_reason.log
    no_note = w.send("h1/dpo-b", "consent.contest", {**contest, "evidence_hash": b""})
    assert no_note.code == Code.INVALID_BODY and "evidence_hash" in no_note.log
    # A consent the patient signed with their own key is never contested.
    own = {k: v for k, v in consent_body(w, "org:h2").items() if k != "evidence_hash"}
    mine = granted_id(w.ok("patient:alice", "consent.grant", own))
    refused = w.send("h1/dpo-b", "consent.contest", {**contest, "id": mine})
    assert refused.code == Code.REFUSED and "own key" in refused.log


def test_a_dpo_of_a_hospital_that_is_no_custodian_cannot_contest() -> None:
    w = World()
    w.records("h1", w.pid, ["r-h1-labs"])
    # Here h1 grants itself h0's records; h0's DPO may contest, h2 (no custody) has no say.
    result = w.ok("h1", "consent.grant", consent_body(w, "org:h1", taken_by="dr-b"))
    cid = granted_id(result)
    assert {e.get("custodian") for e in result.events if e.type == "consent.notify"} == {"h0"}
    dpo_c = SigningKey(b"\x09" * 32)
    w.ok(
        "h2",
        "identity.register",
        {"practitioner": "dpo-c", "key": dpo_c.public_key, "roles": ["dpo"]},
    )
    contest = {"id": cid, "reason": "other", "evidence_hash": NOTE}
    stranger = w.send(dpo_c, "consent.contest", contest)
    assert stranger.code == Code.UNAUTHORIZED and "not a custodian" in stranger.log
    w.ok("h0/dpo-a", "consent.contest", contest)
    assert not w.auth("h1/dr-b").allowed


def test_a_sponsor_enrolling_a_patient_it_treats_in_its_own_study_is_notified() -> None:
    w = World()
    w.records("h1", w.pid, ["r-h1-labs"])  # h1 treats alice too, and sponsors s1
    w.study("s1")
    body = {"study": "s1", "pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": "dr-b"}
    result = w.ok("h1", "research.enrol", body)
    kinds = [(e.type, e.get("custodian")) for e in result.events]
    assert kinds == [
        ("study.enrolled", None),
        ("study.self_enrolled", None),
        ("patient.acted_for", None),
        ("study.notify", "h0"),
    ]
    # Enrolled by another custodian than the sponsor: no self-enrolment, still notified.
    w.ok("patient:alice", "research.withdraw", {"study": "s1", "pid": w.pid})
    again = w.ok("h0", "research.enrol", {**body, "taken_by": "dr-a"})
    assert [(e.type, e.get("custodian")) for e in again.events] == [
        ("study.enrolled", None),
        ("patient.acted_for", None),
        ("study.notify", "h1"),
    ]
