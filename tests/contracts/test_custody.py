"""Custody (issue 11, review of item 1): one junk record makes any member a custodian, so every
claim of custody is visible, dated, and what it allows in the patient's name is notified, slow
where it cannot be undone, and contestable by the hospitals that were there first.

In `World`, alice's care records are at h0 only (her key bound there); h1 never treated her.
The attacker h1 makes itself a "custodian" with ONE junk index entry: a random commitment and
a `meta_ct` of the right padded length, signed by its organisation key with no author.
"""

from __future__ import annotations

import hashlib
from typing import Any

from medledger.contracts.common import DAY_MS
from medledger.contracts.records import META_CT_SIZES, custody_since
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import TxResult
from tests.support.world import EVIDENCE, World

NOTE = b"\x05" * 32  # the hash of a DPO's written note
DELAY = 3 * DAY_MS  # on_behalf_delay_ms by default


def junk(w: World, org: str, rid: str = "junk-1") -> TxResult:
    """One fake index entry: all it takes to become a custodian of any pid seen on chain."""
    entry = {
        "rid": rid,
        "pid": w.pid,
        "commitment": hashlib.sha256(rid.encode()).digest(),
        "meta_ct": b"\x00" * META_CT_SIZES[0],
    }
    return w.ok(org, "records.register", {"entries": [entry]})


def body(w: World, grantee: str, **extra: Any) -> dict[str, Any]:
    return {
        "pid": w.pid,
        "grantee": grantee,
        "categories": ["*"],
        "purpose": "treatment",
        "start_ms": w.now,
        "evidence_hash": EVIDENCE,
        **extra,
    }


def own(w: World, grantee: str) -> dict[str, Any]:
    """A consent alice signs with her own key (no evidence: she is the signer)."""
    return {k: v for k, v in body(w, grantee).items() if k != "evidence_hash"}


def granted_id(result: TxResult) -> int:
    found = next(e.get("id") for e in result.events if e.type == "consent.granted")
    assert found is not None
    return int(found)


def events(result: Any, kind: str) -> list[dict[str, Any]]:
    return [dict(e.attrs) for e in result.events if e.type == kind]


# -- 1. every registration is on the patient's trail ------------------------------------------


def test_a_junk_registration_is_on_the_patients_trail_naming_the_hospital() -> None:
    w = World()
    before = len(w.q("access/of_patient", {"pid": w.pid}))
    junk(w, "h1")
    trail = w.q("access/of_patient", {"pid": w.pid})
    assert len(trail) == before + 1
    entry = trail[-1]
    assert (entry["actor"], entry["custodian"], entry["action"]) == ("org:h1", "h1", "create")
    assert entry["rids"] == ["junk-1"]


# -- 2. custody has a start; a newcomer is announced --------------------------------------------


def test_custody_starts_with_the_first_record_and_a_newcomer_is_announced() -> None:
    w = World()
    since_h0 = custody_since(w.state, w.pid, "h0")
    assert since_h0 is not None and custody_since(w.state, w.pid, "h1") is None
    result = junk(w, "h1")
    joined_at = w.now
    assert events(result, "records.custodian_joined") == [{"pid": w.pid, "org": "h1"}]
    assert events(result, "records.notify") == [{"pid": w.pid, "custodian": "h0", "org": "h1"}]
    # Written once: a second record neither moves the start nor announces anything again.
    again = junk(w, "h1", "junk-2")
    assert custody_since(w.state, w.pid, "h1") == joined_at
    assert not events(again, "records.custodian_joined")
    assert custody_since(w.state, w.pid, "h0") == since_h0
    # A shredding ends it.
    w.ok("h1", "records.shredded", {"pid": w.pid, "digest": NOTE, "records": 2})
    assert custody_since(w.state, w.pid, "h1") is None


# -- 3. every on-behalf act is notified ----------------------------------------------------------


