"""Issue 11 (trust boundaries), as an attacker tries them on the API and the pages: who may
write, what the scopes reach, forms from elsewhere, signed-out tokens, oversized bodies."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from medledger.api.services import HospitalServices, issuer_key
from medledger.api.tokens import TokenError, mint, verify_token
from medledger.interop.synth import generate
from medledger.ledger.keys import SigningKey
from medledger.web.site import create_app

from .conftest import Api, _signed_in, csrf, eventually

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def _observation(api: Api, rid: str) -> bytes:
    """A new lab result for the fixture's patient, as a client would POST it."""
    bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]
    obs = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and "laboratory" in orjson.dumps(e["resource"]["category"]).decode()
    )
    obs = {k: v for k, v in obs.items() if k != "encounter"}  # the bundle's own encounter
    return orjson.dumps({**obs, "id": rid, "subject": {"reference": f"Patient/{api.patient_rid}"}})


def _practitioner(api: Api, practitioner: str, roles: list[str]) -> None:
    node = api.services.node
    key = SigningKey.generate()
    key.save(node.config.practitioner_key_path(practitioner))
    node.wallet.send(
        "identity.register", {"practitioner": practitioner, "key": key.public_key, "roles": roles}
    )


def _trail(api: Api) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.services.node.engine.query(
        "access/of_patient", {"pid": api.pid}
    )
    return found


# -- item 4: every write checks its author on the chain and is on the access trail -----------


