"""A federated query as its users run it: `medledger study query submit|approve|result`, the
result packaged as an RO-Crate and checked against the chain by another member, and the
researcher's page showing it (four hospitals, solo sandbox).

The hospitals' answers are posted here by each one's organisation key with a plain tally (a
mask is a sum of zeros to the contract); how nodes compute and mask them by themselves is
tested in tests/exchange and tests/research.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medledger.api.services import HospitalServices
from medledger.contracts import queries
from medledger.contracts import study_query as sq
from medledger.interop import study_results
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.provisioning import create_consortium
from medledger.vault import Vault
from medledger.web.site import create_app
from tests.api.conftest import Api
from tests.contracts.test_cli_care import run

ORGS = ("chu-lyon", "aphp-paris", "chu-bordeaux", "chu-lille")
STUDY = "diab-2026"
# As a researcher writes it: numbers with decimals, which the chain takes as decimal text.
DOCUMENT = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": "http://loinc.org", "code": "4548-4"}],
        "value": {"min": 3, "max": 20, "unit": "%"},
    },
    "statistics": [
        {"kind": "count"},
        {"kind": "mean"},
        {"kind": "histogram", "edges": [3, 6.5, 20]},
    ],
    "stratify": ["sex"],
}
# What each hospital counted (women with an HbA1c); the men are too few: suppressed.
WOMEN = {"chu-lyon": [5.4, 6.1, 7.2, 8.0], "aphp-paris": [6.6, 7.7, 5.9], "chu-bordeaux": [9.1]}
MEN = {"chu-lille": [7.5, 6.8]}


@dataclass
class Net:
    homes: dict[str, str]
    nodes: dict[str, Node]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    paths = create_consortium(tmp_path / "net", 4, genesis_time_ms=int(time.time() * 1000))
    root = Node.open(paths[0], serve=True, interval=0.02)
    nodes = {root.config.org: root}
    try:
        for home in paths[1:]:
            sibling = root.sibling(home)
            nodes[sibling.config.org] = sibling
        assert sorted(nodes) == sorted(ORGS)
        for org, node in nodes.items():
            short = org.split("-")[1]
            for name, roles in ((f"dpo-{short}", ["dpo"]), (f"res-{short}", ["researcher"])):
                key = SigningKey.generate()
                key.save(node.config.practitioner_key_path(name))
                node.wallet.send(
                    "identity.register",
                    {"practitioner": name, "key": key.public_key, "roles": roles},
                )
        yield Net({o: str(n.config.home) for o, n in nodes.items()}, nodes)
    finally:
        root.close()


def _facts(sex: str, values: list[float]) -> list[sq.PatientFacts]:
    return [
        sq.PatientFacts(sex, "1970-01-01", {"cohort": True}, ("2026-01-05", round(v * 1000)))
        for v in values
    ]


def _answer_all(net: Net, query_id: str) -> None:
    """Each hospital posts its tally (a zero mask) with its organisation key."""
    record = queries.study_query(net.nodes["chu-lyon"].engine, query_id)
    assert record is not None and record["status"] == "running"
    q = sq.parse(record["doc"]).with_age_on(record["age_on"])
    for org in ORGS:
        facts = _facts("female", WOMEN.get(org, [])) + _facts("male", MEN.get(org, []))
        net.nodes[org].wallet.send(
            "research.query_answer",
            {"query": query_id, "cells": sq.tally(q, facts), "patients": len(facts)},
        )


def test_submit_approve_result_crate_verify_and_page(net: Net, tmp_path: Path) -> None:
    lyon = net.homes["chu-lyon"]
    protocol = tmp_path / "protocol.pdf"
    protocol.write_bytes(b"protocol v1")
    run("study", "register", "-H", lyon, "--as", "res-lyon", "--id", STUDY, "--protocol",
        str(protocol), "--ethics", "CPP-2026-9", "--categories", "labs,conditions",
        "--min-cohort", "2", "--title", "Glycaemic control", "--privacy-budget", "2.5")  # fmt: skip
    registered = queries.study(net.nodes["chu-lyon"].engine, STUDY)
    assert registered is not None and registered["privacy_budget_milli"] == 2500

    # A bad document is refused before anything is signed, naming the file and the field.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**DOCUMENT, "cohort": {"types": ["Observation"], "codez": []}}))
    out = run("study", "query", "submit", "-H", lyon, "--as", "res-lyon", "--id", STUDY,
              "--file", str(bad), code=1).output  # fmt: skip
    assert "bad.json" in out and "cohort.codez" in out and "unknown field" in out
    broken = tmp_path / "broken.json"
    broken.write_text('{"categories": ["labs"],')
    out = run("study", "query", "submit", "-H", lyon, "--as", "res-lyon", "--id", STUDY,
              "--file", str(broken), code=1).output  # fmt: skip
    assert "broken.json: not JSON" in out
    assert queries.study_queries(net.nodes["chu-lyon"].engine, STUDY) == []

    doc = tmp_path / "q.json"
    doc.write_text(json.dumps(DOCUMENT))
    out = run("study", "query", "submit", "-H", lyon, "--as", "res-lyon", "--id", STUDY,
              "--file", str(doc)).output  # fmt: skip
    query_id = f"{STUDY}/q0001"
    assert f"query {query_id} submitted under {STUDY}" in out
    out = run("study", "query", "run", "-H", lyon, query_id, code=1).output
    assert "is submitted, not running" in out
    waiting = run("study", "query", "result", "-H", lyon, query_id).output
    assert "awaiting approval" in waiting and "ethics:chu-lyon" in waiting
    decision = tmp_path / "decision.pdf"
    decision.write_bytes(b"the ethics committee's decision, 2026-11-12")
    out = run("study", "query", "approve", "-H", lyon, query_id, "--as-ethics",
              "--decision", str(decision), "--as", "dpo-lyon").output  # fmt: skip
    assert "approved as ethics by chu-lyon" in out and "now submitted" in out
    out = run("study", "query", "approve", "-H", lyon, query_id, code=1).output
    assert "--as-ethics" in out  # one of the two roles, said before anything is signed
    out = run("study", "query", "approve", "-H", net.homes["aphp-paris"], query_id,
              "--as-custodian", code=1).output  # fmt: skip
    assert "--as names the DPO who approves" in out  # not the organisation key: refused
    for org in ORGS[1:]:
        short = org.split("-")[1]
        out = run("study", "query", "approve", "-H", net.homes[org], query_id,
                  "--as-custodian", "--as", f"dpo-{short}").output  # fmt: skip
    assert "now running" in out  # the last approval starts it
    # `run` answers for this hospital now; here no gateway runs, so its partials cannot reach
    # the others, and it says so instead of posting a half answer.
    out = run("study", "query", "run", "-H", lyon, query_id, "--wait", "1", code=1).output
    assert "partials not delivered to aphp-paris, chu-bordeaux, chu-lille" in out
    _answer_all(net, query_id)
    out = run("study", "query", "run", "-H", lyon, query_id).output
    assert f"chu-lyon answered {query_id} for 4 enrolled patients" in out

    shown = run("study", "query", "result", "-H", lyon, query_id).output
    assert f"query {query_id} of study {STUDY}: done" in shown
    for org, n in (("chu-lyon", 4), ("aphp-paris", 3), ("chu-bordeaux", 1), ("chu-lille", 2)):
        assert re.search(rf"{org}\s+│\s+{n} patients", shown), shown
    assert re.search(r"sex=female\s+│\s+8\s+│\s+7\.000", shown), shown  # count and mean
    assert re.search(r"sex=male\s+│\s+suppressed\s+│\s+suppressed", shown), shown
    record = queries.study_query(net.nodes["chu-lyon"].engine, query_id)
    assert record is not None
    study = run("study", "show", "-H", lyon, "--id", STUDY).output
    assert "privacy budget: epsilon 0 spent of 2.5" in study and f"query {query_id}: done" in study
    as_json = json.loads(run("study", "query", "result", "-H", lyon, query_id, "--json").output)
    assert as_json["hash"] == record["hash"].hex()
    assert as_json["result"] == json.loads(json.dumps(record["result"]))

    # The crate: document, result, tables, and every act with its tx, height and signer.
    crate = tmp_path / "crate"
    run("study", "query", "result", "-H", lyon, query_id, "--crate", str(crate))
    assert sorted(str(p.relative_to(crate)) for p in crate.rglob("*") if p.is_file()) == [
        "query.json",
        "result.json",
        "ro-crate-metadata.json",
        "tables/global.csv",
        "tables/histogram.csv",
        "tables/summary.csv",
    ]
    summary = (crate / "tables" / "summary.csv").read_text().splitlines()
    assert "sex=male,suppressed,suppressed" in summary  # never 0
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in metadata["@graph"]}
    acts = [graph[m["@id"]] for m in graph["./"]["mentions"]]
    assert [a["name"] for a in acts] == ["research.query_submit"] + [
        "research.query_approve"
    ] * 4 + ["research.query_answer"] * 4
    answered = {a["agent"]["@id"].rsplit(":", 1)[1]: a["patientsAnswered"] for a in acts[5:]}
    assert answered == {"aphp-paris": 3, "chu-bordeaux": 1, "chu-lille": 2, "chu-lyon": 4}
    # chu-lille answered last (ORGS order): its tx published the result.
    (publisher,) = [a for a in acts if a.get("result") == {"@id": "result.json"}]
    assert publisher["agent"]["@id"] == "urn:medledger:org:chu-lille"
    assert graph["./"]["queryHash"] == record["hash"].hex()
    out = run("study", "crate", "verify", "-H", net.homes["chu-lille"], str(crate)).output
    assert "study-query-result of study diab-2026 agrees with the chain" in out
    assert "(9 txs, 5 files checked)" in out

    # A result edited afterwards (its hash in the metadata updated too) no longer agrees, and
    # neither does a contributor claiming more patients.
    result = json.loads((crate / "result.json").read_text())
    result["strata"][0]["count"] += 1
    (crate / "result.json").write_text(json.dumps(result))
    graph["result.json"]["sha256"] = hashlib.sha256(
        (crate / "result.json").read_bytes()
    ).hexdigest()
    acts[5]["patientsAnswered"] += 10
    publisher.pop("result")
    acts[5]["result"] = {"@id": "result.json"}
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "result.json: not the result the chain holds" in out
    assert "the answer of aphp-paris: the crate says aphp-paris for 13 patients" in out
    assert "result.json: published by answer tx" in out

    # The researcher's page shows the same, from the chain.
    node = net.nodes["chu-lyon"]
    with Vault.open(node.config.vault_config()) as vault:
        svc = HospitalServices(node, vault)
        with TestClient(create_app(svc)) as client:
            api = Api(client, svc, "", "", [])
            token = api.token("Practitioner/res-lyon", "user/*.rs")["Authorization"].split()[1]
            client.post("/login", data={"token": token, "next": "/research"})
            listing = client.get("/research").text
            assert "Glycaemic control" in listing and query_id in listing
            assert "4 of 4" in listing and "<td>10</td>" in listing
            page = client.get("/research/query", params={"id": query_id}).text
            assert "<td>chu-lille</td><td>2 enrolled patients</td>" in page
            assert 'class="suppressed"' in page and "<td>sex=female</td><td>8</td>" in page


def test_a_noised_result_marks_its_clamped_figures_in_the_cli_and_the_crate(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: with noise, `finish` may clamp a figure to its bound (a stddev at 0); the
    result printed and the crate's tables mark it "(clamped)" and say why, and leave an
    unclamped figure plain. The answers carry the real noise of `answer_noise` (each hospital's
    from its own seed, committed as the contract asks) over 120 patients: the figures of
    tests/interop's run 0, where the men's stddev is clamped and the women's figures are not."""
    from tests.interop.test_study_results import NOISED, _noised_run, noised_facts

    lyon = net.homes["chu-lyon"]
    protocol = tmp_path / "protocol.pdf"
    protocol.write_bytes(b"protocol v1")
    run("study", "register", "-H", lyon, "--as", "res-lyon", "--id", STUDY, "--protocol",
        str(protocol), "--ethics", "CPP-2026-9", "--categories", "labs",
        "--min-cohort", "2", "--title", "Glycaemic control", "--privacy-budget", "1")  # fmt: skip
    doc = tmp_path / "noised.json"
    doc.write_text(json.dumps(NOISED))
    run("study", "query", "submit", "-H", lyon, "--as", "res-lyon", "--id", STUDY,
        "--file", str(doc))  # fmt: skip
    query_id = f"{STUDY}/q0001"
    decision = tmp_path / "decision.pdf"
    decision.write_bytes(b"the ethics committee's decision")
    run("study", "query", "approve", "-H", lyon, query_id, "--as-ethics",
        "--decision", str(decision), "--as", "dpo-lyon")  # fmt: skip
    for org in ORGS[1:]:
        run("study", "query", "approve", "-H", net.homes[org], query_id,
            "--as-custodian", "--as", f"dpo-{org.split('-')[1]}")  # fmt: skip
    record = queries.study_query(net.nodes["chu-lyon"].engine, query_id)
    assert record is not None and record["status"] == "running"
    q = sq.parse(record["doc"]).with_age_on(record["age_on"])
    # The 120 patients of tests/interop's run, spread over the four hospitals; each
    # hospital adds its own noise (the seeds of that run) and commits to its seed.
    facts = noised_facts()
    for i, org in enumerate(ORGS):
        mine = facts[i::4]
        seed = sq.answer_noise_seed(f"answerer {i}, run 0".encode())
        cells = [
            (t + n) % 2**64
            for t, n in zip(sq.tally(q, mine), sq.answer_noise(q, seed), strict=True)
        ]
        net.nodes[org].wallet.send(
            "research.query_answer",
            {"query": query_id, "cells": cells, "patients": len(mine),
             "noise_commitment": sq.noise_commitment(seed)},
        )  # fmt: skip
    record = queries.study_query(net.nodes["chu-lyon"].engine, query_id)
    assert record is not None and record["status"] == "done"
    _, expected = _noised_run(0)
    assert record["result"] == expected  # the same real figures as tests/interop's
    rows = {r["stratum"]: r for r in expected["strata"]}

    shown = run("study", "query", "result", "-H", lyon, query_id).output
    assert "1 figure clamped: noise carried it outside what the data can give" in shown
    men = re.search(r"sex=male\s+│\s+(\d+)\s+│\s+(\S+)\s+│\s+(.*?)\s+│", shown)
    assert men is not None, shown
    assert (men.group(2), men.group(3)) == (rows["sex=male"]["mean"], "0.000 (clamped)")
    women = re.search(r"sex=female\s+│\s+\d+\s+│\s+(\S+)\s+│\s+(.*?)\s+│", shown)
    assert women is not None, shown
    assert (women.group(1), women.group(2)) == (
        rows["sex=female"]["mean"], rows["sex=female"]["stddev"]
    )  # fmt: skip
    assert "Figures clamped" in shown and "variance to 0 or below" in shown

    crate = tmp_path / "crate"
    run("study", "query", "result", "-H", lyon, query_id, "--crate", str(crate))
    summary = (crate / "tables" / "summary.csv").read_text()
    assert "sex=male" in summary and "0.000 (clamped)" in summary
    clamped = (crate / "tables" / "clamped.csv").read_text().splitlines()
    assert clamped[0] == "stratum,figure,shown,why" and clamped[1].startswith("sex=male,stddev,")
    assert len(clamped) == 2
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    root = {e["@id"]: e for e in metadata["@graph"]}["./"]
    assert "1 noised figure clamped" in root["description"]
    out = run("study", "crate", "verify", "-H", net.homes["chu-lille"], str(crate)).output
    assert "agrees with the chain" in out

    # A crate written before clamped figures were marked (session 13) holds them plain and
    # has no clamped.csv: still the chain's result. A table that is neither rendering is not.
    earlier = tmp_path / "earlier"
    plain = functools.partial(study_results.tables, mark_clamped=False)
    monkeypatch.setattr(study_results, "tables", plain)
    run("study", "query", "result", "-H", lyon, query_id, "--crate", str(earlier))
    monkeypatch.undo()
    assert not (earlier / "tables" / "clamped.csv").exists()
    assert "(clamped)" not in (earlier / "tables" / "summary.csv").read_text()
    out = run("study", "crate", "verify", "-H", net.homes["chu-lille"], str(earlier)).output
    assert "agrees with the chain" in out
    mixed = earlier / "tables" / "summary.csv"  # one table marked, the clamped list absent
    mixed.write_text(summary)
    metadata = json.loads((earlier / "ro-crate-metadata.json").read_text())
    for entity in metadata["@graph"]:
        if entity["@id"] == "tables/summary.csv":
            entity["contentSize"] = str(len(summary.encode()))
            entity["sha256"] = hashlib.sha256(summary.encode()).hexdigest()
    (earlier / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    out = run("study", "crate", "verify", "-H", net.homes["chu-lille"], str(earlier), code=1)
    assert "tables/clamped.csv: missing" in out.output
