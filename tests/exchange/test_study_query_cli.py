"""A federated query as its users run it: `medledger study query submit|approve|result`, the
hospitals' nodes answering by themselves, the result packaged as an RO-Crate and checked
against the chain, and the researcher's page showing it (four hospitals, solo sandbox)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

from medledger.api.services import HospitalServices
from medledger.contracts import queries
from medledger.web.site import create_app
from tests.api.conftest import Api
from tests.contracts.test_cli_care import run
from tests.exchange.test_study_queries import study  # noqa: F401  (four hospitals, agents)
from tests.support.studies import ORGS, STUDY, A, Study

# As a researcher writes it: JSON numbers with decimals, which the chain takes as text.
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
    "epsilon": 0,
}


def _home(hospitals: Study, org: str) -> str:
    return str(hospitals.nodes[org].config.home)


def test_submit_approve_answer_result_crate_and_page(
    study: Study,  # noqa: F811
    tmp_path: Path,
) -> None:
    study.load(16, seed=3)
    study.register(["labs", "conditions"])
    for label in sorted(study.pid):
        study.enrol(label)
    lyon = _home(study, A)

    # A bad document is refused before anything is signed, naming the field.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**DOCUMENT, "cohort": {"types": ["Observation"], "codez": []}}))
    out = run("study", "query", "submit", "-H", lyon, "--as", f"res-{A}", "--id", STUDY,
              "--file", str(bad), code=1).output  # fmt: skip
    assert "bad.json" in out and "cohort.codez" in out
    assert queries.study_queries(study.engine, STUDY) == []

    doc = tmp_path / "q.json"
    doc.write_text(json.dumps(DOCUMENT))
    out = run("study", "query", "submit", "-H", lyon, "--as", f"res-{A}", "--id", STUDY,
              "--file", str(doc)).output  # fmt: skip
    query_id = f"{STUDY}/q0001"
    assert f"query {query_id} submitted" in out
    decision = tmp_path / "decision.pdf"
    decision.write_bytes(b"the ethics committee's decision, 2026-11-12")
    out = run("study", "query", "approve", "-H", lyon, query_id, "--as-ethics",
              "--decision", str(decision), "--as", f"dpo-{A}").output  # fmt: skip
    assert "approved as ethics" in out and "now submitted" in out
    for org in ORGS[1:]:
        out = run("study", "query", "approve", "-H", _home(study, org), query_id,
                  "--as-custodian", "--as", f"dpo-{org}").output  # fmt: skip
    assert "now running" in out  # the last approval starts it
    record = study.done(query_id)
    assert record["result"]["strata"][0]["count"] is not None
    assert [a["role"] for a in record["approvals"]] == ["ethics"] + ["custodian"] * 3

    shown = run("study", "query", "result", "-H", lyon, query_id).output
    assert "done" in shown and "Contributors" in shown
    for org, answer in record["answers"].items():
        assert re.search(rf"{org}\s+│\s+{answer['patients']} patients", shown)
    as_json = json.loads(run("study", "query", "result", "-H", lyon, query_id, "--json").output)
    assert as_json["hash"] == record["hash"].hex()
    assert as_json["result"] == json.loads(json.dumps(record["result"]))

    # The crate: document, result and tables, every act with its tx and height; it verifies.
    crate = tmp_path / "crate"
    run("study", "query", "result", "-H", lyon, query_id, "--crate", str(crate))
    assert sorted(p.name for p in crate.rglob("*") if p.is_file()) == [
        "histogram.csv", "query.json", "result.json", "ro-crate-metadata.json", "summary.csv",
    ]  # fmt: skip
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    kinds = sorted(
        e["name"] for e in metadata["@graph"] if str(e["@id"]).startswith("urn:medledger:tx:")
    )
    assert kinds == ["research.query_answer"] * 4 + ["research.query_approve"] * 4 + [
        "research.query_submit"
    ]
    out = run("study", "crate", "verify", "-H", _home(study, ORGS[2]), str(crate)).output
    assert "study-query-result of study" in out and "agrees with the chain" in out
    # A result edited after the fact (its file hash updated too) no longer agrees.
    result = json.loads((crate / "result.json").read_text())
    result["strata"][0]["count"] += 1
    (crate / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    for entity in metadata["@graph"]:
        if entity["@id"] == "result.json":
            entity["sha256"] = hashlib.sha256((crate / "result.json").read_bytes()).hexdigest()
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "result.json: not the result the chain holds" in out

    # The researcher's page shows the same, from the chain.
    svc = HospitalServices(study.nodes[A], study.vaults[A])
    with TestClient(create_app(svc)) as client:
        api = Api(client, svc, "", "", [])
        token = api.token(f"Practitioner/res-{A}", "user/*.rs")["Authorization"].split()[1]
        client.post("/login", data={"token": token, "next": "/research"})
        listing = client.get("/research").text
        assert query_id in listing and "4 of 4" in listing
        page = client.get("/research/query", params={"id": query_id}).text
        for org, answer in record["answers"].items():
            assert f"<td>{org}</td><td>{answer['patients']} enrolled patients</td>" in page
        assert 'role="img"' in page
