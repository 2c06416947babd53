"""Review 11b: the study answer's new order (flow18, research/answer.py).

An answerer now sends its shares in a thread while it evaluates its own patients; when that
evaluation fails, `answer` leaves the thread running (`sending.shutdown(wait=False)`: "the
sends go on") and the agent retries. The retry's `_send` reads `Inbox.sent` before the first
thread's sends were marked, so it journals every share's `export` entries a second time
and sends the shares again: the patients' trails show two exports to each co-answerer where
one left (before flow18, nothing was sent until the whole evaluation had succeeded)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pytest

from medledger.contracts.study_query import PatientFacts
from medledger.research import agent as agent_module
from medledger.research.evaluate import Evaluator
from tests.exchange.conftest import Sandbox
from tests.exchange.test_study_queries import agents, of, sandbox4  # noqa: F401 - fixture
from tests.support.studies import HBA1C_QUERY, ORGS


def test_review11b_a_failed_own_evaluation_exports_each_share_once(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_module, "RETRY_S", 0.2)
    study = of(sandbox4)
    study.load(16, seed=5)
    study.register(["labs", "conditions"], budget_milli=5000)
    for label in sorted(study.pid):
        study.enrol(label)
    first = ORGS[0]
    vault = study.vaults[first]
    calls: list[int] = []
    real_facts = Evaluator.facts

    def facts(self: Evaluator, pids: Iterable[str]) -> dict[str, PatientFacts]:
        if self.vault is vault:
            calls.append(len(calls))
            if len(calls) == 2:  # its own patients, first attempt: a read fails
                raise RuntimeError("the vault's read failed mid-evaluation")
        return real_facts(self, pids)

    monkeypatch.setattr(Evaluator, "facts", facts)
    started = agents(sandbox4, *ORGS, ahead=False)  # evaluated when it runs, not ahead
    answerer = next(a for a in started if a.org == first).answerer
    audited: list[tuple[str, str]] = []
    retried = threading.Event()
    real_audit, real_send = answerer._audit, answerer.send

    def audit(plan: Any, sends: list[tuple[str, str]]) -> None:
        audited.extend(sends)
        if len(calls) > 2:  # the retry's
            retried.set()
        real_audit(plan, sends)

    def send(receiver: str, query: str, share: list[list[Any]]) -> Any:
        retried.wait(10)  # a slow co-answerer: the first attempt's sends still under way
        return real_send(receiver, query, share)

    monkeypatch.setattr(answerer, "_audit", audit)
    monkeypatch.setattr(answerer, "send", send)
    query_id = study.run(HBA1C_QUERY)
    record = study.done(query_id, timeout=90)
    assert len(calls) > 2, "the first attempt failed and was retried"
    assert audited, "the hospital had shares to send"
    twice = sorted({s for s in audited if audited.count(s) > 1})
    assert not twice, f"{len(twice)} (pid, receiver) exports journaled twice"
    assert sum(a["patients"] for a in record["answers"].values()) == len(study.pid)
