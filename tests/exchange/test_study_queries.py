"""Four hospitals answer a study query by themselves (solo sandbox, gateways on loopback).

Synthetic chronic patients, most followed in two or three of the four hospitals, each hospital
holding its own record of them (its Patient, labs, conditions, prescriptions), plus what real
feeds carry around them (the lab's Practitioner and Organization, a result in another unit).
Some patients are enrolled in the study, some not, one withdraws. The published count and mean
(epsilon 0) must equal the truth computed directly from the bundles, each patient once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.contracts import queries
from medledger.provisioning import create_consortium
from medledger.research.agent import StudyAgent, attach
from medledger.research.evaluate import Evaluator
from tests.exchange.conftest import Sandbox, close_sandbox, open_sandbox
from tests.support.studies import (
    HBA1C_QUERY,
    ORGS,
    STUDY,
    Study,
    has_ifcc,
    truth_hba1c,
    wait_for,
)


@pytest.fixture
def sandbox4(tmp_path: Path) -> Iterator[Sandbox]:
    """Four hospitals, their gateways running; no study agent yet (`agents` starts them)."""
    directory = tmp_path / "net"
    homes = create_consortium(directory, 4, genesis_time_ms=int(time.time() * 1000))
    sandbox = open_sandbox(directory, homes)
    try:
        for org in ORGS:
            sandbox.start(org, sync=False)
        yield sandbox
    finally:
        for agent in RUNNING.pop(id(sandbox), []):
            agent.stop()
        close_sandbox(sandbox)


RUNNING: dict[int, list[StudyAgent]] = {}


def agents(sandbox: Sandbox, *orgs: str, **options: Any) -> list[StudyAgent]:
    """Each hospital's study agent, as its node runtime starts it (stopped by the fixture)."""
    started = [
        attach(sandbox.x(org), sandbox.h[org].vault, poll=0.1, **options).start() for org in orgs
    ]
    RUNNING.setdefault(id(sandbox), []).extend(started)
    return started


def of(sandbox: Sandbox) -> Study:
    return Study(
        {org: sandbox.h[org].node for org in ORGS}, {org: sandbox.h[org].vault for org in ORGS}
    )


@pytest.fixture
def study(sandbox4: Sandbox) -> Study:
    agents(sandbox4, *ORGS)
    return of(sandbox4)