def test_a_grant_to_an_accomplice_is_notified_and_contestable() -> None:
    w = World()
    junk(w, "h1")
    result = w.ok("h1", "consent.grant", body(w, "org:h2", taken_by="dr-b"))
    cid = granted_id(result)
    [told] = events(result, "patient.acted_for")
    assert told == {
        "pid": w.pid,
        "org": "h1",
        "act": "consent.grant",
        "channel": "desk",
        "taken_by": "dr-b",
        "id": str(cid),
    }
    assert [n["custodian"] for n in events(result, "consent.notify")] == ["h0"]
    assert w.auth("h2/dr-c").allowed
    # h0's DPO, custodian long before, suspends it.
    w.ok(
        "h0/dpo-a",
        "consent.contest",
        {"id": cid, "reason": "no-care-relationship", "evidence_hash": NOTE},
    )
    denied = w.auth("h2/dr-c")
    assert not denied.allowed and denied.reason.startswith("consent contested")


def test_a_revocation_in_the_patients_name_is_notified_to_the_other_custodians() -> None:
    w = World()
    cid = granted_id(w.ok(w.patient, "consent.grant", own(w, "org:h2")))
    junk(w, "h1")
    result = w.ok(
        "h1", "consent.revoke", {"id": cid, "evidence_hash": EVIDENCE, "taken_by": "dr-b"}
    )
    [told] = events(result, "patient.acted_for")
    assert (told["org"], told["act"], told["taken_by"]) == ("h1", "consent.revoke", "dr-b")
    assert [n["custodian"] for n in events(result, "patient.notify")] == ["h0"]


def test_the_portal_channel_is_notified_like_the_desk() -> None:
    w = World()
    junk(w, "h1")
    result = w.ok("h1", "consent.grant", body(w, "org:h1", channel="portal"))
    [told] = events(result, "patient.acted_for")
    assert (told["channel"], told["taken_by"]) == ("portal", "")
    assert [n["custodian"] for n in events(result, "consent.notify")] == ["h0"]


def test_enrolment_and_withdrawal_in_the_patients_name_are_notified() -> None:
    w = World()
    w.study("s1")
    junk(w, "h1")
    enrol = {"study": "s1", "pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": "dr-b"}
    result = w.ok("h1", "research.enrol", enrol)
    assert events(result, "patient.acted_for")[0]["act"] == "research.enrol"
    result = w.ok("h1", "research.withdraw", enrol)
    assert events(result, "patient.acted_for")[0]["act"] == "research.withdraw"
    assert [n["custodian"] for n in events(result, "patient.notify")] == ["h0"]


def test_the_patients_own_key_acts_without_notices() -> None:
    w = World()
    junk(w, "h1")
    result = w.ok(w.patient, "consent.grant", own(w, "org:h2"))
    assert not events(result, "patient.acted_for") and not events(result, "consent.notify")


# -- 4. contests: only custodians that were there before ------------------------------------------


def test_a_newcomers_dpo_cannot_contest_a_consent_granted_before_it_came() -> None:
    w = World()
    granted = w.ok("h0", "consent.grant", body(w, "org:h0", taken_by="dr-a", custodian="h2"))
    cid = granted_id(granted)
    junk(w, "h1")
    contest = w.send(
        "h1/dpo-b",
        "consent.contest",
        {"id": cid, "reason": "patient-denies", "evidence_hash": NOTE},
    )
    assert contest.code == Code.UNAUTHORIZED and "began after consent" in contest.log
    assert w.q("consent/get", {"id": cid})["status"] == "active"


# -- 5. irreversible acts wait and can be cancelled -----------------------------------------------


def request_erasure_as(w: World, org: str, taken_by: str) -> TxResult:
    erasure = {"pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": taken_by}
    return w.ok(org, "erasure.request", erasure)


