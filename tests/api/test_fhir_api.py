"""The FHIR facade as a client sees it: metadata, scopes, reads, searches, AuditEvents."""

from __future__ import annotations

import pytest

from .conftest import Api, csrf, eventually


def test_metadata_and_smart_configuration_need_no_token(api: Api) -> None:
    meta = api.client.get("/fhir/metadata")
    assert meta.status_code == 200
    assert meta.headers["content-type"].startswith("application/fhir+json")
    body = meta.json()
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    smart = api.client.get("/.well-known/smart-configuration").json()
    assert "permission-v2" in smart["capabilities"]


def test_no_token_or_a_forged_one_is_401_with_an_operation_outcome(api: Api) -> None:
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}")
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    forged = headers["Authorization"][:-4] + "AAAA"
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers={"Authorization": forged})
    assert r.status_code == 401 and "signature" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("scope", "path", "status"),
    [
        ("patient/*.rs", "/fhir/Patient/{rid}", 200),
        ("patient/*.read", "/fhir/Patient/{rid}", 200),
        ("patient/Observation.rs", "/fhir/Patient/{rid}", 403),
        ("patient/*.c", "/fhir/Patient/{rid}", 403),
        ("patient/*.rs", "/fhir/Observation?patient={rid}", 200),
        ("patient/Observation.s", "/fhir/Observation?patient={rid}", 200),
        ("patient/Observation.r", "/fhir/Observation?patient={rid}", 403),
        ("patient/*.rs", "/fhir/AuditEvent?patient={rid}", 200),
        ("patient/Condition.rs", "/fhir/AuditEvent?patient={rid}", 403),
        ("patient/*.rs", "/fhir/Consent?patient={rid}", 200),
        ("patient/Consent.s", "/fhir/Consent?patient={rid}", 200),
        ("patient/Observation.rs", "/fhir/Consent?patient={rid}", 403),
        ("patient/*.rs", "/fhir/Patient/{rid}/$everything", 200),
        ("patient/Observation.rs", "/fhir/Patient/{rid}/$everything", 403),
    ],
)
def test_each_scope_against_each_endpoint(api: Api, scope: str, path: str, status: int) -> None:
    headers = api.token(f"Patient/{api.pid}", scope, api.pid)
    r = api.client.get(path.format(rid=api.patient_rid), headers=headers)
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("sub", "scope", "path", "status"),
    [
        ("Practitioner/dr-martin", "user/*.rs", "/fhir/Patient/{rid}", 200),
        ("Practitioner/dr-martin", "user/*.read", "/fhir/Observation?patient={rid}", 200),
        ("Practitioner/dr-martin", "user/*.cruds", "/fhir/Patient/{rid}/$everything", 200),
        ("Practitioner/dr-martin", "user/*.c", "/fhir/Patient/{rid}", 403),
        ("Practitioner/dr-martin", "user/Condition.rs", "/fhir/Observation?patient={rid}", 403),
        ("Practitioner/dr-nobody", "user/*.rs", "/fhir/Patient/{rid}", 403),
        ("Device/chu-lyon-system", "system/*.rs", "/fhir/Observation?patient={rid}", 200),
        ("Device/chu-lyon-system", "system/*.c", "/fhir/Observation?patient={rid}", 403),
        ("Practitioner/dr-martin", "patient/*.rs", "/fhir/Patient/{rid}", 403),
    ],
)
def test_user_and_system_scopes(api: Api, sub: str, scope: str, path: str, status: int) -> None:
    r = api.client.get(path.format(rid=api.patient_rid), headers=api.token(sub, scope))
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["resourceType"] == "OperationOutcome"


