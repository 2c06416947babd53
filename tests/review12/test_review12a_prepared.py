"""Review 12a: a study query's facts read ahead (`Answerer.prepare`, issue 18), attacked.

1. `Prepared.valid` takes every fact read ahead when `Vault.journal_head()` is what it was
   before the reading. That head is `MAX(seq)` of the replication journal, and the
   replicator prunes the rows every replica peer acknowledged: with its peers caught up the
   journal is empty and the head is 0, again and again. Facts read while it was empty are
   then taken whatever was written in between (a corrected value, a new record, a unit
   withdrawn after its settlement), as soon as the replicator has caught up once more.
2. Facts read ahead are plain patient facts kept in the agent's memory until the query runs
   or stops awaiting approvals. A query whose study closes can never run (an approval of a
   closed study is refused) yet stays "submitted" for ever: its facts are never dropped.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from medledger.contracts.study_query import PatientFacts
from medledger.research.agent import StudyAgent
from medledger.research.answer import Prepared
from tests.exchange.conftest import Sandbox
from tests.exchange.test_study_prepared import approve, loaded, prepared
from tests.exchange.test_study_queries import sandbox4  # noqa: F401 - fixture
from tests.support.studies import HBA1C_QUERY, ORGS, STUDY, wait_for
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
    ahead = Prepared(
        (), vault.journal_head(), vault.own_states([anne]), {anne: PatientFacts(matched={})}
    )
    # The lab corrects the value while the other members approve; replicated, acknowledged.
    put(vault, anne, "lab-1", 2, "HbA1c 9.4 % (corrected)")
    assert vault.own_states([anne]) != ahead.states  # her own records moved
    vault.prune_journal(vault.journal_head())
    # The query runs: her facts read ahead must not be taken.
    assert ahead.valid(vault, [anne]) == set()


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
