"""The count-once links read once per query (`study_partials.Links`) give the per-patient answers.

A hospital plans its answer over its whole custody: `Links` reads each kind of fact (the
study's enrolments, custodies and shreddings, key bindings, erasure requests) in one pass
instead of several lookups per patient. The rule is `counts`, `custodians`, `linked` and
`answering`, read patient by patient: both must agree for every kind of patient, including
those whose links changed after the query started. The receiver's `check` reads a partials
message's pids through `Links` too: its verdicts must be the per-patient rule's."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from medledger.contracts.common import DAY_MS
from medledger.contracts.study_query import PatientFacts
from medledger.ledger.keys import SigningKey
from medledger.node.study_partials import (
    Links,
    PartialsRefused,
    answering,
    check,
    counted,
    counts,
    custodians,
    linked,
    settled_by,
)
from tests.contracts.test_study_queries import _world
from tests.contracts.test_study_trust import _record
from tests.support.world import World, pid_of

EVIDENCE = hashlib.sha256(b"the patient's signed form").digest()
PEOPLE = ("dave", "erin", "fay", "gus", "hana", "ivo", "jo", "kim", "nobody")


def _desk(w: World, org: str, act: str, pid: str) -> None:
    body = {"study": "s1", "pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}
    w.ok(org, act, body)


def _per_patient(w: World, record: dict[str, Any], pid: str) -> tuple[Any, ...]:
    held_by = custodians(w.state, pid, record)
    links = linked(w.state, "s1", pid, record)
    counting = answering(record["id"], held_by, links, settled_by(w.state, record))
    return counts(w.state, "s1", pid), held_by, links, counting


def _at_once(w: World, record: dict[str, Any], pids: list[str]) -> dict[str, tuple[Any, ...]]:
    links = Links(w.state, record, pids)
    return {
        pid: (links.counts(pid), links.custodians(pid), links.linked(pid), links.answering(pid))
        for pid in pids
    }


def _network() -> tuple[World, dict[str, Any]]:
    """Patients of every kind the rule tells apart; returns the world and a query started
    before the last acts (rebinding, re-enrolment, erasure request, withdrawal)."""
    w = _world()
    p = {name: pid_of(name) for name in PEOPLE}
    # dave: a junk filer first, then the treating hospital's desk; the junk filer attests a key.
    w.records("h2", p["dave"], ["r-dave-junk"])
    w.records("h0", p["dave"], ["r-dave-hba1c"])
    _desk(w, "h0", "research.enrol", p["dave"])
    since = int(w.state.get(f"rec/custody/{p['dave']}/h2"))
    fake = SigningKey(hashlib.sha256(b"h2's key for dave").digest())
    body = {"pid": p["dave"], "key": fake.public_key, "evidence_hash": EVIDENCE}
    w.ok("h2", "patients.bind", body, at=max(w.now + 1000, since + DAY_MS))
    # erin: enrolled with her own key (attested by h0); a junk record at h2.
    w.records("h2", p["erin"], ["r-erin-junk"])
    erin = w.bind("erin")
    w.ok(erin, "research.enrol", {"study": "s1", "pid": p["erin"]})
    # fay: three custodians, enrolled at h1's desk.
    for org in ("h2", "h1", "h0"):
        w.records(org, p["fay"], [f"r-fay-{org}"])
    _desk(w, "h1", "research.enrol", p["fay"])
    # gus: at h0 and h1, enrolled at h1; h0 shreds its records (its custody ends).
    w.records("h0", p["gus"], ["r-gus-h0"])
    w.records("h1", p["gus"], ["r-gus-h1"])
    _desk(w, "h1", "research.enrol", p["gus"])
    receipt = {"pid": p["gus"], "digest": hashlib.sha256(b"receipt").digest(), "records": 1}
    w.ok("h0", "records.shredded", receipt)
    # hana, jo: enrolled, later an erasure request and a withdrawal; ivo: never enrolled;
    # kim: enrolled, records filed at h2 only after the query started.
    hana = w.bind("hana")
    w.ok(hana, "research.enrol", {"study": "s1", "pid": p["hana"]})
    w.records("h1", p["jo"], ["r-jo"])
    _desk(w, "h1", "research.enrol", p["jo"])
    w.records("h1", p["ivo"], ["r-ivo"])
    w.records("h0", p["kim"], ["r-kim"])
    _desk(w, "h0", "research.enrol", p["kim"])
    record = _record(w)
    # After the start: erin's key rebound, fay re-enrolled at h0, hana asks for erasure,
    # jo withdraws, kim gets a custodian too late to count.
    new = SigningKey(hashlib.sha256(b"erin's new phone").digest())
    filed = w.ok(
        "h0", "patients.bind", {"pid": p["erin"], "key": new.public_key, "evidence_hash": EVIDENCE}
    )
    pending = next(e for e in filed.events if e.type == "patient.rebind_pending")
    w.block(at=int(str(pending.get("effective_ms"))) + 1000)
    _desk(w, "h0", "research.withdraw", p["fay"])
    _desk(w, "h0", "research.enrol", p["fay"])
    w.ok("patient:hana", "erasure.request", {"pid": p["hana"]})
    _desk(w, "h1", "research.withdraw", p["jo"])
    w.records("h2", p["kim"], ["r-kim-h2"])
    return w, record


def test_links_read_at_once_equal_the_per_patient_rule_for_every_kind_of_patient() -> None:
    w, record = _network()
    pids = [pid_of(name) for name in PEOPLE]
    later = _record(w, "s1/q0002")  # a query started after those acts
    for query in (record, later):
        at_once = _at_once(w, query, pids)
        assert at_once == {pid: _per_patient(w, query, pid) for pid in pids}
    at_once = _at_once(w, record, pids)
    who = {name: at_once[pid_of(name)][3] for name in PEOPLE}
    # The rule's known answers, so that agreeing on nothing would fail.
    assert (who["dave"], who["erin"], who["fay"], who["gus"], who["kim"]) == (
        "h0",
        "h0",
        "h1",
        "h1",
        "h0",
    )
    assert who["nobody"] == ""
    assert at_once[pid_of("gus")][1].keys() == {"h1"}  # h0's custody ended with its shredding
    assert [link.org for link in at_once[pid_of("erin")][2]] == ["h0"]
    counting = {name for name in PEOPLE if at_once[pid_of(name)][0]}
    assert counting == {"dave", "erin", "fay", "gus", "kim"}  # not hana, jo, ivo, nobody
    assert counted(w.state, "s1", pids) == {pid_of(n) for n in counting}


def test_a_patient_the_links_were_not_read_for_is_refused_not_taken_for_unlinked() -> None:
    w, record = _network()
    assert counted(w.state, "s1", []) == set()
    links = Links(w.state, record, [pid_of("dave")])
    assert links.answering(pid_of("dave")) == "h0"
    with pytest.raises(KeyError, match="not among the patients"):
        links.custodians(pid_of("erin"))  # erin has custodians: {} would be a lie


FACTS = PatientFacts(sex="female", matched={"cohort": True}, value=("2026-03-02", 7400))


def _verdicts_per_patient(
    w: World, record: dict[str, Any], sender: str, receiver: str, pids: list[str]
) -> tuple[set[str], list[str]]:
    """What the receiver must keep and drop of the sender's pids, by the per-patient rule."""
    kept, dropped = set(), []
    for pid in pids:
        counting = _per_patient(w, record, pid)
        if not counting[0]:
            continue  # no longer enrolled: neither kept nor a dispute
        if counting[3] == receiver:
            kept.add(pid)
        elif counting[3] != sender:
            dropped.append(pid)
    return kept, dropped


