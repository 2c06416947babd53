"""A third-party client's read with `_elements` or `_summary` (R4 http.html#read: a read takes
them as a search does): the resource comes back as asked, tagged SUBSETTED; a parameter a read
does not apply is a 400 naming it, never the whole resource as if it were what was asked."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.api.conftest import Api

SUBSETTED = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"


def _tags(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["system"], t["code"]) for t in resource.get("meta", {}).get("tag", [])]


def _read(api: Api, path: str) -> httpx.Response:
    response: httpx.Response = api.client.get(
        path, headers=api.token("Practitioner/dr-martin", "user/*.rs")
    )
    return response


def test_a_read_with_elements_serves_only_them_tagged_subsetted(api: Api) -> None:
    whole = _read(api, f"/fhir/Patient/{api.patient_rid}").json()
    assert "name" in whole and "telecom" in whole

    response = _read(api, f"/fhir/Patient/{api.patient_rid}?_elements=gender")
    assert response.status_code == 200
    slim = response.json()
    assert slim["gender"] == whole["gender"] and slim["id"] == api.patient_rid
    assert "name" not in slim and "telecom" not in slim and "identifier" not in slim
    assert (SUBSETTED, "SUBSETTED") in _tags(slim)
    assert response.headers["etag"] == 'W/"1"'


def test_a_vread_with_summary_data_drops_the_narrative(api: Api) -> None:
    # FHIR's own example (observation-example.json: body weight), narrative and all
    example = {
        "resourceType": "Observation",
        "id": "example",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Body weight 185 lbs</div>',
        },
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{api.patient_rid}"},
        "effectiveDateTime": "2016-03-28",
        "valueQuantity": {
            "value": 185,
            "unit": "lbs",
            "system": "http://unitsofmeasure.org",
            "code": "[lb_av]",
        },
    }
    created = api.client.post(
        "/fhir/Observation",
        content=orjson.dumps(example),
        headers={
            **api.token("Practitioner/dr-martin", "user/*.cruds"),
            "Content-Type": "application/fhir+json",
        },
    )
    assert created.status_code == 201
    path = f"/fhir/Observation/{created.json()['id']}/_history/1"
    whole = _read(api, path).json()
    assert "text" in whole
    data = _read(api, f"{path}?_summary=data&_format=json").json()
    assert "text" not in data and data["valueQuantity"] == whole["valueQuantity"]
    assert (SUBSETTED, "SUBSETTED") in _tags(data)
    assert _read(api, f"{path}?_summary=false").json() == whole


def test_a_read_refuses_what_it_would_not_apply(api: Api) -> None:
    for query, named in (
        ("_summary=true", "_summary"),
        ("_summary=count", "_summary"),
        ("_summary=text", "_summary"),
        ("flavour=sweet", "flavour"),
        ("_format=xml", "_format"),
    ):
        response = _read(api, f"/fhir/Patient/{api.patient_rid}?{query}")
        assert response.status_code == 400, query
        issue = response.json()["issue"][0]
        assert issue["expression"] == [named] and named in issue["diagnostics"]
