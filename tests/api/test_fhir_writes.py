"""FHIR interactions as the R4 spec has them: create, conditional create, update, vread,
history; every error an OperationOutcome; a CapabilityStatement that says exactly what works."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from medledger.api.interactions import INTERACTIONS

from .conftest import Api

INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"


def _staff(api: Api) -> dict[str, str]:
    return api.token("Practitioner/dr-martin", "user/*.cruds")


def _patient(api: Api) -> dict[str, Any]:
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=_staff(api))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def _ins(patient: dict[str, Any]) -> str:
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == INS_SYSTEM))


def _patients_of(api: Api, pid: str) -> list[str]:
    return sorted(
        {i.rid for i in api.services.vault.records_of(pid) if i.resource_type == "Patient"}
    )


def _new_patient(ins: str = "279035121518989", family: str = "MOREAU") -> dict[str, Any]:
    """A Patient as another system sends it: its own id, a local identifier, an INS."""
    return {
        "resourceType": "Patient",
        "id": "emr-88412",
        "identifier": [
            {"system": INS_SYSTEM, "value": ins},
            {"system": "urn:oid:1.2.250.1.71.4.2.7", "value": "88412"},
        ],
        "name": [{"family": family, "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1979-03-12",
    }


# -- errors --------------------------------------------------------------------------------


def test_an_unknown_route_and_a_wrong_method_answer_an_operation_outcome(api: Api) -> None:
    headers = _staff(api)
    for path in ("/fhir/Patient/x/y/z", "/fhir/Patient/x/$nothing", "/fhirx"):
        r = api.client.get(path, headers=headers)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["resourceType"] == "OperationOutcome" and "detail" not in r.json()
    r = api.client.delete(f"/fhir/Patient/{api.patient_rid}", headers=headers)
    assert r.status_code == 405 and r.json()["issue"][0]["code"] == "not-supported"
    assert "GET" in r.headers["allow"]
    r = api.client.get("/fhir/Basic/1", headers=headers)  # a type not served here
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-supported"
    r = api.client.put("/fhir/Consent/medledger-consent-1", content=b"{}", headers=headers)
    assert r.status_code == 405 and "update is not offered on Consent" in r.text


def test_a_body_not_declared_as_fhir_json_is_415(api: Api) -> None:
    headers = _staff(api) | {"Content-Type": "application/xml"}
    r = api.client.post("/fhir/Patient", content=b"<Patient/>", headers=headers)
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"


def test_a_patient_posted_to_observation_is_refused_and_creates_nothing(api: Api) -> None:
    before = _patients_of(api, api.pid)
    body = _patient(api) | {"id": "x"}
    r = api.client.post("/fhir/Observation", content=orjson.dumps(body), headers=_staff(api))
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["resourceType"]
    assert _patients_of(api, api.pid) == before


def test_no_token_is_401_with_www_authenticate(api: Api) -> None:
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_a_record_of_an_erased_patient_is_gone(api: Api) -> None:
    api.services.vault.erase(api.pid)
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=_staff(api))
    assert r.status_code == 410 and r.json()["issue"][0]["code"] == "deleted"


# -- create, read, vread -----------------------------------------------------------------------


def test_create_answers_a_location_that_reads_back_with_its_version(api: Api) -> None:
    headers = _staff(api)
    r = api.client.post("/fhir/Patient", content=orjson.dumps(_new_patient()), headers=headers)
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == 'W/"1"' and r.json()["meta"]["versionId"] == "1"
    location = r.headers["location"]
    assert location.endswith("/_history/1")
    again = api.client.get(location.removeprefix("http://testserver"), headers=headers)
    assert again.status_code == 200 and again.json()["name"][0]["family"] == "MOREAU"
    assert again.json()["meta"]["lastUpdated"].endswith("Z")
    rid = location.split("/Patient/")[1].split("/")[0]
    read = api.client.get(f"/fhir/Patient/{rid}", headers=headers)
    assert read.headers["etag"] == 'W/"1"' and "last-modified" in read.headers


def test_a_version_that_does_not_exist_is_404(api: Api) -> None:
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history/7", headers=_staff(api))
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history/x", headers=_staff(api))
    assert r.status_code == 404


# -- conditional create ----------------------------------------------------------------------


def test_conditional_create_answers_the_one_existing_patient(api: Api) -> None:
    headers = _staff(api)
    patient = _patient(api)
    criteria = f"identifier={INS_SYSTEM}|{_ins(patient)}"
    body = _new_patient(_ins(patient), family=patient["name"][0]["family"])
    r = api.client.post(
        "/fhir/Patient", content=orjson.dumps(body), headers=headers | {"If-None-Exist": criteria}
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == api.patient_rid
    assert r.headers["location"].split("/Patient/")[1].startswith(api.patient_rid)
    assert _patients_of(api, api.pid) == [api.patient_rid]


def test_conditional_create_creates_when_nothing_matches(api: Api) -> None:
    headers = _staff(api) | {"If-None-Exist": f"identifier={INS_SYSTEM}|279035121518989"}
    r = api.client.post("/fhir/Patient", content=orjson.dumps(_new_patient()), headers=headers)
    assert r.status_code == 201, r.text
    again = api.client.post("/fhir/Patient", content=orjson.dumps(_new_patient()), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]


def test_conditional_create_with_several_matches_is_412(api: Api) -> None:
    patient = _patient(api)
    # A hospital holding two records of one person (say, from before it matched patients).
    api.services.vault.put(
        api.pid,
        "legacy-duplicate",
        1,
        orjson.dumps(patient | {"id": "legacy-duplicate"}),
        resource_type="Patient",
        custodian=api.services.org,
    )
    criteria = f"identifier={INS_SYSTEM}|{_ins(patient)}"
    r = api.client.post(
        "/fhir/Patient",
        content=orjson.dumps(_new_patient(_ins(patient))),
        headers=_staff(api) | {"If-None-Exist": criteria},
    )
    assert r.status_code == 412 and "2 Patient resources match" in r.text


def test_conditional_create_refuses_criteria_it_cannot_apply(api: Api) -> None:
    r = api.client.post(
        "/fhir/Patient",
        content=orjson.dumps(_new_patient()),
        headers=_staff(api) | {"If-None-Exist": "name=MOREAU"},
    )
    assert r.status_code == 400 and "'name' is not supported" in r.text


# -- update, history -------------------------------------------------------------------------


def test_update_makes_a_new_version_and_history_lists_both(api: Api) -> None:
    headers = _staff(api)
    patient = _patient(api)
    changed = patient | {"telecom": [{"system": "phone", "value": "04 72 00 00 00"}]}
    r = api.client.put(
        f"/fhir/Patient/{api.patient_rid}",
        content=orjson.dumps(changed),
        headers=headers | {"If-Match": 'W/"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"' and r.json()["meta"]["versionId"] == "2"
    assert r.headers["location"].endswith(f"/Patient/{api.patient_rid}/_history/2")
    one = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history/1", headers=headers)
    two = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history/2", headers=headers)
    assert one.json()["telecom"] != two.json()["telecom"] == changed["telecom"]
    history = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history", headers=headers)
    bundle = history.json()
    assert bundle["type"] == "history" and bundle["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST"]
    stale = api.client.put(
        f"/fhir/Patient/{api.patient_rid}",
        content=orjson.dumps(changed),
        headers=headers | {"If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412


def test_update_with_another_id_in_the_body_is_400(api: Api) -> None:
    body = _patient(api) | {"id": "someone-else"}
    r = api.client.put(
        f"/fhir/Patient/{api.patient_rid}", content=orjson.dumps(body), headers=_staff(api)
    )
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["id"]


def test_update_never_moves_a_record_to_another_patient(api: Api) -> None:
    body = _new_patient() | {"id": api.patient_rid}
    r = api.client.put(
        f"/fhir/Patient/{api.patient_rid}", content=orjson.dumps(body), headers=_staff(api)
    )
    assert r.status_code == 400 and "another patient" in r.text
    assert api.services.vault.versions(api.patient_rid) == [1]


def test_history_refuses_parameters_it_would_ignore(api: Api) -> None:
    r = api.client.get(
        f"/fhir/Patient/{api.patient_rid}/_history?_since=2020-01-01", headers=_staff(api)
    )
    assert r.status_code == 400 and "_since" in r.text


def test_history_and_vread_are_decided_like_a_read(api: Api) -> None:
    stranger = api.token("Practitioner/nobody", "user/*.rs")
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history", headers=stranger)
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/_history/1", headers=stranger)
    assert r.status_code == 403


# -- the CapabilityStatement -----------------------------------------------------------------


def test_the_capability_statement_lists_exactly_the_interactions_of_the_table(api: Api) -> None:
    statement = api.client.get("/fhir/metadata").json()
    listed = {
        r["type"]: {i["code"] for i in r["interaction"]} for r in statement["rest"][0]["resource"]
    }
    assert listed == {t: set(codes) for t, codes in INTERACTIONS.items()}
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {o["name"] for o in patient["operation"]} == {"everything", "summary"}
    assert "delete" not in listed["Patient"] and "update" not in listed["Consent"]


@pytest.mark.parametrize(
    ("method", "path", "offered"),
    [
        ("get", "/fhir/Observation/{rid}/_history/1", True),
        ("get", "/fhir/Observation/{rid}/_history", True),
        ("get", "/fhir/AuditEvent/{rid}", False),
        ("get", "/fhir/AuditEvent/{rid}/_history", False),
        ("post", "/fhir/AuditEvent", False),
    ],
)
def test_what_the_statement_leaves_out_is_refused(
    api: Api, method: str, path: str, offered: bool
) -> None:
    observation = next(r for r in api.rids if api.services.vault.info(r).resource_type != "Patient")
    kind = api.services.vault.info(observation).resource_type
    url = path.format(rid=observation).replace("Observation", kind)
    r = getattr(api.client, method)(url, headers=_staff(api))
    if offered:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
