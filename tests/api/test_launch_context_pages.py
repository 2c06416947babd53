"""A practitioner's SMART launch context only narrows them to that patient, on the pages as
on the API: a token narrowed to patient P cannot break the glass on, or ask for access to,
patient Q."""

from __future__ import annotations

from medledger.api.tokens import verify_token
from medledger.web.auth import csrf_token

from .conftest import STRANGER_PID, Api, _signed_in
from .test_trust_boundaries import _practitioner


def _narrowed(api: Api, patient: str) -> tuple[object, dict[str, str]]:
    _practitioner(api, "dr-urg", ["physician", "emergency"])
    headers = api.token("Practitioner/dr-urg", "user/*.rs launch", patient=patient)
    client, _ = _signed_in(api, headers)
    svc = api.services
    claims = verify_token(headers["Authorization"][7:], svc.trusted_issuers, svc.audience)
    return client, {"csrf": csrf_token(svc, claims)}


def test_the_api_refuses_the_narrowed_token_on_another_patient(api: Api) -> None:
    headers = None
    _practitioner(api, "dr-urg", ["physician", "emergency"])
    headers = api.token("Practitioner/dr-urg", "user/*.rs launch", patient=STRANGER_PID)
    r = api.client.get(f"/fhir/Observation?patient={api.pid}", headers=headers)
    assert r.status_code == 403, r.text  # holds: the launch context is a limit


def test_a_narrowed_token_cannot_break_the_glass_on_another_patient(api: Api) -> None:
    client, form = _narrowed(api, STRANGER_PID)  # narrowed to someone else
    data = {**form, "patient": api.pid, "reason": "unconscious", "note": "n"}
    r = client.post("/clinician/break-glass", data=data, follow_redirects=False)  # type: ignore[attr-defined]
    opened = api.services.node.engine.query("emergency/list", {"org": "chu-lyon"})
    assert opened == [], f"status {r.status_code}: emergency opened on {api.pid[:12]}: {opened}"
    assert r.status_code == 403


def test_a_narrowed_token_cannot_request_access_to_another_patient(api: Api) -> None:
    client, form = _narrowed(api, STRANGER_PID)
    data = {**form, "patient": api.pid, "note": "n", "categories": "*"}
    r = client.post("/clinician/request-access", data=data, follow_redirects=False)  # type: ignore[attr-defined]
    asked = api.services.node.engine.query("consent/requests", {"pid": api.pid})
    assert asked == [], f"status {r.status_code}: request filed for {api.pid[:12]}: {asked}"
