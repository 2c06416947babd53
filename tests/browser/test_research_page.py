"""The researcher's page in Chromium: a result's chart and tables, accessible (axe-core)."""

from __future__ import annotations

from typing import Any

import pytest

from ..api.conftest import Api
from ..api.test_research_page import QUERY, research  # noqa: F401  (a study with a done query)
from .test_demo_pages import accessible, page, sign_in  # noqa: F401


def test_a_query_result_page_is_accessible_and_draws_suppressed_bars_hatched(
    research: Api,  # noqa: F811
    served: tuple[Api, str],
    page: Any,  # noqa: F811
    shot: Any,
) -> None:
    api, url = served
    base = url.removesuffix("/fhir")
    token = api.token("Practitioner/res-lyon", "user/*.rs")["Authorization"].split()[1]
    sign_in(page, f"{base}/research", token)
    page.wait_for_selector("text=Glycaemic control")
    accessible(page)
    page.click(f"text={QUERY}")
    page.wait_for_selector("svg[role=img]")
    accessible(page)
    assert page.locator("svg[role=img]").count() == 4  # one histogram per stratum (sex)
    assert page.locator("rect.suppressed").count() == 6  # two bins of each small stratum
    assert page.locator("td:has-text('suppressed')").count() >= 1
    shot(page, "result")


def test_a_noised_result_page_sets_its_clamped_figure_apart_and_stays_accessible(
    research: Api,  # noqa: F811
    served: tuple[Api, str],
    page: Any,  # noqa: F811
    shot: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medledger.contracts import queries
    from medledger.contracts import study_query as sq

    from ..api.test_research_page import _record
    from ..interop.test_study_results import NOISED, _noised_run

    _, result = _noised_run(0)  # the men's stddev clamped to 0, nothing else
    q = sq.parse(NOISED)
    record = _record() | {"doc": sq.to_obj(q), "hash": sq.query_hash(q), "result": result}
    monkeypatch.setattr(queries, "study_query", lambda engine, query: record)
    api, url = served
    token = api.token("Practitioner/res-lyon", "user/*.rs")["Authorization"].split()[1]
    sign_in(page, f"{url.removesuffix('/fhir')}/research/query?id={QUERY}", token)
    page.wait_for_selector("#clamped")
    assert "1 figure clamped (sex=male stddev)" in page.inner_text("#clamped")
    (cell,) = page.locator("td.clamped").all()
    assert cell.inner_text() == "0.000 (clamped)"
    accessible(page)
    shot(page, "result-clamped")