def test_four_hospitals_count_each_enrolled_patient_once_and_the_mean_is_the_truth(
    study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    study.load(24, seed=11)
    shared = [label for label, holders in study.holders.items() if len(holders) >= 2]
    assert len(shared) >= 10  # most patients are followed in two or three hospitals
    study.register(["labs", "conditions", "medications"], budget_milli=5000)
    labels = sorted(study.pid)
    enrolled = labels[:-4]  # four patients never enrol
    for label in enrolled:
        study.enrol(label)
    withdrawn = enrolled[0]
    study.withdraw(withdrawn)
    counted = [label for label in enrolled if label != withdrawn]

    decrypted: dict[str, list[str]] = {org: [] for org in ORGS}
    for org in ORGS:  # what each hospital's vault opens for the query
        vault = study.vaults[org]
        real = vault.latest_records

        def spy(*args: Any, real: Any = real, org: str = org, **kwargs: Any) -> Iterator[Any]:
            for info, data in real(*args, **kwargs):
                if data is not None:
                    decrypted[org].append(str(orjson.loads(data).get("resourceType")))
                yield info, data

        monkeypatch.setattr(vault, "latest_records", spy)
    used: list[str] = []  # the type of each record's facts an evaluation used
    real_use = Evaluator._use

    def use(self: Evaluator, facts: Any, entry: Any) -> None:
        used.append(str(entry[0]))
        real_use(self, facts, entry)

    monkeypatch.setattr(Evaluator, "_use", use)

    query_id = study.run(HBA1C_QUERY)
    record = study.done(query_id)

    truth = {label: truth_hba1c(study.by_label[label]) for label in counted}
    values = [v[1] for v in truth.values() if v is not None]
    assert len(values) >= 5
    (row,) = record["result"]["strata"]
    assert row["count"] == len(values)
    assert Fraction(row["mean"]) == Fraction(round(Fraction(sum(values), len(values))), 1000)
    # Each enrolled patient with records here was answered for by exactly one hospital.
    answered = record["answers"]
    assert sum(a["patients"] for a in answered.values()) == len(counted)
    assert sorted(answered) == sorted(ORGS)
    # A sandbox's links count at once: nobody was held or dropped, and each answer says so.
    assert [a["dropped"] for a in answered.values()] == [0] * len(ORGS)
    assert record["dropped"] == 0
    # The mmol/mol results were left out and counted as such (a patient each).
    mismatched = sum(1 for label in counted if any(has_ifcc(b) for b in study.by_label[label]))
    assert record["result"]["unit_mismatch"] == (mismatched if mismatched >= 5 else None)
    # Only labs were used: no condition, prescription or encounter, though the research
    # digests hold every own record's facts. The digests were kept as the records were
    # ingested: no record was decrypted to answer.
    assert set(used) <= {"Observation", "DiagnosticReport"}, set(used)
    assert "Observation" in used
    assert decrypted == {org: [] for org in ORGS}
    # Each facts sent is in the patient's trail: an export for research, on the enrolment.
    two = next(label for label in counted if len(study.holders[label]) >= 2)

    def exported() -> list[dict[str, Any]]:
        trail = queries.access_of_patient(study.engine, study.pid[two])
        return [e for e in trail if e["action"] == "export" and e["purpose"] == "research"]

    entries = wait_for(exported, 30, "the research export in the trail")
    assert {e["basis"] for e in entries} == {f"enrolment:{STUDY}"}
    assert {e["custodian"] for e in entries} <= set(study.holders[two])
    # ... naming the hospital that received the facts: another of the patient's custodians.
    assert all(e["to"] in study.holders[two] and e["to"] != e["custodian"] for e in entries)
    # Each node says what it did (its health is looked at again after a second at most).
    for org in ORGS:

        def said(org: str = org) -> bool:
            lines = study.nodes[org].health.status().studies
            return any(query_id in x and "answered for" in x for x in lines)

        wait_for(said, 10, f"{org}'s health to name the answer")


def test_a_member_that_filed_junk_first_counts_nobody_and_receives_no_facts(
    study: Study,
) -> None:
    """chu-lille knows the INS of patients followed at the three other hospitals and files
    one junk record of each before any of them does: the longest-standing custodian. The
    patients' hospitals, which took their enrolment, still count them, the result is the
    truth, and no facts about them are sent to chu-lille."""
    import hashlib

    from medledger.contracts.records import META_CT_SIZES
    from medledger.interop.pseudonym import patient_pid
    from medledger.interop.synth import bundle_label, generate

    junk_filer = ORGS[3]
    key = study.nodes[junk_filer].config.pseudonym_key()
    held: dict[str, set[str]] = {}
    pid_of: dict[str, str] = {}
    for org, bundles in generate(16, list(ORGS), seed=7).items():
        for bundle in bundles:
            label = bundle_label(bundle)
            held.setdefault(label, set()).add(org)
            patient = next(
                e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
            )
            pid_of[label] = patient_pid(key, patient)
    targets = sorted(label for label, orgs in held.items() if junk_filer not in orgs)
    assert len(targets) >= 5
    junk = [
        {
            "rid": f"junk-{i}",
            "pid": pid_of[label],
            "commitment": hashlib.sha256(label.encode()).digest(),
            "meta_ct": b"j" * META_CT_SIZES[0],
        }
        for i, label in enumerate(targets)
    ]
    study.nodes[junk_filer].wallet.send("records.register", {"entries": junk})
    study.load(16, seed=7)
    study.register(["labs"])
    for label in study.pid:
        study.enrol(label)
    query_id = study.run(HBA1C_QUERY)
    record = study.done(query_id)

    values = [v[1] for label in study.pid if (v := truth_hba1c(study.by_label[label]))]
    (row,) = record["result"]["strata"]
    assert row["count"] == len(values)
    assert Fraction(row["mean"]) == Fraction(round(Fraction(sum(values), len(values))), 1000)
    assert sum(a["patients"] for a in record["answers"].values()) == len(study.pid)
    # Its junk patients' facts went to their hospitals, never to it.
    shared = [label for label in targets if len(study.holders[label]) >= 2]
    assert shared

    def exports(label: str) -> list[dict[str, Any]]:
        trail = queries.access_of_patient(study.engine, study.pid[label])
        return [e for e in trail if e["action"] == "export" and e["purpose"] == "research"]

    wait_for(lambda: all(exports(label) for label in shared), 30, "the research exports")
    for label in targets:
        assert junk_filer not in {e["to"] for e in exports(label)}, label
        assert {e["to"] for e in exports(label)} <= set(study.holders[label]), label


def test_small_strata_are_suppressed_and_said_so(study: Study) -> None:
    study.load(16, seed=3)
    study.register(["labs"])
    for label in study.pid:
        study.enrol(label)
    query_id = study.run(HBA1C_QUERY | {"stratify": ["sex"]})
    result = study.done(query_id)["result"]
    rows = {row["stratum"]: row for row in result["strata"]}
    assert sorted(rows) == ["sex=female", "sex=male", "sex=other", "sex=unknown"]
    # Nobody of sex other or unknown: under k, withheld, and listed as such.
    assert rows["sex=other"]["count"] is None and rows["sex=other"]["mean"] is None
    assert "sex=other: fewer than k patients" in result["suppressed"]
    truth = [
        (b["entry"][0]["resource"]["gender"], v[1])
        for label, bundles in study.by_label.items()
        if (v := truth_hba1c(bundles)) is not None
        for b in bundles[:1]
    ]
    for sex in ("female", "male"):
        n = sum(1 for s, _ in truth if s == sex)
        assert rows[f"sex={sex}"]["count"] == (n if n >= result["k"] else None)


def test_a_noised_answer_is_redrawn_from_the_committed_seed_and_spends_the_budget(
    study: Study,
) -> None:
    """Issue 18: the noise is reproducible from the query's committed id, and nobody re-rolls
    it. Each node's answer commits to a seed drawn from its organisation key's deterministic
    signature over the committed noise seed; an auditor shown those signatures checks every
    commitment and redraws the noise, and the truth plus that noise, combined as the contract
    does, is exactly the published result. The query's epsilon is spent from the study's
    budget on the chain."""
    from medledger.contracts import study_query as sq
    from medledger.contracts.research_queries import parsed_query

    study.load(16, seed=3)
    study.register(["labs"], budget_milli=1000)
    labels = sorted(study.pid)
    for label in labels:
        study.enrol(label)
    query_id = study.run(HBA1C_QUERY | {"epsilon": "0.5"})
    record = study.done(query_id)
    assert record["result"]["noise"].startswith("discrete-laplace")
    budget = queries.study_budget(study.engine, STUDY)
    assert budget is not None
    assert (budget["spent_milli"], budget["remaining_milli"]) == (500, 500)

    q = parsed_query(record)
    names = sq.cells(q)
    noise = [0] * len(names)
    for org in ORGS:  # what each hospital's signature, shown to an auditor, gives back
        signature = study.nodes[org].org_key.sign(sq.noise_message(query_id, record["noise_seed"]))
        seed = sq.answer_noise_seed(signature)
        assert record["answers"][org]["noise_commitment"] == sq.noise_commitment(seed), org
        noise = [a + b for a, b in zip(noise, sq.answer_noise(q, seed), strict=True)]
    assert any(noise)  # the sum cell alone: scale 17,000 x 6 per answerer
    truth = {label: truth_hba1c(study.by_label[label]) for label in labels}
    values = [v[1] for v in truth.values() if v is not None]
    plain = {
        "all/patients": len(values),
        "all/sum": sum(v - 3000 for v in values),  # value - value.min, in thousandths
        "unit_mismatch": sum(1 for b in study.by_label.values() if any(has_ifcc(x) for x in b)),
    }
    assert names == list(plain)
    totals = [plain[name] + n for name, n in zip(names, noise, strict=True)]
    assert record["result"] == sq.finish(q, totals, record["k"])


def test_a_hospital_down_meanwhile_answers_from_the_partials_it_kept(sandbox4: Sandbox) -> None:
    study = of(sandbox4)
    study.load(16, seed=7)
    study.register(["labs"])
    for label in study.pid:
        study.enrol(label)
    A, B, C, D = ORGS
    agents(sandbox4, A, B, C)  # D's node runs its gateway but its agent is not started
    query_id = study.run(HBA1C_QUERY)
    inbox = sandbox4.x(D).partials
    wait_for(lambda: len(inbox.senders(query_id)) == 3, 30, "the partials kept at D")
    # D's node stops and starts again (a crash of the process: its inbox is on disk).
    sandbox4.x(D).stop()
    sandbox4.h[D].exchange = None
    sandbox4.start(D, sync=False)
    assert len(sandbox4.x(D).partials.senders(query_id)) == 3
    (late,) = agents(sandbox4, D)
    record = study.done(query_id)
    assert sorted(record["answers"]) == sorted(ORGS)
    values = [v[1] for bundles in study.by_label.values() if (v := truth_hba1c(bundles))]
    (row,) = record["result"]["strata"]
    assert row["count"] == (len(values) if len(values) >= record["result"]["k"] else None)
    # Once answered, never again: a new pass finds nothing to do.
    assert late.due() == [] and late.answerer.answer(query_id) is None


def _record(study: Study, query_id: str) -> dict[str, Any]:
    """A running query's record as the contract keeps it (what the receiver checks against)."""
    now = int(time.time() * 1000)
    return {
        "id": query_id,
        "study": STUDY,
        "status": "running",
        "answerers": sorted(ORGS),
        "started": now,
        "deadline_ms": now + 60_000,
    }


def test_a_receiver_takes_partials_only_for_its_own_enrolled_shared_patients(
    study: Study,
) -> None:
    from medledger.contracts.study_query import PatientFacts
    from medledger.node.study_partials import (
        PartialsRefused,
        answering,
        check,
        custodians,
        linked,
    )

    study.load(12, seed=5)
    study.register(["labs"])
    labels = sorted(study.pid)
    for label in labels[:-1]:
        study.enrol(label)
    query_id = f"{STUDY}/q0001"
    record = _record(study, query_id)
    facts = PatientFacts(matched={"cohort": True}, value=("2025-01-02", 7100)).to_obj()
    engine = study.engine
    with engine.read_view() as state:
        shared = next(
            label
            for label in labels[:-1]
            if len(custodians(state, study.pid[label], record)) in (2, 3)
        )
        pid = study.pid[shared]
        held_by = custodians(state, pid, record)
        receiver = answering(query_id, held_by, linked(state, STUDY, pid, record))
        sender = next(org for org in held_by if org != receiver)
        stranger = next(org for org in ORGS if org not in held_by)
        now = int(time.time() * 1000)

        def ask(sender: str, receiver: str, pids: list[str], rec: Any = record) -> Any:
            body = {"query": query_id, "patients": [[p, facts] for p in pids]}
            return check(state, rec, sender, receiver, body, now)

        assert ask(sender, receiver, [pid])[1][pid].value == ("2025-01-02", 7100)
        assert ask(sender, receiver, [])[1] == {}  # an empty message says "nothing for you"
        # Sent to a hospital that does not count the patient: dropped, kept by no one.
        assert ask(sender, sender, [pid])[1:] == ({}, [pid])
        refusals = {
            "not a custodian": lambda: ask(stranger, receiver, [pid]),
            "not an answerer": lambda: ask("chu-nantes", receiver, [pid]),
            "not running": lambda: ask(sender, receiver, [pid], {**record, "deadline_ms": now}),
        }
        for why, attempt in refusals.items():
            with pytest.raises(PartialsRefused) as refused:
                attempt()
            assert why in refused.value.reason, (why, refused.value.reason)
        # A patient not enrolled (or withdrawn since the sender looked) is dropped, not counted.
        outsider = study.pid[labels[-1]]
        out_by = custodians(state, outsider, record)
        if (
            sender in out_by
            and answering(query_id, out_by, linked(state, STUDY, outsider, record)) == receiver
        ):
            assert outsider not in ask(sender, receiver, [outsider])[1]


def test_a_pid_the_receiver_does_not_keep_goes_back_to_its_sender_not_into_its_answer(
    sandbox4: Sandbox,
) -> None:
    """A hospital sends the facts of a patient it counts itself to a co-custodian (a lying
    member, or a replica that read otherwise): the receiver keeps none of them, does not
    report the patient in its own answer, and names them in its reply to the sender, which
    gave them away and so reports them (review 10)."""
    from medledger.contracts.study_query import PatientFacts

    study = of(sandbox4)
    study.load(12, seed=5)
    study.register(["labs"])
    label = next(label for label, holders in sorted(study.holders.items()) if len(holders) >= 2)
    study.enrol(label)  # by its last holder: its link, its counting hospital
    counter, other = study.holders[label][-1], study.holders[label][0]
    query_id = study.run(HBA1C_QUERY)
    facts = PatientFacts(sex="female", matched={"cohort": True}, value=("2026-01-05", 6900))
    pid = study.pid[label]
    reply = sandbox4.x(counter).client.study_partials(other, query_id, [[pid, facts.to_obj()]])
    assert reply["accepted"] == 0 and reply["dropped"] == [pid]
    inbox = sandbox4.x(other).partials
    assert inbox.received(query_id) == {counter: {}}  # heard from, nothing kept
    assert inbox.dropped(query_id) == set()  # nothing the receiver's answer would report
