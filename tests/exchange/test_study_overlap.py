"""A hospital's shares leave before its own evaluation ends (issue 18, the end-to-end path).

Each answerer evaluates first the patients another answerer counts, sends those shares in a
thread, and only then evaluates the patients it counts itself: a co-answerer's wait ends
with this hospital's shares, not with its whole evaluation. Here each hospital's evaluation of
its own patients does not start its work before one of its shares was taken by a co-answerer;
were the shares sent after the whole evaluation (as before), that never happens. The result
is still each enrolled patient once."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pytest

from medledger.contracts.study_query import PatientFacts
from medledger.research.evaluate import Evaluator
from tests.exchange.conftest import Sandbox
from tests.exchange.test_study_queries import agents, of, sandbox4  # noqa: F401 - fixture
from tests.support.studies import HBA1C_QUERY, ORGS


def test_each_hospital_sends_its_shares_before_it_evaluates_its_own_patients(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = of(sandbox4)
    study.load(16, seed=5)
    study.register(["labs", "conditions"], budget_milli=5000)
    for label in sorted(study.pid):
        study.enrol(label)
    org_of_vault = {id(study.vaults[org]): org for org in ORGS}
    taken = {org: threading.Event() for org in ORGS}  # a co-answerer took one of its shares
    calls: dict[str, list[bool]] = {org: [] for org in ORGS}  # per facts call: shares taken?
    real_facts = Evaluator.facts

    def facts(self: Evaluator, pids: Iterable[str]) -> dict[str, PatientFacts]:
        org = org_of_vault[id(self.vault)]
        if calls[org]:  # a later call: its own patients; a share must be out by now
            calls[org].append(taken[org].wait(30))
        else:
            calls[org].append(taken[org].is_set())
        return real_facts(self, pids)

    monkeypatch.setattr(Evaluator, "facts", facts)
    # Evaluated when the query runs (not ahead, at the approvals: test_study_prepared.py).
    for agent in agents(sandbox4, *ORGS, ahead=False):  # each send, once taken, is noted
        agent.answerer.send = _noting(agent.answerer.send, taken[agent.org])
    query_id = study.run(HBA1C_QUERY)
    record = study.done(query_id)
    # Every hospital evaluated twice: the others' patients (no share out yet), then its own
    # once a co-answerer had taken a share.
    assert calls == {org: [False, True] for org in ORGS}
    answered = record["answers"]
    assert sorted(answered) == sorted(ORGS)
    assert sum(a["patients"] for a in answered.values()) == len(study.pid)


def _noting(real: Any, taken: threading.Event) -> Any:
    def send(receiver: str, query: str, share: list[list[Any]]) -> Any:
        reply = real(receiver, query, share)
        taken.set()
        return reply

    return send