def test_a_patient_reads_their_records_and_sees_the_trail(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    r = api.client.get(f"/fhir/Observation?patient={api.patient_rid}&_count=5", headers=headers)
    bundle = r.json()
    assert bundle["type"] == "searchset" and len(bundle["entry"]) == 5
    assert bundle["total"] > 5
    seen = {e["resource"]["id"] for e in bundle["entry"]}
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    page2 = api.client.get(next_url.replace("http://testserver", ""), headers=headers).json()
    assert not seen & {e["resource"]["id"] for e in page2["entry"]}
    eventually(
        lambda: any(
            e["actor"] == f"patient:{api.pid}"
            for e in api.services.node.engine.query("access/of_patient", {"pid": api.pid})
        )
    )
    trail = api.client.get(f"/fhir/AuditEvent?patient={api.patient_rid}", headers=headers).json()
    events = [e["resource"] for e in trail["entry"]]
    assert events and all(e["resourceType"] == "AuditEvent" for e in events)
    # The trail also shows the records' registration (by the hospital); here the patient's read.
    who = [e["agent"][0]["who"]["identifier"]["value"] for e in events]
    mine = events[who.index(f"patient:{api.pid}")]
    assert mine["outcome"] == "0"


def test_an_audit_event_search_by_agent_says_the_filter_was_not_applied(api: Api) -> None:
    """The AuditEvent search filters by patient only: an `agent` (a hospital, to ask what it
    saw or received) must not look applied. The bundle names it in an OperationOutcome, and
    a strict client is refused."""
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    url = f"/fhir/AuditEvent?patient={api.patient_rid}&agent=Organization/aphp-paris"
    bundle = api.client.get(url, headers=headers).json()
    notes = [
        issue["diagnostics"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "OperationOutcome"
        for issue in e["resource"]["issue"]
    ]
    assert any("parameter agent was not applied" in n for n in notes), notes
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "agent" not in self_link
    strict = api.client.get(url, headers={**headers, "Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_another_patients_token_is_refused_and_the_denial_is_on_the_chain(api: Api) -> None:
    other = "cd" * 32
    headers = api.token(f"Patient/{other}", "patient/*.rs", other)
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=headers)
    assert r.status_code == 403
    node = api.services.node

    def denied() -> bool:
        trail = node.engine.query("access/of_patient", {"pid": api.pid})
        return any(e["outcome"] == "denied" and e["actor"] == f"patient:{other}" for e in trail)

    assert eventually(denied)


def test_pages_render_for_a_signed_in_patient_and_the_explorer_verifies(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    token = headers["Authorization"].removeprefix("Bearer ")
    assert "Sign in" in api.client.get("/portal").text
    r = api.client.post("/login", data={"token": token, "next": "/portal"})
    assert r.status_code == 200 and "My records" in r.text
    assert "Who accessed my data" in r.text
    explorer = api.client.get("/explorer").text
    assert "chu-lyon" in explorer and "Latest blocks" in explorer
    block = api.client.get("/explorer/block/2").text  # block 1 registered dr-martin
    assert "records.register" in block
    for text in (explorer, block):  # no personal data, not even pseudonyms, on the explorer
        assert api.pid not in text
    verified = api.client.post("/explorer/verify", data={"csrf": csrf(explorer)})
    assert verified.status_code == 200 and "ok: replayed" in verified.text, verified.text[-600:]


def test_duplicate_exams_across_hospitals_are_flagged_but_not_vital_signs() -> None:
    from medledger.web.clinician_rules import duplicate_exams

    def row(code: str, day: str, title: str, source: str, category: str) -> dict[str, str]:
        return {"type": "Observation", "code": f"http://loinc.org|{code}", "date": day,
                "title": title, "source": source, "category": category}  # fmt: skip

    rows = [
        row("4548-4", "2026-01-05", "HbA1c", "chu-lyon", "labs"),
        row("4548-4", "2026-01-20", "HbA1c", "aphp-paris", "labs"),
        row("2345-7", "2026-01-20", "Glucose", "aphp-paris", "labs"),
        # Weighed at both hospitals a week apart: taken at every visit, not an exam redone.
        row("29463-7", "2026-01-05", "Body weight", "chu-lyon", "vital-signs"),
        row("29463-7", "2026-01-12", "Body weight", "aphp-paris", "vital-signs"),
    ]
    (warning,) = duplicate_exams(rows)
    assert "HbA1c" in warning and "15 days apart" in warning
    assert duplicate_exams(rows, window_days=10) == []  # the window is the hospital's choice


def test_results_read_as_values_units_ranges_and_flags() -> None:
    from datetime import date

    from medledger.web.records import header_of, reading, trends

    hba1c = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "valueQuantity": {"value": 8.1, "unit": "%"},
        "referenceRange": [{"low": {"value": 4.0}, "high": {"value": 6.0}}],
    }
    assert reading(hba1c) | {} == {
        "value": "8.1 %", "number": 8.1, "unit": "%", "range": "4–6", "flag": "high"
    }  # fmt: skip
    pressure = {
        "resourceType": "Observation",
        "component": [
            {"valueQuantity": {"value": 128, "unit": "mmHg"}},
            {"valueQuantity": {"value": 82, "unit": "mmHg"}},
        ],
    }
    assert reading(pressure)["value"] == "128/82 mmHg"
    low = {"valueQuantity": {"value": 9.1, "unit": "g/dL"}, "interpretation": [
        {"coding": [{"code": "L"}]}]}  # fmt: skip
    assert reading(low)["flag"] == "low"

    header = header_of(
        {
            "resourceType": "Patient",
            "name": [{"use": "official", "family": "Martin", "given": ["Claire", "Anne"]}],
            "gender": "female",
            "birthDate": "1961-05-20",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "261057512345678"}],
        },
        date(2026, 11, 30),
    )
    assert header["name"] == "Claire Anne Martin" and header["age"] == 65
    assert header["identifiers"] == [{"label": "INS", "value": "261057512345678"}]

    rows = [
        {"code": "loinc|4548-4", "date": d, "number": v, "unit": "%", "value": f"{v} %",
         "title": "HbA1c", "source": s}
        for d, v, s in [("2025-01-01", 7.0, "chu-lyon"), ("2026-01-01", 8.1, "aphp-paris")]
    ]  # fmt: skip
    (chart,) = trends(rows)
    assert chart["low"] == "7" and chart["high"] == "8.1"
    assert [p["source"] for p in chart["points"]] == ["chu-lyon", "aphp-paris"]
    assert chart["points"][0]["y"] > chart["points"][1]["y"]  # higher value, higher on screen


def test_a_clinician_requests_access_and_the_patient_grants_it_in_the_portal(api: Api) -> None:
    from fastapi.testclient import TestClient

    from medledger.web.site import create_app

    clinician = TestClient(create_app(api.services))
    patient = TestClient(create_app(api.services))
    staff = api.token("Practitioner/dr-martin", "user/*.rs")["Authorization"][7:]
    form = clinician.post("/login", data={"token": staff, "next": "/clinician"}).text
    r = clinician.post(
        "/clinician/request-access",
        data={
            "patient": api.pid,
            "categories": "labs,conditions",
            "note": "pre-op review",
            "csrf": csrf(form),
        },
    )
    assert r.status_code == 200 and "on the ledger" in r.text
    scopes = "patient/*.rs patient/Consent.c"  # reading, and granting consents
    mine = api.token(f"Patient/{api.pid}", scopes, api.pid)["Authorization"][7:]
    page = patient.post("/login", data={"token": mine, "next": "/portal"}).text
    section = page[page.index("Access requests") : page.index("My consents")]
    assert "dr-martin, CHU de Lyon" in section, section
    assert "diagnoses and conditions, laboratory results" in section, section
    granted = patient.post(
        "/portal/consent",
        data={
            "grantee": "org:chu-lyon",
            "categories": "labs,conditions",
            "purpose": "treatment",
            "csrf": csrf(page),
        },
    )
    assert granted.status_code == 200  # redirected back to the portal
    (request,) = api.services.node.engine.query("consent/requests", {"pid": api.pid})
    assert request["granted"] is True


def test_the_portal_says_who_served_and_signed_each_access_and_shows_its_own_study_titles(
    api: Api,
) -> None:
    import hashlib

    from medledger.node.notes import NoteStore, study_title

    node = api.services.node
    title_hash = study_title(NoteStore(node.config.home), "s-2026-01", "Heart failure outcomes")
    node.wallet.send(
        "research.register",
        {
            "study": "s-2026-01",
            "protocol_hash": hashlib.sha256(b"protocol").digest(),
            "ethics_ref": "CPP-2026-0142",
            "categories": ["labs"],
            "min_cohort": 3,
            "title_hash": title_hash,
        },
    )
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    token = headers["Authorization"].removeprefix("Bearer ")
    api.client.post("/login", data={"token": token, "next": "/portal"})
    served = f"served and signed by {node.config.name}"
    assert eventually(lambda: served in api.client.get("/portal").text)  # its own visit
    page = api.client.get("/portal").text
    # The sponsor shows the title it keeps; the chain holds only the salted hash.
    assert "Heart failure outcomes" in page
    (study,) = node.engine.query("research/studies", {})
    assert "title" not in study and study["title_hash"] == title_hash
