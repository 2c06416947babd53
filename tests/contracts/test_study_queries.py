"""Research contract v2: a study's queries submitted, approved, answered under masks, combined."""

from __future__ import annotations

import datetime
import hashlib
import random
from typing import Any

import pytest

from medledger.contracts import default_versions
from medledger.contracts import study_query as sq
from medledger.contracts.common import DAY_MS
from medledger.contracts.study_query import PatientFacts
from medledger.ledger import codec
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import TxResult
from tests.support import ledger
from tests.support.world import World

DECISION = hashlib.sha256(b"ethics committee decision, 2026-03-02").digest()
ETHICS_REF = "CPP-2026-001"  # World.study's
MOD = 1 << 64

QUERY: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": "http://loinc.org", "code": "4548-4"}],
        "value": {"min": 3, "max": 20, "unit": "%"},
    },
    "statistics": [{"kind": "count"}, {"kind": "mean"}],
}


def _world(budget: int = 1000) -> World:
    w = World()
    for ref, roles in {"h2/dpo-c": ["dpo"], "h1/res-dpo": ["researcher", "dpo"]}.items():
        org, prac = ref.split("/")
        key = SigningKey(hashlib.sha256(ref.encode()).digest())
        w.keys[ref] = key
        w.ok(
            org, "identity.register", {"practitioner": prac, "key": key.public_key, "roles": roles}
        )
    w.study("s1", categories=["labs", "conditions"], privacy_budget_milli=budget)
    return w


def _submit(w: World, query: dict[str, Any] | None = None, who: str = "h1/res-b") -> TxResult:
    doc = sq.to_obj(sq.parse(query or QUERY))  # the canonical body: no floats on the chain
    return w.send(who, "research.query_submit", {"study": "s1", "query": doc})


def _approve(w: World, who: str, role: str = "custodian", qid: str = "s1/q0001") -> TxResult:
    body: dict[str, Any] = {"query": qid, "role": role}
    if role == "ethics":
        body.update(ethics_ref=ETHICS_REF, decision_hash=DECISION)
    return w.send(who, "research.query_approve", body)


def _run(w: World, qid: str = "s1/q0001") -> dict[str, Any]:
    assert _approve(w, "h1/dpo-b", "ethics", qid).ok
    assert _approve(w, "h0/dpo-a", qid=qid).ok
    last = _approve(w, "h2/dpo-c", qid=qid)
    assert last.ok, last
    running = next(e for e in last.events if e.type == "study.query_running")
    assert running.get("answerers") == "h0,h1,h2"
    record: dict[str, Any] = w.q("research/query", {"query": qid})
    return record


def _answer(
    w: World, org: str | SigningKey, cells: list[int], patients: int, **extra: Any
) -> TxResult:
    body = {"query": "s1/q0001", "cells": cells, "patients": patients, **extra}
    return w.send(org, "research.query_answer", body)


def _masks(n_orgs: int, n_cells: int, seed: int) -> list[list[int]]:
    """Masks that cancel in the sum mod 2^64, as the nodes' pairwise masks do."""
    rnd = random.Random(seed)
    masks = [[rnd.randrange(MOD) for _ in range(n_cells)] for _ in range(n_orgs - 1)]
    last = [(-sum(column)) % MOD for column in zip(*masks, strict=True)]
    return [*masks, last]


def _facts(value: int) -> PatientFacts:
    return PatientFacts(sex="female", matched={"cohort": True}, value=("2025-01-01", value))


def test_a_query_is_submitted_under_its_study_with_its_canonical_body_and_hash() -> None:
    w = _world()
    result = _submit(w)
    assert result.ok, result
    assert [e.get("query") for e in result.events] == ["s1/q0001"]
    record = w.q("research/query", {"query": "s1/q0001"})
    q = sq.parse(QUERY)
    assert record["doc"] == sq.to_obj(q) and record["hash"] == sq.query_hash(q)
    assert record["status"] == "submitted" and record["sponsor"] == "h1"
    assert [r["id"] for r in w.q("research/queries", {"study": "s1"})] == ["s1/q0001"]


def test_submit_refuses_what_the_study_does_not_cover() -> None:
    w = _world()
    outside = _submit(w, QUERY | {"categories": ["labs", "medications"]})
    assert outside.code == Code.REFUSED and "field query.categories: 'medications'" in outside.log
    # The 2x2's criteria read only the query's categories: those are checked as a whole.
    not_sponsor = _submit(w, who="h0/res-a")
    assert not_sponsor.code == Code.UNAUTHORIZED
    not_researcher = _submit(w, who="h1/dpo-b")
    assert not_researcher.code == Code.UNAUTHORIZED
    bad = w.send(
        "h1/res-b",
        "research.query_submit",
        {"study": "s1", "query": QUERY | {"cohort": {"types": ["Patient"]}}},
    )
    assert bad.code == Code.INVALID_BODY and bad.log.startswith("field query.cohort.types[0]:")


