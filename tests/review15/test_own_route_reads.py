"""review15, on outside15's reads with `_elements`/`_summary`: `GET /fhir/[type]/[id]` applies
them (or refuses, naming the parameter), "never a whole resource that looks like what was
asked". The reads with a route of their own (Consent: the consent contract's; ResearchStudy:
the research contract's) still ignored every parameter: `?_elements=status` served the
whole consent, untagged, and `?flavour=sweet` passed unremarked. They read as the others."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api, consent, post_consent

SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")


def _tags(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["system"], t["code"]) for t in resource.get("meta", {}).get("tag", [])]


def test_a_consents_read_applies_elements_and_refuses_what_it_would_not_apply(api: Api) -> None:
    ehr = api.token("Practitioner/dr-martin", "patient/Consent.cr launch", patient=api.pid)
    created = post_consent(api, ehr, consent(api.pid, "aphp-paris"))
    assert created.status_code == 201, created.text
    path = f"/fhir/Consent/{created.json()['id']}"
    whole = api.client.get(path, headers=ehr).json()
    assert "provision" in whole and SUBSETTED not in _tags(whole)

    slim = api.client.get(f"{path}?_elements=status", headers=ehr)
    assert slim.status_code == 200
    assert slim.json()["status"] == whole["status"] and "provision" not in slim.json()
    assert SUBSETTED in _tags(slim.json())

    refused = api.client.get(f"{path}?flavour=sweet", headers=ehr)
    assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == ["flavour"]


def test_a_studys_read_refuses_a_parameter_it_would_not_apply(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    refused = api.client.get("/fhir/ResearchStudy/s-none?_count=1", headers=headers)
    assert refused.status_code == 400, refused.text
    assert refused.json()["issue"][0]["expression"] == ["_count"]
    missing = api.client.get("/fhir/ResearchStudy/s-none?_elements=status", headers=headers)
    assert missing.status_code == 404
