"""Review 10's fixes (issue 18): who reports a disputed patient, and a fixed settle horizon.

A receiver that does not keep a pid of a partials message returns it in its reply; the
*sender*, which gave it away, counts it in its own answer's `dropped`; the receiver only
keeps it out of its own count when its replica gives it to a third hospital or none. A v3
query fixes `links_by` when it starts; a v2 query's record has none."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from medledger.contracts import default_versions
from medledger.contracts.common import DAY_MS
from medledger.contracts.study_query import PatientFacts
from medledger.node.study_partials import Inbox, check, not_kept, settled_by
from medledger.research.answer import _returned
from tests.contracts.test_study_queries import _run, _submit, _world
from tests.contracts.test_study_trust import _record
from tests.support import ledger
from tests.support.world import World, pid_of

FACTS = PatientFacts(sex="male", matched={"cohort": True}, value=("2026-03-02", 8100))
EVIDENCE = b"e" * 32


def _patient(w: World, name: str, custodians: tuple[str, ...], enroller: str) -> str:
    pid = pid_of(name)
    for org in custodians:
        w.records(org, pid, [f"r-{name}-{org}"])
    w.ok(
        enroller,
        "research.enrol",
        {"study": "s1", "pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"},
    )
    return pid


def _check(
    w: World, record: dict[str, Any], pids: list[str]
) -> tuple[set[str], list[str], list[str]]:
    """h0 sends the pids to h1: (kept, dropped by h1, returned to h0)."""
    body = {"query": record["id"], "patients": [[p, FACTS.to_obj()] for p in pids]}
    _, kept, dropped = check(w.state, record, "h0", "h1", body, int(time.time() * 1000))
    return set(kept), dropped, not_kept(body, kept)


def test_a_pid_the_receiver_gives_a_third_hospital_is_kept_out_of_its_count_not_reported() -> None:
    w = _world()
    ada = _patient(w, "ada", ("h0", "h1", "h2"), enroller="h2")  # h2 counts her
    ben = _patient(w, "ben", ("h0", "h1"), enroller="h1")  # h1 counts him
    record = _record(w)
    kept, dropped, returned = _check(w, record, [ada, ben])
    assert kept == {ben}
    assert dropped == [ada]  # h1 never counts her, whatever height it planned at
    assert returned == [ada]  # h0, which gave her away, reports her


def test_a_patient_withdrawn_since_the_sender_looked_is_no_dispute() -> None:
    w = _world()
    cy = _patient(w, "cy", ("h0", "h1", "h2"), enroller="h2")
    record = _record(w)
    w.ok(
        "h2",
        "research.withdraw",
        {"study": "s1", "pid": cy, "evidence_hash": EVIDENCE, "channel": "portal"},
    )
    kept, dropped, returned = _check(w, record, [cy])
    assert kept == set() and dropped == []  # not kept, not a dispute in h1's inbox
    assert returned == [cy]  # the sender re-checks the enrolment before it reports her


def test_the_sender_keeps_only_its_own_returned_pids_across_a_restart(tmp_path: Path) -> None:
    share = [["a" * 64, FACTS.to_obj()], ["b" * 64, FACTS.to_obj()]]
    # A receiver naming a pid it was not sent (or junk) cannot inflate the sender's count.
    reply = {"query": "s1/q0001", "accepted": 1, "dropped": ["b" * 64, "c" * 64, 7]}
    assert _returned(reply, share) == ["b" * 64]
    assert _returned({"accepted": 2, "dropped": 0}, share) == []  # an older gateway's count
    inbox = Inbox(tmp_path / "partials.db", b"k" * 32)
    inbox.mark_sent("s1/q0001", "h1", _returned(reply, share))
    inbox.close()
    reopened = Inbox(tmp_path / "partials.db", b"k" * 32)
    assert reopened.sent("s1/q0001") == {"h1"}
    assert reopened.returned("s1/q0001") == {"b" * 64}
    assert reopened.dropped("s1/q0001") == set()  # what the receiver side keeps out: apart
    reopened.forget("s1/q0001")
    assert reopened.returned("s1/q0001") == set()


def test_a_v3_query_fixes_its_links_settle_horizon_when_it_starts() -> None:
    w = _world()
    w.vote_policy("set_policy_param", {"name": "study_link_settle_ms", "value": DAY_MS})
    assert _submit(w).ok
    record = _run(w)
    assert record["links_by"] == record["started"] - DAY_MS
    w.vote_policy("set_policy_param", {"name": "study_link_settle_ms", "value": 3 * DAY_MS})
    assert settled_by(w.state, w.q("research/query", {"query": "s1/q0001"})) == (
        record["started"] - DAY_MS
    )


def test_a_v2_query_has_no_links_by_and_reads_the_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    versions = default_versions()
    monkeypatch.setattr(ledger, "default_versions", lambda: {**versions, "research": 2})
    w = _world()
    assert _submit(w).ok
    record = _run(w)
    assert "links_by" not in record  # v2 records replay unchanged
    w.vote_policy("set_policy_param", {"name": "study_link_settle_ms", "value": DAY_MS})
    assert settled_by(w.state, record) == record["started"] - DAY_MS