def test_a_revoked_practitioners_unexpired_token_writes_nothing(api: Api) -> None:
    _practitioner(api, "dr-left", ["physician"])
    headers = api.token("Practitioner/dr-left", "user/*.cruds")
    api.services.node.wallet.send("identity.revoke", {"practitioner": "dr-left", "reason": "left"})
    before = len(api.services.vault.records_of(api.pid))
    r = api.client.post("/fhir/Observation", content=_observation(api, "obs-late"), headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "revoked" in r.json()["issue"][0]["diagnostics"]
    assert len(api.services.vault.records_of(api.pid)) == before


def test_a_practitioner_without_a_care_role_writes_nothing(api: Api) -> None:
    _practitioner(api, "dr-stats", ["researcher"])
    headers = api.token("Practitioner/dr-stats", "user/*.cruds")
    r = api.client.post("/fhir/Observation", content=_observation(api, "obs-r"), headers=headers)
    assert r.status_code == 403 and "role" in r.json()["issue"][0]["diagnostics"]


def test_an_api_write_names_its_author_and_is_on_the_access_trail(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.cruds")
    r = api.client.post("/fhir/Observation", content=_observation(api, "obs-new"), headers=headers)
    assert r.status_code == 201, r.text
    rid = r.headers["Location"].split("/Observation/")[1].split("/")[0]
    entry = api.services.node.engine.query("records/entry", {"rid": rid})
    assert entry["by"] == "dr-martin"
    (created,) = [e for e in _trail(api) if e["action"] == "create" and rid in e["rids"]]
    assert created["actor"] == "practitioner:chu-lyon/dr-martin"
    assert created["rids"] == [rid] and created["tx"] == entry["tx"]
    audit = api.client.get(
        f"/fhir/AuditEvent?patient={api.patient_rid}",
        headers=api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid),
    ).json()
    assert any(e["resource"]["action"] == "C" for e in audit["entry"])


def test_a_system_client_writes_as_the_hospital(api: Api) -> None:
    headers = api.token("Device/chu-lyon-system", "system/Observation.c")
    r = api.client.post("/fhir/Observation", content=_observation(api, "obs-sys"), headers=headers)
    assert r.status_code == 201, r.text
    rid = r.headers["Location"].split("/Observation/")[1].split("/")[0]
    (created,) = [e for e in _trail(api) if e["action"] == "create" and rid in e["rids"]]
    assert created["actor"] == "org:chu-lyon"


def test_a_write_creates_only_the_types_its_scopes_allow(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/Observation.c")
    patient = next(
        e["resource"]
        for e in generate(1, ["chu-lyon", "aphp-paris"], seed=9)["chu-lyon"][0]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    r = api.client.post("/fhir/Observation", content=orjson.dumps(patient), headers=headers)
    assert r.status_code == 400 and "Patient" in r.json()["issue"][0]["diagnostics"]
    bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=9)["chu-lyon"][0]
    headers = api.token("Practitioner/dr-martin", "user/Bundle.c")
    r = api.client.post("/fhir", content=orjson.dumps(bundle), headers=headers)
    assert r.status_code == 403 and "entry[0]" in r.json()["issue"][0]["diagnostics"]


# -- item 7: the pages enforce the same scopes as the API -------------------------------------


def _records_table(html: str) -> str:
    return html[html.index("My records") : html.index("Who accessed my data")]


def test_a_launch_only_token_sees_nothing_clinical_in_the_portal(api: Api) -> None:
    _, page = _signed_in(api, api.token(f"Patient/{api.pid}", "launch", api.pid))
    records = _records_table(page)
    # Record types read in words: "result" an Observation, "diagnosis" a Condition.
    assert "<td>diagnosis</td>" not in records and "<td>result</td>" not in records, records
    assert "does not allow" in page  # trail and consents too


def test_the_portal_shows_only_the_resource_types_of_the_scopes(api: Api) -> None:
    _, page = _signed_in(api, api.token(f"Patient/{api.pid}", "patient/Observation.rs", api.pid))
    records = _records_table(page)
    assert "<td>result</td>" in records and "<td>diagnosis</td>" not in records, records


def test_posting_a_consent_needs_a_consent_write_scope(api: Api) -> None:
    form = {"grantee": "org:aphp-paris", "categories": "labs", "purpose": "treatment"}
    client, page = _signed_in(api, api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid))
    r = client.post("/portal/consent", data={**form, "csrf": csrf(page)})
    assert r.status_code == 403 and "Consent" in r.text
    assert api.services.node.engine.query("consent/list", {"pid": api.pid}) == []
    scopes = "patient/*.rs patient/Consent.c"
    client, page = _signed_in(api, api.token(f"Patient/{api.pid}", scopes, api.pid))
    r = client.post("/portal/consent", data={**form, "csrf": csrf(page)}, follow_redirects=False)
    assert r.status_code == 303
    assert len(api.services.node.engine.query("consent/list", {"pid": api.pid})) == 1


def test_a_practitioner_token_that_reads_nothing_cannot_break_the_glass(api: Api) -> None:
    from medledger.web.auth import csrf_token

    _practitioner(api, "dr-urg", ["physician", "emergency"])
    headers = api.token("Practitioner/dr-urg", "launch")
    client, _ = _signed_in(api, headers)
    svc = api.services
    claims = verify_token(headers["Authorization"][7:], svc.trusted_issuers, svc.audience)
    form = {
        "patient": api.pid,
        "reason": "unconscious",
        "note": "n",
        "csrf": csrf_token(svc, claims),
    }
    r = client.post("/clinician/break-glass", data=form, follow_redirects=False)
    assert r.status_code == 401 and "allow no reading" in r.text
    assert svc.node.engine.query("emergency/list", {"org": "chu-lyon"}) == []


def test_everything_serves_only_the_types_of_the_scopes(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/Patient.rs", api.pid)
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/$everything", headers=headers)
    assert r.status_code == 200
    assert {e["resource"]["resourceType"] for e in r.json()["entry"]} == {"Patient"}


# -- item 8: restrictions inside a scope are honoured, or the scope refused --------------------


def test_a_category_restricted_scope_serves_only_that_category(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", f"patient/Observation.rs?category={LAB}", api.pid)
    r = api.client.get(f"/fhir/Observation?patient={api.patient_rid}&_count=100", headers=headers)
    assert r.status_code == 200
    codes = [
        c["code"]
        for e in r.json()["entry"]
        for cc in e["resource"]["category"]
        for c in cc["coding"]
    ]
    assert codes and set(codes) == {"laboratory"}
    vital = next(
        rid
        for rid in api.rids
        if b"vital-signs" in api.services.vault.get(rid)
        and api.services.vault.info(rid).resource_type == "Observation"
    )
    assert api.client.get(f"/fhir/Observation/{vital}", headers=headers).status_code == 403
    _, page = _signed_in(api, headers)  # the portal applies the same restriction
    assert "vital" not in _records_table(page).lower()


def test_a_restriction_the_server_does_not_support_is_refused_not_dropped(api: Api) -> None:
    scope = "patient/Observation.rs?code=http://loinc.org|4548-4"
    headers = api.token(f"Patient/{api.pid}", scope, api.pid)
    r = api.client.get(f"/fhir/Observation?patient={api.patient_rid}", headers=headers)
    assert r.status_code == 403
    assert "'code' is not supported" in r.json()["issue"][0]["diagnostics"]
    _, page = _signed_in(api, headers)
    assert "That token was refused" in page and "not supported" in page


# -- item 12: forms from elsewhere, the cookie, signing out ------------------------------------


def test_a_form_posted_from_another_site_is_refused_the_login_included(api: Api) -> None:
    token = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)["Authorization"][7:]
    evil = {"Origin": "https://evil.example"}
    r = api.client.post("/login", data={"token": token}, headers=evil, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    referer = {"Referer": "https://evil.example/page"}
    r = api.client.post("/login", data={"token": token}, headers=referer, follow_redirects=False)
    assert r.status_code == 403
    own = {"Origin": "http://testserver"}
    r = api.client.post("/login", data={"token": token}, headers=own, follow_redirects=False)
    assert r.status_code == 303


def test_a_signed_in_post_without_the_csrf_token_is_refused(api: Api) -> None:
    scopes = "patient/*.rs patient/Consent.c"
    client, page = _signed_in(api, api.token(f"Patient/{api.pid}", scopes, api.pid))
    form = {"grantee": "org:aphp-paris", "categories": "labs", "purpose": "treatment"}
    assert client.post("/portal/consent", data=form).status_code == 403
    wrong = {**form, "csrf": "0" * 32}
    assert client.post("/portal/consent", data=wrong).status_code == 403
    assert api.services.node.engine.query("consent/list", {"pid": api.pid}) == []
    assert 'name="csrf"' in page  # every POST form of the page carries it


def test_the_cookie_is_secure_over_https(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    client = TestClient(create_app(api.services), base_url="https://testserver")
    token = headers["Authorization"].removeprefix("Bearer ")
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_signing_out_revokes_the_token_even_after_a_restart(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    client, _ = _signed_in(api, headers)
    read = f"/fhir/Patient/{api.patient_rid}"
    assert api.client.get(read, headers=headers).status_code == 200
    client.get("/logout")
    r = api.client.get(read, headers=headers)
    assert r.status_code == 401 and "signed out" in r.json()["issue"][0]["diagnostics"]
    again, page = _signed_in(api, headers)
    assert "That token was refused" in page
    restarted = HospitalServices(api.services.node, api.services.vault)
    assert TestClient(create_app(restarted)).get(read, headers=headers).status_code == 401


# -- item 13: odd inputs, INS in URLs, proofs, body sizes, token times -------------------------


def test_a_huge_block_height_is_404_not_500(api: Api) -> None:
    r = api.client.get("/explorer/block/99999999999999999999999")
    assert r.status_code == 404
    assert api.client.get("/explorer/block/-1").status_code == 404


def test_the_clinician_view_never_takes_an_ins_in_its_url(api: Api) -> None:
    ins = next(
        i["value"]
        for e in generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]["entry"]
        if e["resource"]["resourceType"] == "Patient"
        for i in e["resource"]["identifier"]
        if "1.2.250.1.213.1.4" in i["system"]
    )
    client, _ = _signed_in(api, api.token("Practitioner/dr-martin", "user/*.rs"))
    r = client.get(f"/clinician?patient={ins}")
    assert r.status_code == 400 and "type an INS in the form" in r.text
    page = client.get("/clinician").text
    found = client.post(
        "/clinician/find", data={"patient": ins, "csrf": csrf(page)}, follow_redirects=False
    )
    assert found.status_code == 303 and found.headers["location"] == f"/clinician?patient={api.pid}"
    stranger = TestClient(create_app(api.services))  # no INS-to-pid lookups for anyone else
    r = stranger.post("/clinician/find", data={"patient": ins}, follow_redirects=False)
    assert r.status_code != 303 and api.pid not in r.text


def test_a_proof_is_served_only_for_the_signed_in_patients_own_txs(api: Api) -> None:
    staff = api.token("Practitioner/dr-martin", "user/*.rs")
    assert api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=staff).status_code == 200
    eventually(lambda: bool(_trail(api)))
    own_tx = _trail(api)[0]["tx"].hex()
    patient, _ = _signed_in(api, api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid))
    assert patient.get(f"/portal/proof/{own_tx}").status_code == 200
    other = "cd" * 32  # another patient of this hospital
    stranger, _ = _signed_in(api, api.token(f"Patient/{other}", "patient/*.rs", other))
    assert stranger.get(f"/portal/proof/{own_tx}").status_code == 404
    clinician, _ = _signed_in(api, staff)
    assert clinician.get(f"/portal/proof/{own_tx}").status_code in (401, 403)


def test_request_bodies_are_bounded_whether_declared_or_streamed(api: Api) -> None:
    api.services.max_body_bytes = 4096
    api.services.max_form_bytes = 1024
    headers = api.token("Practitioner/dr-martin", "user/*.cruds")
    big = b'{"resourceType":"Observation","note":"' + b"x" * 10_000 + b'"}'
    r = api.client.post("/fhir/Observation", content=big, headers=headers)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"

    def chunks():  # no Content-Length: sent chunked
        for _ in range(10):
            yield b"x" * 1000

    r = api.client.post("/fhir", content=chunks(), headers=headers)
    assert r.status_code == 413, r.text
    r = api.client.post("/login", data={"token": "x" * 5000})
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("claim", "value"),
    [("nbf", "2099-01-01"), ("nbf", 1.5), ("exp", float(2**40)), ("iat", "now"), ("exp", True)],
)
def test_a_token_time_that_is_not_an_integer_is_refused(
    api: Api, claim: str, value: object
) -> None:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": api.services.issuer_id,
        "aud": api.services.audience,
        "sub": f"Patient/{api.pid}",
        "patient": api.pid,
        "scope": "patient/*.rs",
        "iat": now,
        "exp": now + 600,
        claim: value,
    }
    token = mint(issuer_key(api.services.node.config.home), claims)
    with pytest.raises(TokenError, match=f"claim {claim} must be an integer"):
        verify_token(token, api.services.trusted_issuers, api.services.audience)
    r = api.client.get(
        f"/fhir/Patient/{api.patient_rid}", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "/\\evil.example/x", "https://evil.example"]
)
def test_signing_in_never_redirects_to_another_site(api: Api, target: str) -> None:
    token = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)["Authorization"][7:]
    r = api.client.post("/login", data={"token": token, "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
