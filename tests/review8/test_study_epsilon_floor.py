"""Review of session 8's study queries (issue 18): what suppression hides when a query has no
noise. Every member sums the masked answers on the chain into the exact vector (documented);
worse, two published results alone give a suppressed cell back by subtraction, so without
noise suppression protects nobody, not even the result's outside readers. The fix is a
consortium floor on a query's epsilon (`study_min_epsilon_milli`): noise on every query, and
the study's budget bounds how many there are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medledger.contracts import study_query as sq
from medledger.contracts.study_query import PatientFacts
from medledger.ledger.errors import Code
from medledger.provisioning import keygen
from medledger.provisioning.founding import found, load_requests
from tests.contracts.test_study_queries import QUERY, _approve, _masks, _submit, _world
from tests.support.ledger import T0
from tests.support.world import World

MOD = 1 << 64


def _patient(sex: str, value: int) -> PatientFacts:
    return PatientFacts(sex=sex, matched={"cohort": True}, value=("2025-03-01", value))


#: Six women and one man in the cohort (his count, 1, is under k = 5).
COHORT = [_patient("female", v) for v in (5200, 6100, 7000, 7400, 8800, 9100)] + [
    _patient("male", 13_400)
]


def _start(w: World, qid: str) -> dict[str, Any]:
    for who, role in (("h1/dpo-b", "ethics"), ("h0/dpo-a", "custodian"), ("h2/dpo-c", "custodian")):
        result = _approve(w, who, role, qid)
        assert result.ok, result
    record: dict[str, Any] = w.q("research/query", {"query": qid})
    return record


def _answer_all(w: World, qid: str) -> dict[str, Any]:
    """h0 answers for the whole cohort, h1 and h2 for nobody; each vector masked."""
    q = sq.parse(w.q("research/query", {"query": qid})["doc"])
    held = {"h0": COHORT, "h1": [], "h2": []}
    for (org, patients), mask in zip(held.items(), _masks(3, len(sq.cells(q)), 5), strict=True):
        plain = sq.tally(q, patients)
        cells = [(p + m) % MOD for p, m in zip(plain, mask, strict=True)]
        body = {"query": qid, "cells": cells, "patients": len(patients)}
        assert w.send(org, "research.query_answer", body).ok
    record: dict[str, Any] = w.q("research/query", {"query": qid})
    return record


def test_without_noise_two_published_results_give_a_suppressed_stratum_back() -> None:
    """What the floor stops: by sex, the man's stratum is suppressed; the same query without
    strata publishes the total. Total minus women = the man, and his value from the means."""
    w = _world()
    assert _submit(w, QUERY | {"stratify": ["sex"], "sex": ["female", "male"]}).ok
    assert _submit(w, QUERY).ok
    for qid in ("s1/q0001", "s1/q0002"):
        _start(w, qid)
        _answer_all(w, qid)
    by_sex = {
        r["stratum"]: r for r in w.q("research/query", {"query": "s1/q0001"})["result"]["strata"]
    }
    assert by_sex["sex=male"]["count"] is None  # suppressed: fewer than k
    (everyone,) = w.q("research/query", {"query": "s1/q0002"})["result"]["strata"]
    women = by_sex["sex=female"]
    assert everyone["count"] - women["count"] == 1
    his = float(everyone["mean"]) * everyone["count"] - float(women["mean"]) * women["count"]
    assert round(his, 1) == 13.4  # his HbA1c, exactly

    # A consortium that votes a floor refuses such queries: each one is noised, and the
    # study's budget bounds how many run.
    w.vote_policy("set_param", {"name": "study_min_epsilon_milli", "value": 100})
    refused = _submit(w, QUERY)
    assert refused.code == Code.REFUSED and "study_min_epsilon_milli" in refused.log
    assert "field query.epsilon" in refused.log
    assert _submit(w, QUERY | {"epsilon": "0.1"}).ok


def test_a_floor_voted_while_a_query_waits_for_approval_applies_when_it_starts() -> None:
    w = _world()
    assert _submit(w, QUERY).ok  # epsilon 0, submitted before the floor
    w.vote_policy("set_param", {"name": "study_min_epsilon_milli", "value": 250})
    assert _approve(w, "h1/dpo-b", "ethics").ok
    assert _approve(w, "h0/dpo-a").ok
    last = _approve(w, "h2/dpo-c")
    assert last.code == Code.REFUSED and "study_min_epsilon_milli" in last.log
    assert w.q("research/query", {"query": "s1/q0001"})["status"] == "submitted"


def test_the_floor_is_bounded_by_a_querys_largest_epsilon() -> None:
    w = World()
    for value in (-1, sq.MAX_EPSILON + 1):
        refused = w.send(
            "h0",
            "governance.propose",
            {"action": "set_param", "args": {"name": "study_min_epsilon_milli", "value": value}},
        )
        assert refused.code == Code.INVALID_BODY and "value" in refused.log


def test_a_consortium_founded_across_machines_starts_with_a_floor(tmp_path: Path) -> None:
    """A sandbox (`medledger init`, the demo, these tests) keeps exact queries; a consortium
    of real hospitals (`consortium genesis`) starts with every query noised."""
    requests = []
    for i, org in enumerate(("chu-lyon", "aphp-paris")):
        addresses = {"gateway": f"10.20.0.{i + 1}:7443", "p2p": f"10.20.0.{i + 1}:26656"}
        keygen(tmp_path / org, org, org.upper(), addresses)
        requests.append(tmp_path / org / "join-request.json")
    founding = found(load_requests(requests), chain_id="medledger-found", genesis_time_ms=T0)
    assert founding["genesis"]["params"]["study_min_epsilon_milli"] == 100
    assert founding["genesis"]["params"]["study_max_budget_milli"] == 10_000
    lowered = found(
        load_requests(requests),
        chain_id="medledger-found",
        genesis_time_ms=T0,
        params={"study_min_epsilon_milli": 500},
    )
    assert lowered["genesis"]["params"]["study_min_epsilon_milli"] == 500


def test_repeating_a_noised_query_is_bounded_by_a_budget_the_members_cap() -> None:
    """The budget is what stops a sponsor averaging a noised query's repeats; the sponsor set
    it alone, up to epsilon 100 (a thousand repeats at 0.1). The members cap it."""
    w = _world()
    w.vote_policy("set_param", {"name": "study_max_budget_milli", "value": 2000})
    refused = w.send(
        "h1/res-b",
        "research.register",
        {
            "study": "s2",
            "protocol_hash": b"\x01" * 32,
            "ethics_ref": "CPP-2026-001",
            "categories": ["labs"],
            "min_cohort": 2,
            "privacy_budget_milli": 100_000,
        },
    )
    assert refused.code == Code.REFUSED and "study_max_budget_milli" in refused.log
    w.study("s2", categories=["labs"], privacy_budget_milli=2000)  # within the cap
    assert w.state.get("research/study/s2")["privacy_budget_milli"] == 2000
