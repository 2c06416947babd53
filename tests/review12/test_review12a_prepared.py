"""Review 12a: a study query's facts read ahead (`Answerer.prepare`, issue 18), attacked.

1. `Prepared.valid` took every fact read ahead when `Vault.journal_head()` was what it was
   before the reading (now it compares each patient's own state). That head is `MAX(seq)`
   of the replication journal, and the replicator prunes the rows every replica peer
   acknowledged: with its peers caught up the journal is empty and the head is 0, again and
   again. Facts read while it was empty were then taken whatever was written in between (a
   corrected value, a new record, a unit withdrawn after its settlement).
2. Facts read ahead are plain patient facts kept in the agent's memory until the query runs
   or stops awaiting approvals. A query whose study closes can never run (an approval of a
   closed study is refused) yet stays "submitted" for ever: its facts are never dropped.
"""

from __future__ import annotations

import secrets
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.contracts import queries
from medledger.contracts.study_query import PatientFacts
from medledger.node.ingest import Ingestor
from medledger.research.agent import StudyAgent
from medledger.research.answer import Prepared
from tests.exchange.conftest import Sandbox
from tests.exchange.test_study_prepared import approve, loaded, mean_and_count, prepared
from tests.exchange.test_study_queries import sandbox4  # noqa: F401 - fixture
from tests.support.studies import (
    HBA1C_QUERY,
    ORGS,
    STUDY,
    later_hba1c,
    truth_hba1c,
    wait_for,
)
from tests.vault.conftest import VaultEnv, make_pid
from tests.vault.test_research_digest import put

A, B, C, D = ORGS


def test_facts_read_ahead_at_an_empty_journal_are_void_after_a_write_once_pruned_again(
    tmp_path: Path,
) -> None:
    vault = VaultEnv("sqlite", secrets.token_bytes(32), sqlite_path=tmp_path / "vault.db").open()
    anne = make_pid("anne")
    put(vault, anne, "lab-1", 1, "HbA1c 6.1 %")
    # The replica peers acknowledged everything: the replicator prunes the journal.
    vault.prune_journal(vault.journal_head())
    # The preparation, as `Answerer.prepare` takes its stamp and states before reading.
    ahead = Prepared((), vault.own_states([anne]), {anne: PatientFacts(matched={})})
    # The lab corrects the value while the other members approve; replicated, acknowledged.
    put(vault, anne, "lab-1", 2, "HbA1c 9.4 % (corrected)")
    assert vault.own_states([anne]) != ahead.states  # her own records moved
    vault.prune_journal(vault.journal_head())
    # The query runs: her facts read ahead must not be taken.
    assert ahead.valid(vault, [anne]) == set()


def test_a_hospital_whose_replicas_caught_up_answers_with_the_records_of_the_answers_time(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
) -> None:
    """End to end: the replicator's prune (`Replicator` prunes every acknowledged change,
    every 0.5 s) done by hand on A's vault, before the preparation and after the write."""
    study, started = loaded(sandbox4)
    vault = study.vaults[A]
    vault.prune_journal(vault.journal_head())  # A's replica peers are caught up
    query_id = study.submit(HBA1C_QUERY)
    approve(study, query_id, A)
    wait_for(lambda: prepared(started[A], query_id), 30, "A's evaluation ahead")
    label = next(label for label in sorted(study.pid) if study.holders[label][0] == A)
    sent = later_hba1c(
        study.by_label[label][0],
        "LAB-2026-0702-04",
        "2026-07-02T08:15:00+02:00",
        12.3,
        "2b9e4f10-7c3a-4d55-9e61-0000000000a7",
    )
    result = Ingestor(study.nodes[A], vault).ingest_bytes(orjson.dumps(sent), "lab-0702.json")
    assert result.rejections == [], result.rejections
    study.by_label[label].append(sent)
    assert truth_hba1c(study.by_label[label]) == ("2026-07-02", 12300)
    vault.prune_journal(vault.journal_head())  # replicated and acknowledged
    for org in (B, C, D):
        approve(study, query_id, org)
    record = study.done(query_id)
    count, mean = mean_and_count(study, list(study.pid))
    (row,) = record["result"]["strata"]
    assert (row["count"], Fraction(row["mean"])) == (count, mean)


def _forgotten(agent: StudyAgent, query_id: str) -> bool:
    return query_id not in agent.answerer._prepared


def test_facts_read_ahead_are_dropped_when_the_study_closes(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
) -> None:
    study, started = loaded(sandbox4)
    query_id = study.submit(HBA1C_QUERY)
    approve(study, query_id, A)  # A's DPO gives the ethics approval: A reads ahead
    wait_for(lambda: prepared(started[A], query_id), 30, "A's evaluation ahead")
    assert not _forgotten(started[A], query_id)
    # The sponsor closes the study: the query can never run, its enrolments cover no read.
    study.wallet(A, "res").send("research.close", {"study": STUDY})
    # The agent polls every 0.1 s: the patients' facts must not outlive the study.
    wait_for(lambda: _forgotten(started[A], query_id), 10, "A's facts read ahead dropped")


def test_a_withdrawn_patients_facts_read_ahead_are_not_kept_while_the_query_waits(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
) -> None:
    """Any member's DPO may never approve: the query waits for ever (a submitted query has
    no deadline), and so do the facts of a patient who withdrew from the study meanwhile."""
    study, started = loaded(sandbox4)
    query_id = study.submit(HBA1C_QUERY)
    approve(study, query_id, A)
    wait_for(lambda: prepared(started[A], query_id), 30, "A's evaluation ahead")
    label = next(label for label in sorted(study.pid) if study.holders[label][0] == A)
    pid = study.pid[label]
    assert pid in started[A].answerer._prepared[query_id].facts
    study.withdraw(label)

    def dropped() -> bool:
        ahead = started[A].answerer._prepared.get(query_id)
        return ahead is None or pid not in ahead.facts

    wait_for(dropped, 10, "the withdrawn patient's facts read ahead dropped")


def test_queries_nobody_here_approved_cost_no_chain_read_per_agent_step(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any member's researcher may submit up to 9999 queries per study (the budget is spent
    only at a start), and a submitted query never expires. `StudyAgent.approved`, run at
    every step of every member's agent (each poll and each block), reads each of them whole
    (`queries.study_query`: under the engine's lock, the one CheckTx and commits take), even
    at a hospital whose DPO approved none: ≈ 60 µs of CPU each measured here."""
    study, started = loaded(sandbox4)
    for _ in range(5):
        study.submit(HBA1C_QUERY)  # awaiting approvals, C's DPO approves none of them
    agent = started[C]
    assert agent.approved() == []
    here, reads = threading.get_ident(), []
    real = queries.study_query

    def study_query(engine: Any, query_id: str) -> Any:
        if threading.get_ident() == here:  # not the agent's own thread
            reads.append(query_id)
        return real(engine, query_id)

    monkeypatch.setattr(queries, "study_query", study_query)
    assert agent.approved() == []  # nothing changed on the chain since the last step
    assert reads == []
