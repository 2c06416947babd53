"""Review 9: the count-once rule's links (issue 18), as the attacker and across heights.

The counting hospital of a patient followed in several is the one the patient is linked to
(`study_partials.linked`). A junk filer that filed first must not win by attesting a first
key, and an act filed after the query's start (a rebound key, a re-enrolment) must not move
the patient to another hospital: answerers at different heights would disagree, and a lost
link fell back to seniority, that is to the junk filer."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from medledger.contracts.common import DAY_MS
from medledger.contracts.study_query import PatientFacts
from medledger.ledger.keys import SigningKey
from medledger.node.study_partials import (
    answering,
    check,
    custodians,
    linked,
)
from tests.contracts.test_study_queries import _world
from tests.contracts.test_study_trust import _record
from tests.support.world import World, pid_of

EVIDENCE = hashlib.sha256(b"the patient's signed form").digest()


def _who_counts(w: World, pid: str, record: dict[str, Any]) -> str:
    return answering(
        record["id"], custodians(w.state, pid, record), linked(w.state, "s1", pid, record)
    )


def _send(w: World, record: dict[str, Any], sender: str, receiver: str, pid: str) -> set[str]:
    facts = PatientFacts(sex="female", matched={"cohort": True}, value=("2026-03-02", 7400))
    body = {"query": record["id"], "patients": [[pid, facts.to_obj()]]}
    return set(check(w.state, record, sender, receiver, body, int(time.time() * 1000))[1])


def _desk_enrol(w: World, org: str, pid: str) -> None:
    body = {"study": "s1", "pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}
    w.ok(org, "research.enrol", body)


def test_a_junk_filer_that_attests_a_first_key_does_not_outrank_the_enrolling_hospital() -> None:
    w = _world()
    dave = pid_of("dave")
    w.records("h2", dave, ["r-dave-junk"])  # h2 knows dave's INS, files first
    w.records("h0", dave, ["r-dave-hba1c"])  # h0 treats him and takes his study consent
    _desk_enrol(w, "h0", dave)
    # Dave has no key: h2, the oldest custodian, attests one of its own making a day on.
    fake = SigningKey(hashlib.sha256(b"h2's key for dave").digest())
    since = int(w.state.get(f"rec/custody/{dave}/h2"))
    body = {"pid": dave, "key": fake.public_key, "evidence_hash": EVIDENCE}
    w.ok("h2", "patients.bind", body, at=max(w.now + 1000, since + DAY_MS))
    record = _record(w)
    assert {link.org for link in linked(w.state, "s1", dave, record)} == {"h0", "h2"}
    assert _who_counts(w, dave, record) == "h0"  # the study's own consent comes first
    assert _send(w, record, "h0", "h2", dave) == set()  # dropped: h2 keeps nothing
    assert _send(w, record, "h2", "h0", dave) == {dave}


def test_a_key_rebound_during_the_query_does_not_hand_the_patient_to_the_junk_filer() -> None:
    w = _world()
    erin = pid_of("erin")
    w.records("h2", erin, ["r-erin-junk"])
    key = w.bind("erin")  # h0 treats erin and attests her key; she enrols with it
    w.ok(key, "research.enrol", {"study": "s1", "pid": erin})
    record = _record(w)
    assert {link.org for link in linked(w.state, "s1", erin, record)} == {"h0"}
    assert _who_counts(w, erin, record) == "h0"
    # While the query runs, erin loses her phone: h0 attests a new key; it takes effect
    # after the delay. An answerer that reads the chain afterwards must still pick h0.
    new = SigningKey(hashlib.sha256(b"erin's new phone").digest())
    body = {"pid": erin, "key": new.public_key, "evidence_hash": EVIDENCE}
    filed = w.ok("h0", "patients.bind", body)
    pending = next(e for e in filed.events if e.type == "patient.rebind_pending")
    w.block(at=int(str(pending.get("effective_ms"))) + 1000)
    assert w.state.get(f"patients/key/{erin}")["key"] == new.public_key
    assert {link.org for link in linked(w.state, "s1", erin, record)} == {"h0"}
    assert _who_counts(w, erin, record) == "h0"
    assert _send(w, record, "h0", "h2", erin) == set()  # dropped: h2 keeps nothing
    # A query started after the rebinding links erin to h0 through the new binding.
    assert {link.org for link in linked(w.state, "s1", erin, _record(w, "s1/q0002"))} == {"h0"}


def test_a_re_enrolment_during_the_query_keeps_the_enrolment_in_force_at_its_start() -> None:
    w = _world()
    fay = pid_of("fay")
    w.records("h2", fay, ["r-fay-junk"])
    w.records("h1", fay, ["r-fay-glucose"])
    w.records("h0", fay, ["r-fay-hba1c"])
    _desk_enrol(w, "h1", fay)
    record = _record(w)
    assert _who_counts(w, fay, record) == "h1"
    # After the start, fay withdraws and re-enrols at h0's desk: the query counts her as
    # its start saw her, whatever height an answerer reads.
    w.ok(
        "h0",
        "research.withdraw",
        {"study": "s1", "pid": fay, "evidence_hash": EVIDENCE, "channel": "portal"},
    )
    _desk_enrol(w, "h0", fay)
    assert {link.org for link in linked(w.state, "s1", fay, record)} == {"h1"}
    assert _who_counts(w, fay, record) == "h1"
    assert _send(w, record, "h0", "h1", fay) == {fay}
    assert {link.org for link in linked(w.state, "s1", fay, _record(w, "s1/q0002"))} == {"h0"}