def test_approvals_by_the_wrong_role_org_or_the_submitter_are_refused() -> None:
    w = _world()
    assert _submit(w, who="h1/res-dpo").ok
    assert _approve(w, "h1/res-b", "ethics").code == Code.UNAUTHORIZED  # not a DPO
    assert _approve(w, "h0/dpo-a", "ethics").code == Code.UNAUTHORIZED  # not the sponsor's
    assert _approve(w, "h1/res-dpo", "ethics").code == Code.UNAUTHORIZED  # the submitter
    wrong_ref = w.send(
        "h1/dpo-b",
        "research.query_approve",
        {
            "query": "s1/q0001",
            "role": "ethics",
            "ethics_ref": "CPP-1999",
            "decision_hash": DECISION,
        },
    )
    assert wrong_ref.code == Code.REFUSED and "ethics_ref" in wrong_ref.log
    no_decision = w.send(
        "h1/dpo-b",
        "research.query_approve",
        {"query": "s1/q0001", "role": "ethics", "ethics_ref": ETHICS_REF},
    )
    assert no_decision.code == Code.INVALID_BODY and "decision_hash" in no_decision.log
    assert _approve(w, "h0/dpo-a").ok
    assert _approve(w, "h0/dpo-a").code == Code.CONFLICT  # once each
    assert _approve(w, "h1/dpo-b").code == Code.CONFLICT  # the sponsor approves as ethics
    # Not running before every member's DPO approved (study_dpo_approval = 1 by default).
    assert _approve(w, "h1/dpo-b", "ethics").ok
    waiting = w.q("research/query", {"query": "s1/q0001"})
    assert waiting["status"] == "submitted" and waiting["awaited"] == ["custodian:h2"]
    assert _approve(w, "h2/dpo-c").ok
    record = w.q("research/query", {"query": "s1/q0001"})
    assert record["status"] == "running" and record["answerers"] == ["h0", "h1", "h2"]
    assert record["k"] == 5 and record["deadline_ms"] == w.now + DAY_MS
    approved_on = datetime.datetime.fromtimestamp(w.now // 1000, datetime.UTC).date()
    assert record["age_on"] == approved_on.isoformat()  # the document gave none
    assert (
        record["noise_seed"] == hashlib.sha256(b"medledger/study-noise\x00" + record["tx"]).digest()
    )
    assert _approve(w, "h2/dpo-c").code == Code.CONFLICT  # already running


def test_the_privacy_budget_is_spent_when_a_query_starts_and_never_goes_negative() -> None:
    w = _world(budget=1000)
    noisy = QUERY | {"epsilon": "0.6"}
    assert _submit(w, noisy).ok  # q0001
    assert _submit(w, noisy).ok  # q0002: 0.6 is still left when it is submitted
    _run(w, "s1/q0001")
    budget = w.q("research/budget", {"study": "s1"})
    assert (budget["total_milli"], budget["spent_milli"], budget["remaining_milli"]) == (
        1000,
        600,
        400,
    )
    assert budget["queries"] == [{"query": "s1/q0001", "epsilon_milli": 600, "status": "running"}]
    # The second would go negative: its last approval is refused; it stays submitted.
    assert _approve(w, "h1/dpo-b", "ethics", "s1/q0002").ok
    assert _approve(w, "h0/dpo-a", qid="s1/q0002").ok
    refused = _approve(w, "h2/dpo-c", qid="s1/q0002")
    assert refused.code == Code.REFUSED and "privacy budget" in refused.log
    assert w.q("research/query", {"query": "s1/q0002"})["status"] == "submitted"
    # A third is refused at once; a query without noise costs nothing.
    assert _submit(w, noisy).code == Code.REFUSED
    assert _submit(w).ok


def test_masked_answers_cancel_into_the_exact_result() -> None:
    w = _world()
    assert _submit(w).ok
    record = _run(w)
    q = sq.parse(record["doc"])
    held = {  # what each hospital counts (count-once already done by the nodes)
        "h0": [_facts(v) for v in (4000, 5500, 7250, 8000)],
        "h1": [_facts(v) for v in (6000, 6100, 19000)],
        "h2": [],  # holds nobody enrolled: answers zeros
    }
    masks = _masks(3, len(sq.cells(q)), seed=7)
    for (org, patients), mask in zip(held.items(), masks, strict=True):
        plain = sq.tally(q, patients)
        masked = [(p + m) % MOD for p, m in zip(plain, mask, strict=True)]
        assert masked != plain or not patients
        result = _answer(w, org, masked, len(patients))
        assert result.ok, result
    done = w.q("research/query", {"query": "s1/q0001"})
    assert done["status"] == "done"
    values = [4000, 5500, 7250, 8000, 6000, 6100, 19000]
    (row,) = done["result"]["strata"]
    assert row["count"] == 7
    assert row["mean"] == f"{sum(values) / 7 / 1000:.3f}"
    assert done["result"] == sq.finish(q, sq.tally(q, [_facts(v) for v in values]), 5)
    assert {o: a["patients"] for o, a in done["answers"].items()} == {"h0": 4, "h1": 3, "h2": 0}
    # The running sum is gone; the result is bounded by the query's cells.
    assert w.state.get("research/qsum/s1/q0001") is None


def test_answers_from_a_non_answerer_twice_or_malformed_are_refused() -> None:
    w = _world()
    assert _submit(w).ok
    n = len(sq.cells(sq.parse(QUERY)))
    zeros = [0] * n
    assert _answer(w, "h0", zeros, 0).code == Code.CONFLICT  # not running yet
    _run(w)
    assert _answer(w, "h0/dr-a", zeros, 0).code == Code.UNAUTHORIZED  # a practitioner's key
    stranger = SigningKey(b"\x42" * 32)
    assert _answer(w, stranger, zeros, 0).code == Code.UNAUTHORIZED
    assert _answer(w, "h0", zeros[:-1], 0).code == Code.INVALID_BODY
    assert _answer(w, "h0", [-1] + zeros[1:], 0).code == Code.INVALID_BODY
    noise = _answer(w, "h0", zeros, 0, noise_commitment=b"\x01" * 32)
    assert noise.code == Code.INVALID_BODY  # a query without epsilon has no noise
    # An answer is its cells and counts: nothing naming a patient or a record rides along.
    for field, value in (("pids", ["ab" * 32]), ("rids", ["r-1"]), ("rows", [[1, 2]])):
        extra = _answer(w, "h0", zeros, 0, **{field: value})
        assert extra.code == Code.INVALID_BODY and field in extra.log, (field, extra)
    assert _answer(w, "h0", zeros, 0).ok
    assert _answer(w, "h0", zeros, 0).code == Code.CONFLICT  # once
    # A member admitted after the query started is no answerer of it.
    newcomer = SigningKey(b"\x43" * 32)
    w.vote_policy("admit_member", {"org": "h3", "name": "H3", "key": newcomer.public_key})
    late = _answer(w, newcomer, zeros, 0)
    assert late.code == Code.UNAUTHORIZED and "not an answerer" in late.log


def test_a_noised_query_needs_each_answerers_noise_commitment() -> None:
    w = _world()
    assert _submit(w, QUERY | {"epsilon": "0.5"}).ok
    record = _run(w)
    q = sq.parse(record["doc"])
    n = len(sq.cells(q))
    assert _answer(w, "h0", [0] * n, 0).code == Code.INVALID_BODY  # no commitment
    masks = _masks(3, n, seed=11)
    added = 0
    for org, mask in zip(("h0", "h1", "h2"), masks, strict=True):
        # The node signs noise_message with its organisation key; a stand-in signature here.
        signature = hashlib.sha512(
            sq.noise_message(record["id"], record["noise_seed"]) + org.encode()
        )
        seed = sq.answer_noise_seed(signature.digest())
        plain = sq.tally(q, [_facts(5000 + i) for i in range(40)] if org == "h0" else [])
        noise = sq.answer_noise(q, seed)
        added += noise[0]  # all/patients
        noised = [p + e for p, e in zip(plain, noise, strict=True)]
        cells = [(x + m) % MOD for x, m in zip(noised, mask, strict=True)]
        commitment = sq.noise_commitment(seed)
        assert _answer(w, org, cells, len(plain), noise_commitment=commitment).ok
    done = w.q("research/query", {"query": "s1/q0001"})
    assert done["result"]["noise"].startswith("discrete-laplace")
    (row,) = done["result"]["strata"]
    # The three answerers' noise, no more, no less (scale 2 / 0.5 = 4 each), clamped at 0.
    assert added != 0 and row["count"] == max(40 + added, 0)
    assert [a["noise_commitment"] for a in done["answers"].values()] != [b""] * 3


def test_past_the_deadline_the_query_is_incomplete_and_names_the_missing() -> None:
    w = _world()
    assert _submit(w).ok
    record = _run(w)
    zeros = [0] * len(sq.cells(sq.parse(QUERY)))
    assert _answer(w, "h1", zeros, 0).ok
    w.block(at=record["deadline_ms"])
    late = w.q("research/query", {"query": "s1/q0001"})
    assert late["status"] == "incomplete" and late["missing"] == ["h0", "h2"]
    assert "result" not in late and w.state.get("research/qsum/s1/q0001") is None
    assert _answer(w, "h0", zeros, 0).code == Code.CONFLICT


def test_the_largest_result_stays_bounded() -> None:
    w = _world()
    doc = {
        "categories": ["labs", "conditions"],
        "cohort": {"types": ["Observation"], "value": {"min": 0, "max": 1000, "unit": "mg/dL"}},
        "statistics": [
            {"kind": "count"},
            {"kind": "mean"},
            {"kind": "stddev"},
            {"kind": "quantiles", "q": [f"0.{i}" for i in range(1, 10)]},
            {"kind": "histogram", "edges": [i * 32 for i in range(31)] + [1000]},
            {
                "kind": "table2x2",
                "rows": {"types": ["Condition"]},
                "columns": {"types": ["Condition"]},
            },
        ],
        "stratify": ["sex", "age_band"],
        "age_bands": list(range(0, 130, 10)),
        "age_on": "2026-01-01",
    }
    assert _submit(w, doc).ok
    record = _run(w)
    q = sq.parse(record["doc"])
    n = len(sq.cells(q))
    big = [1000] * n  # every cell over k: everything published
    for org, mask in zip(("h0", "h1", "h2"), _masks(3, n, seed=3), strict=True):
        plain = big if org == "h0" else [0] * n
        assert _answer(w, org, [(p + m) % MOD for p, m in zip(plain, mask, strict=True)], 0).ok
    done = w.q("research/query", {"query": "s1/q0001"})
    assert done["status"] == "done" and len(done["result"]["strata"]) == 4 * 12
    assert len(codec.encode(done)) < 64 * 1024


def test_governance_bounds_the_study_parameters() -> None:
    w = World()
    for name, value in [
        ("study_min_cell", 1),
        ("study_dpo_approval", 2),
        ("study_answer_ttl_ms", 0),
    ]:
        refused = w.send(
            "h0",
            "governance.propose",
            {"action": "set_param", "args": {"name": name, "value": value}},
        )
        assert refused.code == Code.INVALID_BODY and name in refused.log


def test_without_custodian_approvals_the_sponsors_ethics_approval_starts_it() -> None:
    w = _world()
    w.vote_policy("set_param", {"name": "study_dpo_approval", "value": 0})
    assert _submit(w).ok
    assert _approve(w, "h0/dpo-a").code == Code.CONFLICT  # not asked
    assert _approve(w, "h1/dpo-b", "ethics").ok
    assert w.q("research/query", {"query": "s1/q0001"})["status"] == "running"


def test_a_v1_chain_is_unchanged_until_it_votes_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = default_versions()
    monkeypatch.setattr(ledger, "default_versions", lambda: {**versions, "research": 1})
    w = World()
    w.study("s1", categories=["labs"])
    assert _submit(w).code == Code.UNKNOWN_KIND
    budget = w.send(
        "h1/res-b",
        "research.register",
        {
            "study": "s2",
            "protocol_hash": DECISION,
            "ethics_ref": ETHICS_REF,
            "categories": ["labs"],
            "min_cohort": 2,
            "privacy_budget_milli": 1000,
        },
    )
    assert budget.code == Code.INVALID_BODY  # v1 knows no budget
    w.vote_policy("activate_contract", {"name": "research", "version": 2})
    assert _submit(w).ok  # a v1 study: no budget, so queries without noise only
    assert _submit(w, QUERY | {"epsilon": "0.1"}).code == Code.REFUSED


def test_a_revoked_researcher_or_dpo_can_neither_submit_nor_approve() -> None:
    w = _world()
    w.ok("h1", "identity.revoke", {"practitioner": "res-b"})
    refused = _submit(w)  # h1/res-b, the sponsor's researcher, now revoked
    assert refused.code == Code.UNAUTHORIZED and "not an active" in refused.log
    assert _submit(w, who="h1/res-dpo").ok
    w.ok("h2", "identity.revoke", {"practitioner": "dpo-c"})
    assert _approve(w, "h2/dpo-c").code == Code.UNAUTHORIZED  # its DPO, revoked
    assert w.q("research/query", {"query": "s1/q0001"})["approvals"] == []
