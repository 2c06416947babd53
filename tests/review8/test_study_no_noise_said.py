"""Review of session 8's study queries (issue 18): a result without noise says what its
suppression is worth. Its suppressed figures are left out of the result, not hidden: every
member sums the answers on the chain into every cell, and two results subtract (see
test_study_epsilon_floor.py). "A filter not applied must never look applied": the researcher's
page and `study query result` say so next to the figures."""

from __future__ import annotations

from medledger.contracts import study_query as sq
from medledger.interop import study_results
from tests.api.conftest import Api
from tests.api.test_research_page import DOC, QUERY, _sign_in
from tests.api.test_research_page import research as research  # noqa: F401  (a fixture)


def test_the_page_of_a_result_without_noise_says_its_suppression_hides_nothing(
    research: Api,  # noqa: F811
) -> None:
    _sign_in(research, "Practitioner/res-lyon")
    page = research.client.get("/research/query", params={"id": QUERY})
    assert page.status_code == 200
    assert "every member can sum the answers on the chain into every cell" in page.text


def test_a_noised_result_carries_no_such_caveat() -> None:
    q = sq.parse(DOC | {"epsilon": "1"})
    noised = sq.finish(q, [50] * len(sq.cells(q)), 5)
    assert study_results.caveat(noised) is None
    exact = sq.finish(sq.parse(DOC), [50] * len(sq.cells(q)), 5)
    assert study_results.caveat(exact) == study_results.NO_NOISE
