"""`/health`, `/metrics`, and the 503 every other path answers while the node cannot serve
(its CometBFT gone): an OperationOutcome on the API, an HTML page on the pages' paths."""

from __future__ import annotations

from html import unescape

import pytest
from fastapi.testclient import TestClient

from medledger.node.health import Status
from medledger.web.auth import COOKIE
from medledger.web.site import create_app
from tests.support.exposition import parse

from .conftest import Api

GONE = "this node's CometBFT (http://127.0.0.1:1) does not answer (RpcUnavailable)"


def _down(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's probe finds its CometBFT gone (the real one is tested on real processes)."""
    probe = api.services.node.health
    height = api.services.node.engine.height()
    monkeypatch.setattr(probe, "ttl", 0.0)
    monkeypatch.setattr(probe, "_look", lambda: Status("cometbft", height, GONE, (GONE,)))


def _loopback(api: Api) -> TestClient:
    return TestClient(create_app(api.services), client=("127.0.0.1", 50000))


def test_health_says_ok_with_the_figures_the_explorer_reads(api: Api) -> None:
    r = api.client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["reasons"] == []
    assert body["org"] == "chu-lyon" and body["engine"] == "solo"
    assert body["height"] == api.services.node.engine.height() > 0
    assert len(body["app_hash"]) == 64


def test_metrics_are_prometheus_text_for_a_loopback_client(api: Api) -> None:
    with _loopback(api) as client:
        r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    series, types = parse(r.text)
    labels = (("org", "chu-lyon"),)
    assert series[("medledger_up", labels)] == 1
    assert series[("medledger_height", labels)] == api.services.node.engine.height()
    assert series[("medledger_audit_backlog_entries", labels)] >= 0
    assert set(types.values()) == {"gauge"}
    # The solo engine has no CometBFT: no peer, mempool or sync figure is made up.
    assert "medledger_peers" not in types and "medledger_sync_lag_blocks" not in types


def test_metrics_elsewhere_than_loopback_need_the_token(api: Api) -> None:
    refused = api.client.get("/metrics")  # the test client is not on loopback
    assert refused.status_code == 403 and "metrics.token" in refused.text
    token_file = api.services.node.config.home / "metrics.token"
    token_file.write_text("s3cret-scraper-token\n")
    token_file.chmod(0o600)
    wrong = api.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    ok = api.client.get("/metrics", headers={"Authorization": "Bearer s3cret-scraper-token"})
    assert ok.status_code == 200 and parse(ok.text)[0]


def test_while_cometbft_is_gone_every_path_answers_503_with_the_reason(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _down(api, monkeypatch)
    staff = api.token("Practitioner/dr-martin", "user/*.cruds")
    read = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=staff)
    assert read.status_code == 503 and read.headers["retry-after"] == "5"
    issue = read.json()["issue"][0]
    assert (issue["code"], issue["diagnostics"]) == ("transient", GONE)
    write = api.client.post("/fhir/Patient", content=b"{}", headers=staff)
    assert write.status_code == 503  # refused before the body is even looked at
    for page in ("/", "/explorer", "/portal"):
        r = api.client.get(page)
        assert r.status_code == 503, page
        assert r.headers["content-type"].startswith("text/html") and GONE in unescape(r.text)
    french = api.client.get("/explorer", headers={"Accept-Language": "fr"})
    assert "Service indisponible" in french.text
    health = api.client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and health.json()["reasons"] == [GONE]
    with _loopback(api) as client:
        series, _ = parse(client.get("/metrics").text)
    assert series[("medledger_up", (("org", "chu-lyon"),))] == 0


def test_a_page_refused_503_for_another_reason_is_a_page_too(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medledger.node.audit import JournalUnavailable

    def unavailable(*args: object, **kwargs: object) -> None:
        raise JournalUnavailable("the journal's disk is full")

    monkeypatch.setattr(api.services.node.audit, "begin", unavailable)  # `log` goes through it
    staff = api.token("Practitioner/dr-martin", "user/*.cruds")
    api_read = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=staff)
    assert api_read.status_code == 503 and api_read.json()["resourceType"] == "OperationOutcome"
    api.client.cookies.set(COOKIE, staff["Authorization"].split()[1])
    page = api.client.get(f"/clinician?patient={api.pid}")
    assert page.status_code == 503, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "disk is full" in page.text
