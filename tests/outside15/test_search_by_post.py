"""R4's search by POST (`POST [base]/[type]/_search`, a form body), as clients do to keep a
patient's identifiers (the INS) out of URLs and the logs that keep them: the same search, the
same answers, the same refusals and reports as by GET."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api

INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _ins(api: Api, headers: dict[str, str]) -> str:
    patient = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=headers).json()
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == INS_NIR_TEST))


def _matches(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_a_search_by_post_finds_what_the_same_get_finds(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    ins = _ins(api, headers)

    by_post = api.client.post(
        "/fhir/Patient/_search",
        content=f"identifier={INS_NIR_TEST}|{ins}&_revinclude=Observation:patient".encode(),
        headers={**headers, **FORM},
    )
    assert by_post.status_code == 200
    bundle = by_post.json()
    assert bundle["type"] == "searchset" and _matches(bundle) == [api.patient_rid]
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert len(included) == 20

    form = {"patient": api.patient_rid, "code": "http://loinc.org|718-7", "_count": "3"}
    posted = api.client.post("/fhir/Observation/_search", data=form, headers=headers).json()
    got = api.client.get("/fhir/Observation", params=form, headers=headers).json()
    assert posted["total"] == got["total"] == 4
    assert sorted(_matches(posted)) == sorted(_matches(got))
    assert any(link["relation"] == "next" for link in posted["link"])


def test_a_search_by_post_reports_and_refuses_as_a_get_does(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    form = {"patient": api.patient_rid, "flavour": "sweet"}
    lenient = api.client.post("/fhir/Observation/_search", data=form, headers=headers).json()
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "flavour" in outcome[0]["resource"]["issue"][0]["diagnostics"]

    strict = api.client.post(
        "/fhir/Observation/_search",
        data=form,
        headers={**headers, "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400 and "flavour" in strict.text

    no_patient = api.client.post("/fhir/Observation/_search", data={}, headers=headers)
    assert no_patient.status_code == 400

    as_json = api.client.post(
        "/fhir/Observation/_search",
        content=b'{"patient": "x"}',
        headers={**headers, "Content-Type": "application/fhir+json"},
    )
    assert as_json.status_code == 415 and "x-www-form-urlencoded" in as_json.text

    anonymous = api.client.post("/fhir/Observation/_search", data=form)
    assert anonymous.status_code == 401

    consents = api.client.post("/fhir/Consent/_search", data={}, headers=headers)
    assert consents.status_code == 405 and "by GET" in consents.text, consents.text
