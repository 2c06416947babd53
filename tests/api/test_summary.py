"""`Patient/$summary`: an International Patient Summary a third-party validator accepts in
structure, assembled from what the caller may see, and saying what it left out."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle

from medledger.api.summary import WITHHELD, WITHHELD_OUTCOME

from .conftest import Api, eventually

LOINC = "http://loinc.org"


def _summary(api: Api, scope: str = "user/*.rs") -> Any:
    headers = api.token("Practitioner/dr-martin", scope)
    return api.client.get(f"/fhir/Patient/{api.patient_rid}/$summary", headers=headers)


def _sections(composition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["code"]["coding"][0]["code"]: s for s in composition["section"]}


def test_the_summary_is_an_ips_document(api: Api) -> None:
    r = _summary(api)
    assert r.status_code == 200, r.text
    document = r.json()
    Bundle.model_validate(document)  # structurally valid FHIR R4 (fhir.resources)
    assert document["type"] == "document" and document["timestamp"].endswith("Z")
    assert document["identifier"]["value"].startswith("urn:uuid:")
    assert document["meta"]["profile"] == [
        "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips"
    ]
    entries = {e["fullUrl"]: e["resource"] for e in document["entry"]}
    assert all(url.startswith("urn:uuid:") for url in entries)
    assert all(entries[u]["id"] == u.removeprefix("urn:uuid:") for u in entries)
    composition = document["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition" and composition["status"] == "final"
    assert composition["type"]["coding"][0] == {
        "system": LOINC,
        "code": "60591-5",
        "display": "Patient summary Document",
    }
    assert entries[composition["subject"]["reference"]]["resourceType"] == "Patient"
    assert entries[composition["author"][0]["reference"]]["resourceType"] == "Organization"
    assert entries[composition["custodian"]["reference"]]["resourceType"] == "Organization"
    assert composition["date"] and composition["title"]
    # Exactly one Patient: the subject of every entry.
    patients = [u for u, res in entries.items() if res["resourceType"] == "Patient"]
    assert patients == [composition["subject"]["reference"]]


def test_each_section_references_its_entries_and_every_reference_resolves(api: Api) -> None:
    document = _summary(api).json()
    entries = {e["fullUrl"]: e["resource"] for e in document["entry"]}
    sections = _sections(document["entry"][0]["resource"])
    # The three required IPS sections are always there; the optional ones when present.
    assert {"11450-4", "48765-2", "10160-0"} <= set(sections)
    assert "30954-2" in sections  # results: the patient's lab observations and reports
    for code, section in sections.items():
        assert section["title"] and section["text"]["div"].startswith("<div xmlns=")
        if "entry" in section:
            assert all(ref["reference"] in entries for ref in section["entry"]), code
        else:
            assert section["emptyReason"]["coding"][0]["code"] in ("unavailable", "withheld")
    # The synthetic patient has no medication: the section says so rather than vanishing.
    assert sections["10160-0"]["emptyReason"]["coding"][0]["code"] == "unavailable"
    assert [e["resource"]["resourceType"] for e in document["entry"]].count("Condition") == 2
    assert {entries[ref["reference"]]["resourceType"] for ref in sections["48765-2"]["entry"]} == {
        "AllergyIntolerance"
    }
    for resource in entries.values():
        for ref in _references(resource):
            if ref.startswith("urn:uuid:"):
                assert ref in entries, ref
            assert not ref.startswith("Patient/"), ref  # all point at the one subject entry


def test_what_the_scopes_withhold_is_said_not_hidden(api: Api) -> None:
    r = _summary(api, "user/Patient.rs user/Condition.rs")
    assert r.status_code == 200, r.text
    document = r.json()
    Bundle.model_validate(document)
    types = {e["resource"]["resourceType"] for e in document["entry"]}
    assert "Observation" not in types and "AllergyIntolerance" not in types
    composition = document["entry"][0]["resource"]
    sections = _sections(composition)
    allergies = sections["48765-2"]
    assert allergies["emptyReason"]["coding"][0]["code"] == "withheld"
    assert allergies["extension"] == [{"url": WITHHELD, "valueUnsignedInt": 1}]
    assert "withheld" in allergies["text"]["div"]
    (link,) = composition["extension"]
    assert link["url"] == WITHHELD_OUTCOME
    entries = {e["fullUrl"]: e["resource"] for e in document["entry"]}
    outcome = entries[link["valueReference"]["reference"]]
    assert outcome["resourceType"] == "OperationOutcome"
    assert "outside the categories or types of your scopes" in outcome["issue"][0]["diagnostics"]


def test_a_caller_with_no_access_gets_no_summary_and_the_refusal_is_logged(api: Api) -> None:
    stranger = api.token("Practitioner/nobody", "user/*.rs")
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}/$summary", headers=stranger)
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"

    def refused() -> bool:
        trail = api.services.node.engine.query("access/of_patient", {"pid": api.pid})
        return any(e["action"] == "export" and e["outcome"] == "denied" for e in trail)

    assert eventually(refused)


def test_the_summary_is_logged_as_an_export_of_what_it_served(api: Api) -> None:
    document = _summary(api).json()
    served = len(document["entry"]) - 2  # less the Composition and the Organization

    def logged() -> bool:
        trail = api.services.node.engine.query("access/of_patient", {"pid": api.pid})
        exports = [e for e in trail if e["action"] == "export" and e["outcome"] == "granted"]
        return sum(len(e["rids"]) for e in exports) == served

    assert eventually(logged)


def test_parameters_it_does_not_honour_are_refused(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    r = api.client.get(
        f"/fhir/Patient/{api.patient_rid}/$summary?profile=http://x", headers=headers
    )
    assert r.status_code == 400 and "profile" in r.text


def _references(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            found.append(node["reference"])
        for value in node.values():
            found += _references(value)
    elif isinstance(node, list):
        for value in node:
            found += _references(value)
    return found


def test_a_document_received_summarises_with_its_practitioner_and_medications(api: Api) -> None:
    import orjson

    from medledger.interop.synth import as_document, generate

    bundle = next(
        b
        for b in generate(4, ["chu-lyon", "aphp-paris"], seed=11)["chu-lyon"]
        if any(e["resource"]["resourceType"] == "MedicationRequest" for e in b["entry"])
    )
    result = api.services.ingestor.ingest_bytes(orjson.dumps(as_document(bundle)), "ips.json")
    assert not result.rejections, result.rejections
    patient = next(r for r in result.rids if api.services.vault.info(r).resource_type == "Patient")
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    r = api.client.get(f"/fhir/Patient/{patient}/$summary", headers=headers)
    assert r.status_code == 200, r.text
    document = r.json()
    Bundle.model_validate(document)
    entries = {e["fullUrl"]: e["resource"] for e in document["entry"]}
    types = [res["resourceType"] for res in entries.values()]
    assert "Medication" in types and "Practitioner" in types
    medications = _sections(document["entry"][0]["resource"])["10160-0"]
    assert "entry" in medications
    for resource in entries.values():
        for ref in _references(resource):
            assert ref in entries, ref  # the document is self-contained
