"""The researcher's page: this hospital's studies, their queries, and a result's tables and
chart, with suppressed figures shown as suppressed, never as 0; for researchers and DPOs only.

The query records here are shaped as `research/query` returns them, with a result computed by
the contract's own `finish`; the end-to-end path (hospitals answering) is in tests/exchange.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from medledger.contracts import queries
from medledger.contracts import study_query as sq
from medledger.ledger.keys import SigningKey
from medledger.node.notes import NoteStore, study_title

from .conftest import Api

STUDY = "s-2026-01"
QUERY = f"{STUDY}/q0001"
DOC = {
    "categories": ["labs"],
    "cohort": {"types": ["Observation"], "value": {"min": 0, "max": 10}},
    "statistics": [{"kind": "count"}, {"kind": "mean"}, {"kind": "histogram", "edges": [0, 5, 10]}],
    "stratify": ["sex"],
}


def _record() -> dict[str, Any]:
    q = sq.parse(DOC)
    women = [
        sq.PatientFacts("female", matched={"cohort": True}, value=("", 2000 + i)) for i in range(6)
    ]
    women += [
        sq.PatientFacts("female", matched={"cohort": True}, value=("", 8000)) for _ in range(5)
    ]
    one_man = [sq.PatientFacts("male", matched={"cohort": True}, value=("", 4000))]
    result = sq.finish(q, sq.tally(q, women + one_man), 5)
    return {
        "id": QUERY,
        "study": STUDY,
        "status": "done",
        "doc": sq.to_obj(q),
        "hash": sq.query_hash(q),
        "tx": b"\x01" * 32,
        "approvals": [
            {"role": "ethics", "org": "chu-lyon", "by": "dpo-lyon", "tx": b"\x02" * 32},
            {"role": "custodian", "org": "aphp-paris", "by": "dpo-paris", "tx": b"\x03" * 32},
        ],
        "answerers": ["aphp-paris", "chu-lyon"],
        "answers": {
            "aphp-paris": {"patients": 5, "tx": b"\x04" * 32},
            "chu-lyon": {"patients": 7, "tx": b"\x05" * 32},
        },
        "deadline_ms": 1_900_000_000_000,
        "result": result,
    }


@pytest.fixture
def research(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    node = api.services.node
    for name, roles in (("res-lyon", ["researcher"]), ("dpo-lyon", ["dpo"])):
        key = SigningKey.generate()
        key.save(node.config.practitioner_key_path(name))
        node.wallet.send(
            "identity.register", {"practitioner": name, "key": key.public_key, "roles": roles}
        )
    title_hash = study_title(NoteStore(node.config.home), STUDY, "Glycaemic control")
    node.wallet.send(
        "research.register",
        {
            "study": STUDY,
            "protocol_hash": hashlib.sha256(b"protocol").digest(),
            "ethics_ref": "CPP-2026-0142",
            "categories": ["labs"],
            "min_cohort": 3,
            "title_hash": title_hash,
        },
    )
    record = _record()
    monkeypatch.setattr(
        queries, "study_queries", lambda engine, study: [record] if study == STUDY else []
    )
    monkeypatch.setattr(
        queries, "study_query", lambda engine, query: record if query == QUERY else None
    )
    return api


def _sign_in(api: Api, subject: str, scope: str = "user/*.rs", patient: str | None = None) -> None:
    token = api.token(subject, scope, patient)["Authorization"].removeprefix("Bearer ")
    assert api.client.post("/login", data={"token": token, "next": "/"}).status_code in (200, 303)


def test_a_researcher_sees_the_studies_and_their_queries(research: Api) -> None:
    _sign_in(research, "Practitioner/res-lyon")
    page = research.client.get("/research")
    assert page.status_code == 200
    assert "Glycaemic control" in page.text  # the sponsor's own title, kept off chain
    assert QUERY in page.text and "done" in page.text
    assert "2 of 2" in page.text and ">12<" in page.text  # contributors, patients answered for


def test_a_result_shows_suppressed_figures_as_suppressed_and_charts_them(research: Api) -> None:
    _sign_in(research, "Practitioner/dpo-lyon")
    page = research.client.get("/research/query", params={"id": QUERY})
    assert page.status_code == 200, page.text
    html = page.text
    # Contributors: what each hospital answered for, from the chain.
    assert "5 enrolled patients" in html and "7 enrolled patients" in html
    # The women's stratum is released; the lone man's is suppressed, never shown as 0.
    assert "<td>sex=female</td><td>11</td>" in html
    male_row = re.search(r"<tr><td>sex=male</td>(.*?)</tr>", html)
    assert male_row is not None and "suppressed" in male_row.group(1)
    assert "<td>0</td>" not in male_row.group(1)
    # The chart: an SVG image with a title and a description listing every bar's value.
    assert 'role="img" aria-labelledby="chart-0-title chart-0-desc"' in html
    desc = re.search(r'<desc id="chart-1-desc">(.*?)</desc>', html)
    assert desc is not None and "[0, 5): suppressed" in desc.group(1)
    assert 'class="suppressed"' in html  # a hatched bar, not a bar of height 0
    female = re.search(r'<desc id="chart-0-desc">(.*?)</desc>', html)
    assert female is not None and "[0, 5): 6; [5, 10]: 5" in female.group(1)
    assert "&#34;categories&#34;" in html or "&quot;categories&quot;" in html  # the document


def test_a_noised_figure_clamped_to_its_bound_is_marked_and_said_an_unclamped_one_is_not(
    research: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real noised result (tests/interop: 120 patients, four answerers' noise): the men's
    stddev was clamped to 0, the women's figures were not."""
    from tests.interop.test_study_results import NOISED, _noised_run

    _, result = _noised_run(0)
    rows = {r["stratum"]: r for r in result["strata"]}
    q = sq.parse(NOISED)
    record = _record() | {"doc": sq.to_obj(q), "hash": sq.query_hash(q), "result": result}
    monkeypatch.setattr(queries, "study_query", lambda engine, query: record)
    _sign_in(research, "Practitioner/res-lyon")
    html = research.client.get("/research/query", params={"id": QUERY}).text
    men = re.search(r"<tr><td>sex=male</td>(.*?)</tr>", html)
    assert men is not None
    assert '<td class="warn clamped"' in men.group(1) and "0.000 <i>(clamped)</i>" in men.group(1)
    assert f"<td>{rows['sex=male']['mean']}</td>" in men.group(1)  # the mean was not clamped
    women = re.search(r"<tr><td>sex=female</td>(.*?)</tr>", html)
    assert women is not None and "clamped" not in women.group(1)
    assert f"<td>{rows['sex=female']['stddev']}</td>" in women.group(1)
    said = re.search(r'<p class="warn" id="clamped">(.*?)</p>', html)
    assert said is not None and "1 figure clamped (sex=male stddev)" in said.group(1)
    assert "<caption>Figures clamped: noise carried them outside" in html
    assert "noise carried the variance to 0 or below" in html
    # The same page of an unnoised result says nothing of clamping.
    monkeypatch.setattr(queries, "study_query", lambda engine, query: _record())
    plain = research.client.get("/research/query", params={"id": QUERY}).text
    assert "clamped" not in plain


