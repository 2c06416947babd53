"""Review of session 8's study queries (issue 18): who receives a co-custodian's partial facts.

Any member becomes a custodian of a pid by registering one junk record for it (the chain
cannot tell: docs/security.md). With the answering hospital chosen by SHA-256(query id, org)
alone, such a member counted an enrolled patient for a share of the queries, so the patient's
real custodians sent it their facts (lab value and date, sex, birth date) without it ever
treating them. The longest-standing custodian answers now."""

from __future__ import annotations

import time

from medledger.contracts.study_query import PatientFacts
from medledger.node.study_partials import answering, check, custodians, not_kept, rank
from tests.contracts.test_study_queries import _world


def _query_id_ranking_first(org: str, others: list[str]) -> str:
    """A query id (the next ones are predictable: <study>/q0001, q0002...) for which `org`
    has the smallest rank: the member simply waits for that query."""
    for seq in range(1, 100):
        qid = f"s1/q{seq:04d}"
        if all(rank(qid, org) < rank(qid, o) for o in others):
            return qid
    raise AssertionError("no such query id")


def test_a_junk_custodian_never_receives_the_real_custodians_facts() -> None:
    w = _world()
    alice = w.pid  # h0 has treated her for a while (World's fixture)
    w.ok("patient:alice", "research.enrol", {"study": "s1", "pid": alice})
    # h2 registers one junk record of hers: it is her custodian from now on.
    w.records("h2", alice, ["r-junk"])
    query_id = _query_id_ranking_first("h2", ["h0"])
    now = int(time.time() * 1000)
    record = {
        "id": query_id,
        "study": "s1",
        "status": "running",
        "answerers": ["h0", "h1", "h2"],
        "started": w.now,
        "deadline_ms": now + 60_000,
    }
    held_by = custodians(w.state, alice, record)
    assert sorted(held_by) == ["h0", "h2"]
    assert answering(query_id, held_by) == "h0"  # the hospital that treated her first
    facts = PatientFacts(sex="female", matched={"cohort": True}, value=("2025-05-02", 7400))
    body = {"query": query_id, "patients": [[alice, facts.to_obj()]]}
    # h2 keeps none of h0's facts about alice (session 10: not kept, counted by neither;
    # review 10: h2's replica gives her to h0, so h2 does not report her, it returns her).
    _, kept, dropped = check(w.state, record, "h0", "h2", body, now)
    assert not kept and not dropped, "h2 would hold h0's facts about alice"
    assert not_kept(body, kept) == [alice]
    # The other way round, h2's (junk) facts go to h0, which counts her once.
    _, taken, dropped = check(w.state, record, "h2", "h0", body, now)
    assert list(taken) == [alice] and not dropped
