"""A real FHIR client (fhirpy) against a node's API served by uvicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import uvicorn
from fhirpy import SyncFHIRClient

from medledger.interop.synth import generate
from medledger.web.site import create_app

from .conftest import Api, eventually


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(api: Api) -> Iterator[tuple[Api, str]]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(api.services), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield api, f"http://127.0.0.1:{port}/fhir"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_fhirpy_metadata_create_search_everything_and_audit(served: tuple[Api, str]) -> None:
    api, url = served
    staff = api.token("Practitioner/dr-martin", "user/*.cruds")["Authorization"]
    client = SyncFHIRClient(url, authorization=staff)

    capability = client.execute("metadata", method="get")
    assert capability["resourceType"] == "CapabilityStatement"

    # create: a whole new patient as a transaction Bundle
    bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=21)["chu-lyon"][0]
    response = client.execute("", method="post", data=orjson.loads(orjson.dumps(bundle)))
    assert response["type"] == "transaction-response"
    assert len(response["entry"]) == len(bundle["entry"])
    patient_loc = next(
        e["response"]["location"]
        for e in response["entry"]
        if "/Patient/" in e["response"]["location"]
    )
    patient_id = patient_loc.split("/Patient/")[1].split("/")[0]

    # read and search by patient
    patient = (
        client.resources("Patient").search(_id=patient_id).first()
        if False
        else client.reference("Patient", patient_id).to_resource()
    )
    assert patient["resourceType"] == "Patient"
    observations = client.resources("Observation").search(patient=patient_id).limit(7).fetch()
    assert observations and all(o["resourceType"] == "Observation" for o in observations)
    every = client.resources("Observation").search(patient=patient_id).limit(7).fetch_all()
    expected = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    assert len(every) == expected and len({o["id"] for o in every}) == expected

    # $everything, paged: no resource repeated or missed
    seen: list[str] = []
    page = client.execute(f"Patient/{patient_id}/$everything", method="get", params={"_count": 10})
    while True:
        seen += [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in page["entry"]]
        nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not nxt:
            break
        link = urlsplit(nxt[0])
        params = dict(parse_qsl(link.query))
        page = client.execute(link.path.split("/fhir/", 1)[1], method="get", params=params)
    assert len(seen) == len(set(seen)) == len(bundle["entry"])

    # Consent: created through the consent contract, read back and searched as FHIR
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-11-28T10:00:00Z",
        "provision": {
            "type": "permit",
            "period": {"start": "2026-11-28T10:00:00Z", "end": "2027-11-28T10:00:00Z"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {
                        "identifier": {"system": "urn:medledger:org", "value": "aphp-paris"}
                    },
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
            "class": [{"system": "urn:medledger:category", "code": "labs"}],
        },
    }
    created = client.execute("Consent", method="post", data=consent)
    assert created["resourceType"] == "Consent" and created["status"] == "active"
    found = client.resources("Consent").search(patient=patient_id).fetch_all()
    assert [c["id"] for c in found] == [created["id"]]
    assert client.reference("Consent", created["id"]).to_resource()["status"] == "active"

    # every read above is on the chain, as BALP AuditEvents
    eventually(
        lambda: (
            len(api.services.node.engine.query("access/of_patient", {"pid": _pid(api, patient_id)}))
            >= 3
        )
    )
    audits = client.resources("AuditEvent").search(patient=patient_id).fetch_all()
    assert audits and {a["agent"][0]["who"]["identifier"]["value"] for a in audits} == {
        "practitioner:chu-lyon/dr-martin"
    }


def _pid(api: Api, patient_id: str) -> str:
    return api.services.vault.info(patient_id).pid


INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"


def test_fhirpy_conditional_create_update_vread_history_and_summary(
    served: tuple[Api, str],
) -> None:
    api, url = served
    staff = api.token("Practitioner/dr-martin", "user/*.cruds")["Authorization"]
    client = SyncFHIRClient(url, authorization=staff)
    patient = client.reference("Patient", api.patient_rid).to_resource()
    ins = next(i["value"] for i in patient["identifier"] if i["system"] == INS_SYSTEM)

    # conditional create (fhirpy sends the criteria as the POST's query): the one match
    incoming = client.resource(
        "Patient",
        identifier=[{"system": INS_SYSTEM, "value": ins}],
        name=patient["name"],
        gender=patient["gender"],
        birthDate=patient["birthDate"],
    )
    found, created = (
        client.resources("Patient").search(identifier=f"{INS_SYSTEM}|{ins}").get_or_create(incoming)
    )
    assert not created and found.id == api.patient_rid

    # update: a new version, read back by version and in the history
    patient["telecom"] = [{"system": "email", "value": "p.bernard@example.org"}]
    patient.save()
    assert patient["meta"]["versionId"] == "2"
    first = client.execute(f"Patient/{api.patient_rid}/_history/1", method="get")
    second = client.execute(f"Patient/{api.patient_rid}/_history/2", method="get")
    assert "telecom" not in first or first["telecom"] != second["telecom"]
    assert second["telecom"] == [{"system": "email", "value": "p.bernard@example.org"}]
    history = client.execute(f"Patient/{api.patient_rid}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]

    # $summary: an IPS document whose subject is the updated patient
    document = client.execute(f"Patient/{api.patient_rid}/$summary", method="get")
    assert document["type"] == "document"
    composition = document["entry"][0]["resource"]
    subject = next(
        e["resource"]
        for e in document["entry"]
        if e["fullUrl"] == composition["subject"]["reference"]
    )
    assert subject["telecom"] == second["telecom"]


def test_fhirpy_with_a_token_from_the_token_endpoint(served: tuple[Api, str]) -> None:
    import httpx

    from medledger.api.smart import ASSERTION_TYPE, add_client

    from .test_smart_backend import LabSystem

    api, url = served
    config = httpx.get(f"{url}/.well-known/smart-configuration").json()
    lab = LabSystem()
    add_client(api.services.node.config.home, lab.client_id, lab.jwks(), "system/*.rs")
    answer = httpx.post(
        config["token_endpoint"],
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": lab.assertion(aud=config["token_endpoint"]),
            "scope": "system/Observation.rs system/Patient.rs",
        },
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    client = SyncFHIRClient(url, authorization=f"Bearer {token}")
    observations = client.resources("Observation").search(patient=api.patient_rid).fetch_all()
    assert observations and all(o["resourceType"] == "Observation" for o in observations)