def test_an_erasure_filed_by_a_hospital_waits_and_changes_nothing_meanwhile() -> None:
    w = World()
    w.ok(w.patient, "consent.grant", own(w, "org:h2"))
    junk(w, "h1")
    result = request_erasure_as(w, "h1", "dr-b")
    [pending] = events(result, "erasure.pending")
    assert int(pending["effective_ms"]) == w.now + DELAY
    assert [n["custodian"] for n in events(result, "patient.notify")] == ["h0"]
    # Nothing happens yet: no request in force, no holder told to erase, alice's consent holds.
    assert w.q("erasure/status", {"pid": w.pid}) is None
    assert not events(result, "erasure.notify")
    assert w.auth("h2/dr-c").allowed
    assert w.q("erasure/pending", {"pid": w.pid})["status"] == "pending"
    assert w.send("h1", "erasure.request", {"pid": w.pid, "evidence_hash": EVIDENCE,
                                            "taken_by": "dr-b"}).code == Code.CONFLICT  # fmt: skip


def test_the_earlier_custodians_dpo_cancels_a_strangers_erasure_request() -> None:
    w = World()
    w.ok(w.patient, "consent.grant", own(w, "org:h2"))
    junk(w, "h1")
    rid = int(events(request_erasure_as(w, "h1", "dr-b"), "erasure.pending")[0]["id"])
    # The filer cannot cancel its own act, nor can a practitioner who is not a DPO.
    assert w.send("h1/dpo-b", "erasure.cancel", {"request": rid}).code == Code.UNAUTHORIZED
    assert w.send("h0/dr-a", "erasure.cancel", {"request": rid}).code == Code.UNAUTHORIZED
    w.ok("h0/dpo-a", "erasure.cancel", {"request": rid})
    w.block(at=w.now + DELAY)
    assert w.q("erasure/status", {"pid": w.pid}) is None
    assert w.q("erasure/status", {"id": rid})["status"] == "cancelled"
    assert w.auth("h2/dr-c").allowed  # alice's own consent still holds


def test_a_pending_erasure_opens_after_the_delay_if_no_one_cancels_it() -> None:
    w = World()
    w.ok(w.patient, "consent.grant", own(w, "org:h2"))
    result = request_erasure_as(w, "h0", "dpo-a")
    effective = int(events(result, "erasure.pending")[0]["effective_ms"])
    out = w.block(at=effective)
    assert {e.type for e in out.events} >= {"erasure.notify", "erasure.requested"}
    status = w.q("erasure/status", {"pid": w.pid})
    assert status["status"] == "open" and status["deadline"] == effective + 30 * DAY_MS
    assert w.q("erasure/pending", {"pid": w.pid}) is None
    decision = w.auth("h2/dr-c")
    assert not decision.allowed and "erasure" in decision.reason


def test_the_patients_key_takes_effect_at_once_and_supersedes_a_pending_request() -> None:
    w = World()
    junk(w, "h1")
    rid = int(events(request_erasure_as(w, "h1", "dr-b"), "erasure.pending")[0]["id"])
    result = w.ok(w.patient, "erasure.request", {"pid": w.pid})
    assert events(result, "erasure.requested")
    assert w.q("erasure/status", {"id": rid})["status"] == "cancelled"
    assert w.q("erasure/status", {"pid": w.pid})["id"] == rid + 1


def test_a_newcomers_dpo_cannot_cancel_an_erasure_filed_before_it_came() -> None:
    w = World()
    rid = int(events(request_erasure_as(w, "h0", "dpo-a"), "erasure.pending")[0]["id"])
    junk(w, "h1")
    late = w.send("h1/dpo-b", "erasure.cancel", {"request": rid})
    assert late.code == Code.UNAUTHORIZED and "began after the act" in late.log
    w.ok(w.patient, "erasure.cancel", {"request": rid})  # the patient's own key may


def test_a_strangers_rebinding_waits_the_old_key_works_and_can_cancel_it() -> None:
    w = World()
    junk(w, "h1")
    mine = SigningKey(b"\x07" * 32)
    result = w.ok(
        "h1/admin-b", "patients.bind", {"pid": w.pid, "key": mine.public_key, "evidence_hash": NOTE}
    )
    assert events(result, "patient.rebind_pending")
    assert [n["custodian"] for n in events(result, "patient.notify")] == ["h0"]
    # Meanwhile h1's key is nobody's, and alice's own key still signs.
    assert w.send(mine, "consent.grant", own(w, "org:h1")).code == Code.UNAUTHORIZED
    w.ok(w.patient, "consent.grant", own(w, "org:h2"))
    w.ok(w.patient, "patients.cancel_bind", {"pid": w.pid})
    w.block(at=w.now + DELAY)
    assert w.q("patients/of_key", {"key": w.patient.public_key}) == w.pid
    assert w.q("patients/of_key", {"key": mine.public_key}) is None


