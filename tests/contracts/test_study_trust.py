"""Issue 18's trust points (session 9): who counts a patient followed in several hospitals.

A member becomes a custodian of any pid it knows (the INS is enough) by filing one junk
record. Filing before every real hospital made it the longest-standing custodian, so the
patient's real custodians sent it their facts for every query. The counting hospital is now
the longest-standing custodian the patient is *linked* to: the one that recorded their
enrolment on their behalf, or the one that attested their key."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from medledger.contracts.study_query import PatientFacts
from medledger.node.study_partials import (
    answering,
    check,
    custodians,
    linked,
)
from tests.contracts.test_study_queries import _world
from tests.support.world import World, pid_of

EVIDENCE = hashlib.sha256(b"bob's signed enrolment form").digest()


def _record(w: World, query_id: str = "s1/q0001") -> dict[str, Any]:
    return {
        "id": query_id,
        "study": "s1",
        "status": "running",
        "answerers": ["h0", "h1", "h2"],
        "started": w.now,
        "deadline_ms": int(time.time() * 1000) + 60_000,
    }


def _send(w: World, record: dict[str, Any], sender: str, receiver: str, pid: str) -> set[str]:
    facts = PatientFacts(sex="male", matched={"cohort": True}, value=("2026-03-02", 8100))
    body = {"query": record["id"], "patients": [[pid, facts.to_obj()]]}
    return set(check(w.state, record, sender, receiver, body, int(time.time() * 1000))[1])


def test_a_member_that_filed_junk_before_every_hospital_never_counts_nor_receives() -> None:
    w = _world()
    bob = pid_of("bob")
    # h2 knows bob's INS and files one junk record before any hospital treats him.
    w.records("h2", bob, ["r-bob-junk"])
    # Then h0 treats him and attests his key a day later; h1 treats him too and takes his
    # enrolment at its desk portal.
    w.records("h0", bob, ["r-bob-hba1c"])
    w.bind("bob")
    w.records("h1", bob, ["r-bob-glucose"])
    w.ok(
        "h1",
        "research.enrol",
        {"study": "s1", "pid": bob, "evidence_hash": EVIDENCE, "channel": "portal"},
    )
    record = _record(w)
    held_by = custodians(w.state, bob, record)
    assert min(held_by, key=held_by.__getitem__) == "h2"  # the junk filer is the oldest
    assert {link.org for link in linked(w.state, "s1", bob, record)} == {"h0", "h1"}
    for seq in range(1, 30):  # whatever the query (the tie rank changes with its id)
        record = _record(w, f"s1/q{seq:04d}")
        assert answering(record["id"], held_by, linked(w.state, "s1", bob, record)) == "h1"
    # Neither real custodian's facts reach h2: it learns nothing.
    for sender in ("h0", "h1"):
        assert _send(w, record, sender, "h2", bob) == set()  # dropped: h2 keeps nothing
    # The count stays right: h1, which took his enrolment (the study's own consent, ahead
    # of h0's key attestation: review 9), alone counts bob, with h0's facts and h2's junk.
    assert _send(w, record, "h0", "h1", bob) == {bob}
    assert _send(w, record, "h2", "h1", bob) == {bob}
    assert _send(w, record, "h1", "h0", bob) == set()


def test_a_link_made_after_the_query_started_changes_nothing_for_it() -> None:
    """Every answerer must pick the same hospital whatever its height: links count only
    when made by the query's start."""
    w = _world()
    carol = pid_of("carol")
    w.records("h2", carol, ["r-carol-junk"])
    w.records("h1", carol, ["r-carol-hba1c"])
    record = _record(w)  # starts now: nobody is linked to carol yet
    assert not linked(w.state, "s1", carol, record)
    before = answering(record["id"], custodians(w.state, carol, record))
    assert before == "h2"  # no link at all: the longest-standing, as before (documented)
    w.ok(
        "h1",
        "research.enrol",
        {"study": "s1", "pid": carol, "evidence_hash": EVIDENCE, "channel": "portal"},
    )
    assert not linked(w.state, "s1", carol, record)
    assert [link.org for link in linked(w.state, "s1", carol, _record(w, "s1/q0002"))] == ["h1"]
