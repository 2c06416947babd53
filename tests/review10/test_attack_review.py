"""Review 10 (attack review of the session's merge): the count-once rule's new paths.

Each test states what should hold and FAILS on the merged main: it shows a finding of the
report (`/work/notes/s10/review.md`), to pass once the fix suggested there is made."""

from __future__ import annotations

import time
from typing import Any

from medledger.contracts.common import DAY_MS
from medledger.contracts.study_query import PatientFacts
from medledger.node.study_partials import (
    PartialsRefused,
    answering,
    check,
    custodians,
    linked,
    settled_by,
)
from tests.contracts.test_study_queries import _run, _submit, _world
from tests.contracts.test_study_trust import _record
from tests.support.world import World, pid_of

FACTS = PatientFacts(sex="female", matched={"cohort": True}, value=("2026-01-05", 6900))


def _shared(w: World, name: str, first: str, then: str, enroller: str) -> str:
    """A patient with records at `first` then `then`, enrolled in s1 by `enroller`."""
    pid = pid_of(name)
    w.records(first, pid, [f"r-{name}-1"])
    w.records(then, pid, [f"r-{name}-2"])
    body = {"study": "s1", "pid": pid, "evidence_hash": b"e" * 32, "channel": "portal"}
    w.ok(enroller, "research.enrol", body)
    return pid


def _who_counts(w: World, pid: str, record: dict[str, Any]) -> str:
    links = linked(w.state, "s1", pid, record)
    held_by = custodians(w.state, pid, record)
    return str(answering(record["id"], held_by, links, settled_by(w.state, record)))


def test_a_peer_cannot_make_another_hospitals_answer_report_a_patient_it_counts_itself() -> None:
    """Finding 1. h1 enrolled mia: every replica agrees h1 counts her. h1 (or whoever holds
    its key) sends mia's facts to h0 anyway. h0's check drops her (`dropped`), so h0's
    answer reports one enrolled patient "counted nowhere" (research v3 `dropped`, summed in
    the query and shown to the researcher), while h1 counts her: a member can put a false
    shortfall in any co-answerer's answer, for every patient they share."""
    w = _world()
    mia = _shared(w, "mia", "h0", "h1", enroller="h1")
    record = _record(w)
    assert _who_counts(w, mia, record) == "h1"  # h0's view, at this height, as h1's
    body = {"query": record["id"], "patients": [[mia, FACTS.to_obj()]]}
    try:
        _, kept, dropped = check(w.state, record, "h1", "h0", body, int(time.time() * 1000))
    except PartialsRefused:
        return  # refused: nothing lands in h0's answer (a fix)
    assert mia not in kept
    # What h0's answer reports as counted nowhere must not include a patient that, in h0's
    # own view, the sender itself counts.
    assert mia not in dropped


def test_the_settle_horizon_of_a_running_query_does_not_move_with_a_vote() -> None:
    """Finding 2. `settled_by` reads `study_link_settle_ms` as it is now, not as it was at
    the query's start, though every other input of `answering` is fixed at the start so that
    answerers at different heights agree. A vote during a query (e.g. a chain started before
    session 10, at 0, raising it to the founding 72 h) makes two answerers
    compute different counting hospitals for the same query: h0, planning before the vote,
    sends mia's facts to h1; h1, checking after, holds her and drops them; or, the other
    way, h0 holds mia (sends nothing of her) and h1, having planned before, counts her
    without h0's facts, silently (dropped stays 0)."""
    w = _world()  # a sandbox: links count at once
    mia = _shared(w, "mia", "h0", "h1", enroller="h1")
    assert _submit(w).ok
    record = _run(w)  # started by the contract (research v3), as the answerers read it
    before = _who_counts(w, mia, record)
    assert before == "h1"
    horizon = settled_by(w.state, record)
    w.vote_policy("set_policy_param", {"name": "study_link_settle_ms", "value": 3 * DAY_MS})
    assert settled_by(w.state, record) == horizon  # the query's, fixed when it started
    assert _who_counts(w, mia, record) == before
