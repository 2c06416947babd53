"""POST /fhir/Consent and the portal's forms act in a patient's name: only for a patient this
hospital treats, taken by an active practitioner with an allowed role, or asked by the patient
themself (issue 11, item 1). Refusals come before anything is signed, with the reason."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi.testclient import TestClient

from medledger.interop.fhir_consent import ORG_SYSTEM, PID_SYSTEM
from medledger.web.site import create_app

from .conftest import Api, _save_key

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


def diagnostics(response: Any) -> str:
    return " ".join(i.get("diagnostics", "") for i in response.json().get("issue", []))


def consents(api: Api, pid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.services.node.engine.query("consent/list", {"pid": pid})
    return found


STAFF_SCOPE = "user/*.cruds"


def test_a_physician_here_cannot_consent_for_a_patient_this_hospital_never_treated(
    api: Api,
) -> None:
    staff = api.token("Practitioner/dr-martin", STAFF_SCOPE)
    r = post_consent(api, staff, consent(STRANGER_PID, "chu-lyon"))
    assert r.status_code == 403 and "not a custodian of this patient" in diagnostics(r), r.text
    assert consents(api, STRANGER_PID) == []


def test_a_revoked_practitioners_unexpired_token_signs_nothing(api: Api) -> None:
    staff = api.token("Practitioner/dr-martin", STAFF_SCOPE)
    api.services.node.wallet.send("identity.revoke", {"practitioner": "dr-martin"})
    r = post_consent(api, staff, consent(api.pid, "aphp-paris"))
    assert r.status_code == 403 and "chu-lyon/dr-martin is revoked" in diagnostics(r), r.text
    assert consents(api, api.pid) == []


def test_a_role_not_allowed_to_take_requests_and_a_system_token_are_refused(api: Api) -> None:
    key = _save_key(api.services.node, "res-lyon")
    register = {"practitioner": "res-lyon", "key": key, "roles": ["researcher"]}
    api.services.node.wallet.send("identity.register", register)
    researcher = api.token("Practitioner/res-lyon", STAFF_SCOPE)
    r = post_consent(api, researcher, consent(api.pid, "aphp-paris"))
    assert r.status_code == 403 and "lacks a role allowed" in diagnostics(r), r.text
    system = api.token("Device/backend", "system/*.cruds")
    r = post_consent(api, system, consent(api.pid, "aphp-paris"))
    assert r.status_code == 403 and "taken by a practitioner" in diagnostics(r), r.text
    assert consents(api, api.pid) == []


def test_a_physician_of_a_custodian_records_it_and_is_named_on_the_chain(api: Api) -> None:
    staff = api.token("Practitioner/dr-martin", STAFF_SCOPE)
    r = post_consent(api, staff, consent(api.pid, "chu-lyon"))  # the hospital's own access
    assert r.status_code == 201, r.text
    (recorded,) = consents(api, api.pid)
    assert recorded["signed"]["practitioner"] == "dr-martin"
    assert (
        recorded["signed"]["channel"] == "desk" and len(recorded["signed"]["evidence_hash"]) == 32
    )
    assert recorded["self_granted"] is True  # notified to the patient and other custodians
    # The patient's portal tells them.
    browser = TestClient(create_app(api.services))
    token = api.token(f"Patient/{api.pid}", "patient/*.cruds", api.pid)["Authorization"][7:]
    page = browser.post("/login", data={"token": token, "next": "/portal"}).text
    assert "chu-lyon granted itself this access on your behalf" in page
    assert "request taken by dr-martin" in page


def test_a_patient_token_consents_only_for_its_own_patient(api: Api) -> None:
    mine = api.token(f"Patient/{api.pid}", "patient/*.cruds", api.pid)
    r = post_consent(api, mine, consent(STRANGER_PID, "aphp-paris"))
    assert r.status_code == 403
    r = post_consent(api, mine, consent(api.pid, "aphp-paris"))
    assert r.status_code == 201, r.text
    (recorded,) = consents(api, api.pid)
    assert (recorded["signed"]["channel"], recorded["signed"]["practitioner"]) == ("portal", "")


def _hidden_fields(page: str) -> dict[str, str]:
    """Hidden inputs of the rendered forms (e.g. an anti-CSRF token), posted back as is."""
    fields = {}
    for tag in re.findall(r"<input[^>]*type=\"hidden\"[^>]*>", page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and value and name.group(1) not in ("grantee", "categories", "purpose"):
            fields[name.group(1)] = value.group(1)
    return fields


def test_the_portal_of_a_hospital_that_never_treated_the_patient_refuses_to_act(
    api: Api,
) -> None:
    browser = TestClient(create_app(api.services))
    token = api.token(f"Patient/{STRANGER_PID}", "patient/*.cruds", STRANGER_PID)
    page = browser.post("/login", data={"token": token["Authorization"][7:], "next": "/portal"})
    form = {
        **_hidden_fields(page.text),
        "grantee": "org:aphp-paris",
        "categories": "labs",
        "purpose": "treatment",
    }
    refused = browser.post("/portal/consent", data=form)
    assert refused.status_code == 409 and "not a custodian of this patient" in refused.text
    erasure = browser.post("/portal/erasure", data=_hidden_fields(page.text))
    assert erasure.status_code == 409 and "not a custodian of this patient" in erasure.text
    assert consents(api, STRANGER_PID) == []
    assert api.services.node.engine.query("erasure/status", {"pid": STRANGER_PID}) is None
