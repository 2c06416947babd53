"""Review 10: a patient whose counting hospital two nodes compute differently (issue 18).

Before, the receiver refused the whole partials message, and the query ended incomplete
for one patient. Now it drops that patient: it keeps none of the sender's facts of them and
does not count them itself (the sender, which gave them away, does not either), so that no
two hospitals count them; and the sender's answer says how many patients it counted nowhere
(research v3 `dropped`: a count of enrolled patients, no pid, nothing of their health)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from medledger.contracts import default_versions
from medledger.contracts import study_query as sq
from medledger.contracts.research_queries import MAX_PATIENTS
from medledger.contracts.study_query import PatientFacts
from medledger.interop import study_results
from medledger.ledger.errors import Code
from medledger.node.study_partials import (
    Inbox,
    answering,
    check,
    custodians,
    linked,
    not_kept,
)
from tests.contracts.test_study_queries import _answer, _masks, _run, _submit, _world
from tests.contracts.test_study_trust import _record
from tests.support import ledger
from tests.support.world import World, pid_of

FACTS = PatientFacts(sex="female", matched={"cohort": True}, value=("2026-01-05", 6900))


def _shared(w: World, name: str, first: str, then: str) -> str:
    pid = pid_of(name)
    w.records(first, pid, [f"r-{name}-1"])
    w.records(then, pid, [f"r-{name}-2"])
    w.ok(
        first,
        "research.enrol",
        {"study": "s1", "pid": pid, "evidence_hash": b"e" * 32, "channel": "portal"},
    )
    return pid


def test_one_disputed_patient_is_dropped_the_rest_of_the_message_kept() -> None:
    w = _world()
    mia = _shared(w, "mia", "h1", "h0")  # h1 enrolled her: h1 counts her
    ned = _shared(w, "ned", "h0", "h1")  # h0 enrolled him: h0 counts him
    record = _record(w)
    for pid, counter in ((mia, "h1"), (ned, "h0")):
        held_by = custodians(w.state, pid, record)
        assert answering(record["id"], held_by, linked(w.state, "s1", pid, record)) == counter
    # h0's replica, at another height, believed h1 counted both: it sends both to h1.
    body = {"query": record["id"], "patients": [[mia, FACTS.to_obj()], [ned, FACTS.to_obj()]]}
    query_id, kept, dropped = check(w.state, record, "h0", "h1", body, int(time.time() * 1000))
    assert query_id == record["id"]
    assert set(kept) == {mia}  # the message is taken, for the patient h1 does count
    # Counted by neither: h0 gave him away, h1 keeps nothing of his. h1's replica gives
    # him to h0, so h1 would not count him anyway, and does not report him (review 10):
    # its reply returns him to h0, whose own answer says so.
    assert dropped == []
    assert not_kept(body, kept) == [ned]


def test_the_dropped_patients_survive_a_restart_and_go_with_the_query(tmp_path: Path) -> None:
    secret = b"k" * 32
    inbox = Inbox(tmp_path / "partials.db", secret)
    inbox.put("s1/q0001", "h0", {"a" * 64: FACTS}, ["b" * 64])
    inbox.put("s1/q0001", "h2", {}, ["b" * 64, "c" * 64])  # the same pid from two senders
    inbox.close()
    reopened = Inbox(tmp_path / "partials.db", secret)
    assert reopened.dropped("s1/q0001") == {"b" * 64, "c" * 64}
    assert set(reopened.received("s1/q0001")["h0"]) == {"a" * 64}
    assert reopened.dropped("s1/q0002") == set()
    reopened.forget("s1/q0001")
    assert reopened.dropped("s1/q0001") == set()


def _answer_all(w: World, dropped: dict[str, Any]) -> dict[str, Any]:
    q = sq.parse(w.q("research/query", {"query": "s1/q0001"})["doc"])
    zeros = [0] * len(sq.cells(q))
    masks = _masks(3, len(zeros), seed=5)
    for org, mask in zip(("h0", "h1", "h2"), masks, strict=True):
        extra = {} if dropped.get(org) is None else {"dropped": dropped[org]}
        assert _answer(w, org, mask, 0, **extra).ok
    found: dict[str, Any] = w.q("research/query", {"query": "s1/q0001"})
    return found


def test_research_v3_answers_say_how_many_they_dropped_and_the_query_sums_them() -> None:
    w = _world()
    assert default_versions()["research"] >= 3  # v4 keeps v3's answers
    assert _submit(w).ok
    _run(w)
    q = sq.parse(w.q("research/query", {"query": "s1/q0001"})["doc"])
    n = len(sq.cells(q))
    for bad in (-1, MAX_PATIENTS + 1):
        refused = _answer(w, "h0", [0] * n, 0, dropped=bad)
        assert refused.code == Code.INVALID_BODY and "field dropped" in refused.log
    done = _answer_all(w, {"h0": 2, "h1": 0})  # h2 says nothing: 0
    assert done["status"] == "done"
    assert {o: a["dropped"] for o, a in done["answers"].items()} == {"h0": 2, "h1": 0, "h2": 0}
    assert done["dropped"] == 2
    assert "dropped" not in done["result"]  # the published figures are unchanged


def test_a_v2_chain_refuses_the_field_and_replays_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    versions = default_versions()
    monkeypatch.setattr(ledger, "default_versions", lambda: {**versions, "research": 2})
    w = _world()
    assert _submit(w).ok
    _run(w)
    q = sq.parse(w.q("research/query", {"query": "s1/q0001"})["doc"])
    refused = _answer(w, "h0", [0] * len(sq.cells(q)), 0, dropped=1)
    assert refused.code == Code.INVALID_BODY and "dropped" in refused.log
    done = _answer_all(w, {})
    assert done["status"] == "done" and "dropped" not in done
    assert all("dropped" not in a for a in done["answers"].values())


def test_a_short_count_is_said_by_the_result_views_never_silent() -> None:
    """The CLI's `study query result` and the researcher's page show this line."""
    assert study_results.uncounted({"status": "done", "dropped": 0}) is None
    assert study_results.uncounted({"status": "done"}) is None  # a v2 chain's record
    said = study_results.uncounted({"status": "done", "dropped": 3})
    assert said is not None and said.startswith("3 enrolled patients counted nowhere")
