"""Reading what documents bring: the hospital's supporting resources (a Practitioner...) and
the document Bundle itself, served whole only to who may see every entry of it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.api.conftest import Api
from tests.support.documents import INS, INS_SYSTEM, ips, send

DOCTOR = "Practitioner/dr-martin"


def _document(api: Api) -> tuple[dict[str, Any], dict[str, str]]:
    """Ingest an IPS; (the document as sent, rid of each stored type)."""
    doc = ips("a", [(INS_SYSTEM, INS)])
    result = send(api.services.ingestor, doc, "ips-a.json")
    assert result.rejections == [], result.rejections
    vault = api.services.vault
    rids = {vault.info(r).resource_type: r for r in result.rids}
    return doc, rids


def test_a_supporting_resource_is_read_under_its_type_scope(api: Api) -> None:
    _, rids = _document(api)
    path = f"/fhir/Practitioner/{rids['Practitioner']}"

    ok = api.client.get(path, headers=api.token(DOCTOR, "user/Practitioner.rs"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["name"][0]["family"] == "Ardent"
    assert ok.json()["id"] == rids["Practitioner"]

    other = api.client.get(path, headers=api.token(DOCTOR, "user/Observation.rs"))
    assert other.status_code == 403
    assert other.json()["resourceType"] == "OperationOutcome"
    missing = api.client.get(
        "/fhir/Practitioner/no-such-id", headers=api.token(DOCTOR, "user/*.rs")
    )
    assert missing.status_code == 404


def test_the_document_is_served_as_it_came(api: Api) -> None:
    doc, rids = _document(api)
    headers = api.token(DOCTOR, "user/*.rs")

    r = api.client.get(f"/fhir/Bundle/{rids['Bundle']}", headers=headers)

    assert r.status_code == 200, r.text
    assert orjson.loads(r.content) == doc


def test_the_document_is_refused_to_who_may_not_see_one_of_its_entries(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allowed `documents` but not `allergies` (say, a consent that leaves allergies out):
    its Condition is readable, the document whole is not."""
    _, rids = _document(api)
    decide = api.services.decide

    def without_allergies(claims: Any, pid: str, meta: dict[str, Any], purpose: str) -> Any:
        from medledger.contracts.authorize import Decision

        if meta["category"] == "allergies":
            return Decision(False, "", "no consent covers allergies")
        return decide(claims, pid, meta, purpose)

    monkeypatch.setattr(api.services, "decide", without_allergies)
    headers = api.token(DOCTOR, "user/*.rs")

    whole = api.client.get(f"/fhir/Bundle/{rids['Bundle']}", headers=headers)
    part = api.client.get(f"/fhir/Condition/{rids['Condition']}", headers=headers)

    assert whole.status_code == 403
    assert "holds allergies records" in whole.json()["issue"][0]["diagnostics"]
    assert part.status_code == 200
