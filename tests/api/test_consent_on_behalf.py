"""POST /fhir/Consent and the portal's forms act in a patient's name: only for a patient this
hospital treats, taken by an active practitioner with an allowed role, or asked by the patient
themself (issue 11, item 1). Refusals come before anything is signed, with the reason."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from medledger.web.site import create_app

from .conftest import STRANGER_PID, Api, _hidden_fields, _save_key, consent, consents, post_consent


def diagnostics(response: Any) -> str:
    return " ".join(i.get("diagnostics", "") for i in response.json().get("issue", []))


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
