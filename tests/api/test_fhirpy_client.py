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
