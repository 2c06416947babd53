"""Review of session 8's study queries (issue 18): a study registers its minimum cohort ("a
small cohort re-identifies people", research.py); its dataset releases are refused under it,
but its queries published any stratum of `study_min_cell` (5) patients or more."""

from __future__ import annotations

from medledger.contracts import study_query as sq
from medledger.contracts.study_query import PatientFacts
from tests.contracts.test_study_queries import MOD, QUERY, _masks, _run, _world


def test_a_querys_cells_obey_the_studys_own_minimum_cohort() -> None:
    w = _world()
    w.study("s9", categories=["labs"], min_cohort=20, privacy_budget_milli=1000)
    doc = sq.to_obj(sq.parse(QUERY))
    assert w.send("h1/res-b", "research.query_submit", {"study": "s9", "query": doc}).ok
    record = _run(w, "s9/q0001")
    assert record["k"] == 20
    q = sq.parse(record["doc"])
    twelve = [
        PatientFacts(sex="female", matched={"cohort": True}, value=("2025-01-01", 6000 + i))
        for i in range(12)
    ]
    held = {"h0": twelve, "h1": [], "h2": []}
    for (org, patients), mask in zip(held.items(), _masks(3, len(sq.cells(q)), 9), strict=True):
        cells = [(p + m) % MOD for p, m in zip(sq.tally(q, patients), mask, strict=True)]
        body = {"query": "s9/q0001", "cells": cells, "patients": len(patients)}
        assert w.send(org, "research.query_answer", body).ok
    (row,) = w.q("research/query", {"query": "s9/q0001"})["result"]["strata"]
    assert row["count"] is None and row["mean"] is None  # 12 is under the study's 20
