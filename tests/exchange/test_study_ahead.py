"""What an answer waits for, and the last approver ready ahead (issue 18, session 12).

- A DPO's approval accepted by its node's CheckTx lets that hospital prepare before the
  approval's block (the last one starts the query); if that approval never commits (its
  nonce passed without it), the preparation is dropped and nothing was sent.
- A hospital tallies without waiting for the acknowledgements of its empty messages (they
  return no pid), but posts its answer only once every co-answerer has its message: a
  restart that finds the answer on the chain sends nothing more.
- The tally reads the enrolments again, in one pass, at tally time: a patient who withdrew
  while the answer waited for its partials is not counted (review 12c, finding 2).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from fractions import Fraction
from typing import Any

import pytest

from medledger.contracts import queries
from medledger.contracts.study_query import PatientFacts, StudyQuery
from medledger.contracts.study_query import tally as real_tally
from medledger.ledger.tx import sign_tx
from medledger.node.study_partials import counted as real_counted
from tests.exchange.conftest import Sandbox
from tests.exchange.test_study_prepared import A, B, C, D, approve, loaded, mean_and_count
from tests.exchange.test_study_queries import agents, of, sandbox4  # noqa: F401 - fixture
from tests.support.studies import DECISION, HBA1C_QUERY, ORGS, wait_for


def test_an_approval_that_never_commits_leaves_nothing_prepared(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
) -> None:
    study, started = loaded(sandbox4)
    query_id = study.submit(HBA1C_QUERY)
    for org in (A, B, C):
        approve(study, query_id, org)
    # D's DPO signs its approval; D's node's CheckTx accepts it, but it never reaches a block
    # (a mempool that dropped it).
    dpo = study.wallet(D, "dpo")
    nonce = queries.nonce(study.engine, dpo.public_key) + 1
    body = {"query": query_id, "role": "custodian", "decision_hash": DECISION}
    raw = sign_tx(dpo.key, dpo.chain_id, "research.query_approve", body, nonce)
    app = study.nodes[D].app
    assert app is not None and app.check_tx(raw).ok
    agent = started[D]
    wait_for(lambda: query_id in agent.answerer._prepared, 30, "D's evaluation ahead")
    # D's DPO signs something else with a later nonce: the approval can no longer commit.
    other = study.submit(HBA1C_QUERY)
    approve(study, other, A)
    approve(study, other, D)
    wait_for(
        lambda: query_id not in agent.answerer._prepared and query_id not in agent._preparing,
        30,
        "D's preparation dropped",
    )
    record = queries.study_query(study.engine, query_id)
    assert record is not None and record["status"] == "submitted"
    assert D not in {a["org"] for a in record["approvals"]}
    assert not started[D].answerer.inbox.sent(query_id)  # nothing left the hospital


def test_the_tally_waits_for_no_empty_message_but_the_answer_for_all(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = of(sandbox4)
    study.load(20, seed=13)
    study.register(["labs", "conditions"], budget_milli=5000)
    for label in sorted(study.pid):
        study.enrol(label)
    tallied = {org: threading.Event() for org in ORGS}

    def tally(q: StudyQuery, counted: list[PatientFacts]) -> list[int]:
        tallied[threading.current_thread().name.rsplit("_", 1)[0].removeprefix("study-")].set()
        return real_tally(q, counted)

    reads: list[Collection[str]] = []  # the enrolment reads on the chain (plans, tallies)

    def counted_now(state: Any, study_id: str, pids: Collection[str]) -> set[str]:
        reads.append(pids)
        return real_counted(state, study_id, pids)

    monkeypatch.setattr("medledger.research.answer.tally", tally)
    monkeypatch.setattr("medledger.research.answer.counted_now", counted_now)
    started = agents(sandbox4, *ORGS, ahead=False)  # no preparation: its reads are apart
    empties: list[tuple[str, str, bool, bool]] = []  # sender, receiver, tallied, answered

    def acknowledged_late(org: str, send: Any) -> Any:
        """The sender's empty messages are delivered, their replies held until it tallied."""

        def wrapped(receiver: str, query_id: str, share: list[list[Any]]) -> Any:
            reply = send(receiver, query_id, share)
            if not share:
                done = tallied[org].wait(10)
                record = queries.study_query(study.engine, query_id) or {}
                empties.append((org, receiver, done, org in (record.get("answers") or {})))
            return reply

        return wrapped

    for agent in started:
        agent.answerer.send = acknowledged_late(agent.org, agent.answerer.send)
    query_id = study.submit(HBA1C_QUERY)
    study.approve(query_id)
    record = study.done(query_id)
    count, mean = mean_and_count(study, list(study.pid))
    (row,) = record["result"]["strata"]
    assert (row["count"], Fraction(row["mean"])) == (count, mean)
    assert empties, "no hospital had an empty message to send"
    # Each hospital had tallied when its empty messages were acknowledged, and had not yet
    # posted its answer: that waited for them.
    assert all(done and not answered for _, _, done, answered in empties), empties
    assert len(reads) >= len(ORGS)  # each tally read its patients' enrolment once more