def test_only_this_hospitals_researchers_and_dpos_see_the_page(research: Api) -> None:
    anonymous = research.client.get("/research")
    assert anonymous.status_code == 200 and 'name="token"' in anonymous.text  # sign in first
    _sign_in(research, "Practitioner/dr-martin")  # a physician
    refused = research.client.get("/research")
    assert refused.status_code == 401 and "neither a researcher nor a DPO" in refused.text
    _sign_in(research, f"Patient/{research.pid}", "patient/*.rs", research.pid)
    assert research.client.get("/research/query", params={"id": QUERY}).status_code == 401


def test_a_query_of_no_study_of_this_hospital_is_not_found(research: Api) -> None:
    _sign_in(research, "Practitioner/res-lyon")
    missing = research.client.get("/research/query", params={"id": "other/q0001"})
    assert missing.status_code == 404


def test_a_dpo_sees_the_queries_awaiting_its_approval_and_reads_them(
    research: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query of aphp-paris's study waits for chu-lyon's DPO: listed here, readable here;
    a query that neither awaits nor involves chu-lyon stays out of reach."""
    paris = {"id": "p-2026", "sponsor": "aphp-paris", "status": "open", "ethics_ref": "X",
             "categories": ["labs"], "enrolled": 9, "title_hash": b""}  # fmt: skip
    pending = {
        **_record(),
        "id": "p-2026/q0001",
        "study": "p-2026",
        "status": "submitted",
        "approvals": [],
        "answerers": [],
        "answers": {},
        "result": None,
        "awaited": ["ethics:aphp-paris", "custodian:chu-lyon"],
    }
    other = {**pending, "id": "p-2026/q0002", "awaited": ["ethics:aphp-paris"]}
    records = {r["id"]: r for r in (_record(), pending, other)}
    real_studies, real_study = queries.studies, queries.study
    monkeypatch.setattr(queries, "studies", lambda engine: [*real_studies(engine), paris])
    monkeypatch.setattr(
        queries, "study", lambda engine, s: paris if s == "p-2026" else real_study(engine, s)
    )
    monkeypatch.setattr(
        queries, "study_queries", lambda e, s: [r for r in records.values() if r["study"] == s]
    )
    monkeypatch.setattr(queries, "study_query", lambda e, q: records.get(q))
    _sign_in(research, "Practitioner/dpo-lyon")
    page = research.client.get("/research").text
    assert "Awaiting chu-lyon" in page and "p-2026/q0001" in page
    assert "p-2026/q0002" not in page  # awaits only its sponsor
    shown = research.client.get("/research/query", params={"id": "p-2026/q0001"})
    assert shown.status_code == 200 and "custodian:chu-lyon" in shown.text
    assert "Observation" in shown.text  # the document, to read before approving
    hidden = research.client.get("/research/query", params={"id": "p-2026/q0002"})
    assert hidden.status_code == 404