def test_the_receivers_check_reads_the_links_once_and_gives_the_per_patient_verdicts() -> None:
    w, record = _network()
    now = int(time.time() * 1000)
    verdicts = {}
    for query in (record, _record(w, "s1/q0002")):
        for sender in query["answerers"]:
            pids = [pid_of(n) for n in PEOPLE if sender in custodians(w.state, pid_of(n), query)]
            for receiver in query["answerers"]:
                if receiver == sender:
                    continue
                body = {"query": query["id"], "patients": [[p, FACTS.to_obj()] for p in pids]}
                _, kept, dropped = check(w.state, query, sender, receiver, body, now)
                expected = _verdicts_per_patient(w, query, sender, receiver, pids)
                assert (set(kept), dropped) == expected
                verdicts[query["id"], sender, receiver] = (set(kept), dropped)
    # The rule's known verdicts, so that agreeing on nothing would fail: h2 (dave's and
    # erin's junk filer, fay's co-custodian) gives h0 dave and erin, h1 fay.
    p = {name: pid_of(name) for name in PEOPLE}
    assert verdicts["s1/q0001", "h2", "h0"] == ({p["dave"], p["erin"]}, [p["fay"]])
    assert verdicts["s1/q0001", "h2", "h1"] == ({p["fay"]}, [p["dave"], p["erin"]])
    assert verdicts["s1/q0001", "h0", "h1"][0] == {p["fay"]}  # gus: h0's custody ended


def test_the_receivers_check_still_refuses_a_pid_the_sender_does_not_hold() -> None:
    w, record = _network()
    body = {"query": record["id"], "patients": [[pid_of("jo"), FACTS.to_obj()]]}
    with pytest.raises(PartialsRefused, match=r"patients\[0\]: h0 is not a custodian"):
        check(w.state, record, "h0", "h1", body, int(time.time() * 1000))
    empty = {"query": record["id"], "patients": []}
    assert check(w.state, record, "h0", "h1", empty, int(time.time() * 1000))[1:] == ({}, [])