def test_an_earlier_custodians_dpo_cancels_a_rebinding_a_newcomers_cannot() -> None:
    w = World()
    w.records("h1", w.pid, ["r-h1"])  # h1 treats alice too, from now on
    new = SigningKey(b"\x08" * 32)
    w.ok("h0", "patients.bind", {"pid": w.pid, "key": new.public_key, "evidence_hash": NOTE})
    junk(w, "h2")
    dpo_c = SigningKey(b"\x09" * 32)
    w.ok("h2", "identity.register", {"practitioner": "dpo-c", "key": dpo_c.public_key,
                                     "roles": ["dpo"]})  # fmt: skip
    late = w.send(dpo_c, "patients.cancel_bind", {"pid": w.pid})
    assert late.code == Code.UNAUTHORIZED and "began after the act" in late.log
    result = w.ok("h1/dpo-b", "patients.cancel_bind", {"pid": w.pid})
    assert events(result, "patient.rebind_cancelled")[0]["by"] == "h1/dpo-b"
    assert w.q("patients/pending", {"pid": w.pid}) is None
    w.block(at=w.now + DELAY)
    assert w.q("patients/of_key", {"key": w.patient.public_key}) == w.pid


def test_a_first_key_is_bound_only_by_a_custody_at_least_a_day_old() -> None:
    w = World()
    bob = hashlib.sha256(b"pid:bob").hexdigest()
    w.records("h1", bob, ["r-bob"])
    key = SigningKey(b"\x0a" * 32)
    bind = {"pid": bob, "key": key.public_key, "evidence_hash": NOTE}
    young = w.send("h1", "patients.bind", bind)
    assert young.code == Code.REFUSED and "custody_min_age_ms" in young.log
    w.block(at=w.now + DAY_MS)
    result = w.ok("h1", "patients.bind", bind)
    assert events(result, "patient.key_bound") and events(result, "patient.acted_for")
    assert w.q("patients/of_key", {"key": key.public_key}) == bob


# -- 6. who acts ---------------------------------------------------------------------------------


def test_a_recording_hospitals_researcher_cannot_revoke_its_consents() -> None:
    w = World()
    cid = granted_id(w.ok("h0", "consent.grant", body(w, "org:h2", taken_by="dr-a")))
    refused = w.send("h0/res-a", "consent.revoke", {"id": cid})
    assert refused.code == Code.UNAUTHORIZED and "lacks a role" in refused.log
    result = w.ok("h0/dpo-a", "consent.revoke", {"id": cid})
    assert events(result, "patient.acted_for")[0]["channel"] == "recorder"


def test_the_patients_notices_list_holders_acts_in_their_name_and_a_pending_rebinding() -> None:
    w = World()
    junk(w, "h1")
    w.ok("h1", "consent.grant", body(w, "org:h1", taken_by="dr-b"))
    mine = SigningKey(b"\x0b" * 32)
    w.ok("h1", "patients.bind", {"pid": w.pid, "key": mine.public_key, "evidence_hash": NOTE})
    notices = w.q("patients/notices", {"pid": w.pid})
    assert set(notices["custodians"]) == {"h0", "h1"}
    assert notices["custodians"]["h1"] == custody_since(w.state, w.pid, "h1")
    assert [(a["org"], a["act"]) for a in notices["acts"]] == [
        ("h1", "patients.bind"),  # newest first
        ("h1", "consent.grant"),
        ("h0", "patients.bind"),  # alice's first key, bound at h0 in World
    ]
    assert notices["rebind"]["effective_ms"] == w.now + DELAY
