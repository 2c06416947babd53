"""An API over the first hospital of a sandbox, with a patient's records already ingested."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from medledger.api.services import HospitalServices, issuer_key
from medledger.api.tokens import mint
from medledger.interop.fhir_consent import ORG_SYSTEM, PID_SYSTEM
from medledger.interop.synth import generate
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.vault import Vault
from medledger.web.site import create_app


@dataclass
class Api:
    client: TestClient
    services: HospitalServices
    patient_rid: str
    pid: str
    rids: list[str]

    def token(self, sub: str, scope: str, patient: str | None = None) -> dict[str, str]:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.services.issuer_id,
            "aud": self.services.audience,
            "sub": sub,
            "scope": scope,
            "iat": now,
            "exp": now + 600,
        }
        if patient:
            claims["patient"] = patient
        tok = mint(issuer_key(self.services.node.config.home), claims)
        return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
def api(consortium: list[Path]) -> Iterator[Api]:
    with (
        Node.open(consortium[0], serve=True, interval=0.02) as node,
        Vault.open(node.config.vault_config()) as vault,
    ):
        svc = HospitalServices(node, vault)
        node.wallet.send(
            "identity.register",
            {
                "practitioner": "dr-martin",
                "key": _save_key(node, "dr-martin"),
                "roles": ["physician"],
            },
        )
        bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]
        result = svc.ingestor.ingest_bytes(orjson.dumps(bundle), "p.json")
        assert not result.rejections
        patient_rid = next(r for r in result.rids if vault.info(r).resource_type == "Patient")
        (pid,) = result.pids
        with TestClient(create_app(svc)) as client:
            yield Api(client, svc, patient_rid, pid, result.rids)


def csrf(html: str) -> str:
    """The CSRF token a page's forms carry (every POST of a signed-in session needs it)."""
    import re

    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll until check() holds: for what the node commits in the background (access logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _save_key(node: Node, practitioner: str) -> bytes:
    key = SigningKey.generate()
    key.save(node.config.practitioner_key_path(practitioner))
    return key.public_key


STRANGER_PID = hashlib.sha256(b"a patient chu-lyon never treated").hexdigest()


def consent(pid: str, grantee_org: str) -> dict[str, Any]:
    """A FHIR R4 Consent: `grantee_org` may read the patient's labs for treatment."""
    return {
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
        "patient": {"identifier": {"system": PID_SYSTEM, "value": pid}},
        "provision": {
            "type": "permit",
            "period": {"start": "2026-11-28T10:00:00Z"},
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
                    "reference": {"identifier": {"system": ORG_SYSTEM, "value": grantee_org}},
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
            "class": [{"system": "urn:medledger:category", "code": "labs"}],
        },
    }


def post_consent(api: Api, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return api.client.post("/fhir/Consent", json=body, headers=headers)


def consents(api: Api, pid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.services.node.engine.query("consent/list", {"pid": pid})
    return found


def _hidden_fields(page: str) -> dict[str, str]:
    """Hidden inputs of the rendered forms (e.g. an anti-CSRF token), posted back as is."""
    fields = {}
    for tag in re.findall(r"<input[^>]*type=\"hidden\"[^>]*>", page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and value and name.group(1) not in ("grantee", "categories", "purpose"):
            fields[name.group(1)] = value.group(1)
    return fields


def _signed_in(api: Api, headers: dict[str, str], https: bool = False) -> tuple[TestClient, str]:
    """A browser-like client signed in with this token; returns it and the landing page."""
    base = "https://testserver" if https else "http://testserver"
    client = TestClient(create_app(api.services), base_url=base)
    token = headers["Authorization"].removeprefix("Bearer ")
    landing = client.post("/login", data={"token": token, "next": "/portal"})
    return client, landing.text
