"""Review of session 8's study queries (issue 18): a study closed while one of its queries
runs. The patients enrolled for the study; once it is closed (by its sponsor, or its end
date passed) their enrolment covers no more reads, yet hospitals went on evaluating, sending
partial facts and answering until the query's deadline (up to 30 days later)."""

from __future__ import annotations

import time

from medledger.contracts import study_query as sq
from medledger.ledger.errors import Code
from medledger.node.study_partials import PartialsRefused, check
from tests.contracts.test_study_queries import QUERY, _answer, _run, _submit, _world


def test_no_answer_and_no_partials_once_the_study_is_closed() -> None:
    w = _world()
    assert _submit(w).ok
    record = _run(w)
    n = len(sq.cells(sq.parse(QUERY)))
    assert _answer(w, "h0", [0] * n, 0).ok
    w.ok("h1/res-b", "research.close", {"study": "s1"})
    refused = _answer(w, "h1", [0] * n, 0)
    assert refused.code == Code.REFUSED and "closed" in refused.log
    # A co-custodian's partials for it are refused too: nothing derived travels any more.
    now = int(time.time() * 1000)
    running = {**record, "deadline_ms": now + 60_000}
    try:
        check(w.state, running, "h0", "h1", {"query": record["id"], "patients": []}, now)
        accepted = True
    except PartialsRefused as exc:
        assert exc.status == 409 and "closed" in exc.reason
        accepted = False
    assert not accepted
