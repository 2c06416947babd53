"""A hospital evaluates a study query once its DPO approved it, before it runs (issue 18).

The members' approvals take a block each; a hospital whose DPO (and the study's ethics)
approved reads its enrolled patients' sealed digests meanwhile (`Answerer.prepare`), so that
its answer starts with the facts. Nothing leaves then. The running plan still decides who is
counted where: a patient withdrawn after the preparation is not counted; a record written
after it voids it for that patient (their own records' state moved) and the answer reads
again for that patient only; a hospital whose DPO has not approved reads nothing ahead. The
last approver prepares from its DPO's approval accepted by its node's CheckTx (the block that
holds it starts the query), and drops that preparation if the approval never commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import orjson
import pytest

from medledger.contracts.study_query import PatientFacts
from medledger.node.ingest import Ingestor
from medledger.research.agent import StudyAgent
from medledger.research.answer import preparable
from medledger.research.evaluate import Evaluator
from tests.exchange.conftest import Sandbox
from tests.exchange.test_study_queries import agents, of, sandbox4  # noqa: F401 - fixture
from tests.support.studies import (
    DECISION,
    ETHICS_REF,
    HBA1C_QUERY,
    ORGS,
    Study,
    later_hba1c,
    truth_hba1c,
    wait_for,
)

A, B, C, D = ORGS


def approve(study: Study, query_id: str, org: str) -> None:
    """The sponsor A's DPO for the ethics committee, any other member's as custodian."""
    body: dict[str, Any] = {"query": query_id, "decision_hash": DECISION}
    body |= {"role": "ethics", "ethics_ref": ETHICS_REF} if org == A else {"role": "custodian"}
    study.wallet(org, "dpo").send("research.query_approve", body)


def prepared(agent: StudyAgent, query_id: str) -> bool:
    return any(query_id in line and "evaluated ahead" in line for line in agent.status())


def by_org(started: list[StudyAgent]) -> dict[str, StudyAgent]:
    return {agent.org: agent for agent in started}


def loaded(sandbox: Sandbox) -> tuple[Study, dict[str, StudyAgent]]:
    study = of(sandbox)
    study.load(20, seed=13)
    study.register(["labs", "conditions"], budget_milli=5000)
    for label in sorted(study.pid):
        study.enrol(label)
    return study, by_org(agents(sandbox, *ORGS))


def mean_and_count(study: Study, labels: list[str]) -> tuple[int, Fraction]:
    values = [v[1] for label in labels if (v := truth_hba1c(study.by_label[label])) is not None]
    return len(values), Fraction(round(Fraction(sum(values), len(values))), 1000)


def test_the_approved_evaluate_ahead_and_the_running_plan_still_decides(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
) -> None:
    study, started = loaded(sandbox4)
    checked_ahead: list[str] = []  # the receivers whose check ran on the reads ahead
    for org in started:
        gateway = sandbox4.x(org).gateway
        real_view = gateway.partials_view

        def view(query: str, study_id: str, org: str = org, real: Any = real_view) -> Any:
            found = real(query, study_id)
            if found is not None:
                checked_ahead.append(org)
            return found

        gateway.partials_view = view
    query_id = study.submit(HBA1C_QUERY)
    approve(study, query_id, A)  # the ethics approval: A's DPO approved, B's not yet
    wait_for(lambda: prepared(started[A], query_id), 30, "A's evaluation ahead")
    approve(study, query_id, B)
    wait_for(lambda: prepared(started[B], query_id), 30, "B's evaluation ahead")
    # C's DPO has not approved: C read nothing for the query (its agent looked: B's approval
    # woke every agent, and A's and B's preparations came after the same kind of block).
    assert not started[C].answerer._prepared
    # A patient of A's withdraws after A read their facts: the running plan leaves them out.
    withdrawn = next(label for label in sorted(study.pid) if study.holders[label][0] == A)
    study.withdraw(withdrawn)
    approve(study, query_id, C)
    approve(study, query_id, D)  # the last approval: the query runs
    record = study.done(query_id)
    counted = [label for label in study.pid if label != withdrawn]
    count, mean = mean_and_count(study, counted)
    (row,) = record["result"]["strata"]
    assert (row["count"], Fraction(row["mean"])) == (count, mean)
    assert sum(a["patients"] for a in record["answers"].values()) == len(counted)
    # A and B answered from what they read ahead; D, approving last, too: it prepared once
    # its node's CheckTx accepted its DPO's approval, before the block that starts the query.
    timing = {org: started[org].wait_answered(query_id).timing for org in ORGS}
    assert timing[A]["prepared"] == timing[B]["prepared"] == 1.0
    assert timing[D]["prepared"] == 1.0
    # The plan's chain inputs read with the facts: the withdrawal's block wrote the study's
    # enrolments after A and B read them (read again when it runs); C and D read them after
    # it, and no block since changed them: their plans and their checks use them.
    assert timing[A]["plan_ahead"] == timing[B]["plan_ahead"] == 0.0
    assert timing[C]["plan_ahead"] == timing[D]["plan_ahead"] == 1.0
    assert sorted(set(checked_ahead)) == [C, D]
    assert not started[C].answerer._reads  # dropped once the answer landed
    assert not started[A].answerer._prepared  # forgotten once taken


def test_a_record_written_after_the_preparation_is_in_the_answer(
    sandbox4: Sandbox,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study, started = loaded(sandbox4)
    query_id = study.submit(HBA1C_QUERY)
    approve(study, query_id, A)
    wait_for(lambda: prepared(started[A], query_id), 30, "A's evaluation ahead")
    # The lab then sends A a later HbA1c of one of its patients (the sender's own ids): the
    # patient's last value changes after A read their digest.
    label = next(label for label in sorted(study.pid) if study.holders[label][0] == A)
    sent = later_hba1c(
        study.by_label[label][0],
        "LAB-2026-0611-17",
        "2026-06-11T07:40:00+02:00",
        11.9,
        "9d4c1e2a-5b7f-4e10-8a3c-0000000000f1",
    )
    result = Ingestor(study.nodes[A], study.vaults[A]).ingest_bytes(
        orjson.dumps(sent), "lab-feed-0611.json"
    )
    assert result.rejections == [], result.rejections
    study.by_label[label].append(sent)
    assert truth_hba1c(study.by_label[label]) == ("2026-06-11", 11900)
    read: list[str] = []  # the pids A's vault is read for once the query runs
    real_facts = Evaluator.facts

    def facts(self: Evaluator, pids: Iterable[str]) -> dict[str, PatientFacts]:
        pids = list(pids)
        if self.vault is study.vaults[A]:
            read.extend(pids)
        return real_facts(self, pids)

    monkeypatch.setattr(Evaluator, "facts", facts)
    for org in (B, C, D):
        approve(study, query_id, org)
    record = study.done(query_id)
    count, mean = mean_and_count(study, list(study.pid))
    (row,) = record["result"]["strata"]
    assert (row["count"], Fraction(row["mean"])) == (count, mean)
    # Only that patient's facts were void (their own records changed): A read them again,
    # and took the others' from its preparation.
    assert read == [study.pid[label]]
    assert 0 < started[A].wait_answered(query_id).timing["prepared"] < 1


def test_only_an_approval_of_the_hospitals_own_dpo_and_the_ethics_lets_it_prepare() -> None:
    record: dict[str, Any] = {
        "status": "submitted",
        "sponsor": A,
        "custodians_approve": True,
        "approvals": [],
    }
    assert not preparable(record, A)  # nobody approved
    record["approvals"] = [{"org": B, "role": "custodian"}]
    assert not preparable(record, B)  # its own DPO, but no ethics yet
    record["approvals"].append({"org": A, "role": "ethics"})
    assert preparable(record, A) and preparable(record, B)
    assert not preparable(record, C)  # C's DPO has not approved
    assert preparable(record | {"custodians_approve": False}, C)  # none needed: ethics is all
    assert not preparable(record | {"status": "running"}, A)  # running: it answers
    assert not preparable(None, A)
    # C's DPO's approval accepted by CheckTx, not yet in a block: its decision, on its way.
    assert preparable(record, C, {"custodian"})
    # ... but no hospital's pending approval stands for the ethics, only the sponsor's.
    record["approvals"] = [{"org": B, "role": "custodian"}]
    assert not preparable(record, B, {"custodian"})
    assert preparable(record, A, {"ethics"})
