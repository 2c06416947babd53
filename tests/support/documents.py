"""Files shaped like what other systems send: an International Patient Summary (a document
Bundle with its Practitioner, Organization and Medication), standalone Observations, and a
way to ingest them as `medledger ingest --sender` does (a document also as itself)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from medledger.interop.fhir import ParsedResource, parse_fhir
from medledger.node.ingest import Ingestor, UnitResult

INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"  # INS-NIR (test)
INS = "167116745120916"
MRN_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.99"  # a hospital's own patient numbers
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
LAB = "https://lab.example.org/fhir"  # the sender's id space


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient(pid: str, identifiers: list[tuple[str, str]], family: str = "LEROY") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": s, "value": v} for s, v in identifiers],
        "name": [{"family": family, "given": ["Gérard"]}],
        "gender": "male",
        "birthDate": "1967-11-16",
    }


def practitioner() -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": "pract-1",
        "identifier": [{"system": RPPS_SYSTEM, "value": "10003456789"}],
        "name": [{"family": "Ardent", "given": ["Claire"], "prefix": ["Dr"]}],
    }


def ips(
    doc: str, identifiers: list[tuple[str, str]], patient_id: str = "pat-1", dose: str = "500 mg"
) -> dict[str, Any]:
    """An International Patient Summary, as an IPS implementation guide's examples are."""
    urls = {k: urn() for k in ("comp", "pat", "pract", "org", "cond", "ms", "med", "allergy")}
    ref = {k: {"reference": v} for k, v in urls.items()}
    resources = {
        "comp": {
            "resourceType": "Composition",
            "id": f"comp-{doc}",
            "status": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "60591-5"}]},
            "subject": ref["pat"],
            "date": "2024-03-02T10:00:00+01:00",
            "author": [ref["pract"]],
            "title": "Patient Summary",
            "custodian": ref["org"],
            "section": [
                {
                    "title": "Problems",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "11450-4"}]},
                    "entry": [ref["cond"]],
                },
                {
                    "title": "Medications",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "10160-0"}]},
                    "entry": [ref["ms"]],
                },
                {
                    "title": "Allergies",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "48765-2"}]},
                    "entry": [ref["allergy"]],
                },
            ],
        },
        "pat": patient(patient_id, identifiers),
        "pract": practitioner(),
        "org": {
            "resourceType": "Organization",
            "id": "org-1",
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "1690000001"}],
            "name": "Cabinet du Parc",
        },
        "cond": {
            "resourceType": "Condition",
            "id": f"cond-{doc}",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            "subject": ref["pat"],
            "asserter": ref["pract"],
        },
        "ms": {
            "resourceType": "MedicationStatement",
            "id": f"ms-{doc}",
            "status": "active",
            "medicationReference": ref["med"],
            "subject": ref["pat"],
            "dosage": [{"text": dose}],
        },
        "med": {
            "resourceType": "Medication",
            "id": "med-1",
            "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}]},
        },
        "allergy": {
            "resourceType": "AllergyIntolerance",
            "id": f"allergy-{doc}",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]},
            "patient": ref["pat"],
        },
    }
    return {
        "resourceType": "Bundle",
        "id": f"ips-{doc}",
        "identifier": {"system": "urn:oid:2.16.724.4.8.10.200.10", "value": f"ips-{doc}"},
        "type": "document",
        "timestamp": "2024-03-02T10:00:00+01:00",
        "entry": [{"fullUrl": urls[k], "resource": r} for k, r in resources.items()],
    }


def observation(oid: str, subject: dict[str, Any], value: float = 7.1) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": subject,
        "effectiveDateTime": "2024-03-02",
        "valueQuantity": {"value": value, "unit": "%"},
    }


def send(ingestor: Ingestor, doc: dict[str, Any], name: str, sender: str = LAB) -> UnitResult:
    """Ingest a file as `medledger ingest --sender` does; a document also as itself."""
    data = orjson.dumps(doc)
    if doc.get("type") != "document":
        return ingestor.ingest_bytes(data, name, sender=sender)
    resolve = lambda ref: ingestor._resolve(ref, sender)  # noqa: E731 - as ingest_bytes does
    parsed = parse_fhir(data, name, resolve=resolve)
    if not any(p.resource_type == "Bundle" for p in parsed):  # interfaces.md rule 6
        composition = parsed[0]
        parsed.append(
            ParsedResource(
                "Bundle",
                str(uuid.uuid4()),
                data,
                composition.patient_ref,
                None,
                source_id=doc["id"],
                resource=orjson.loads(data),
            )
        )
    return ingestor.ingest_bytes(data, name, parsed=parsed, sender=sender)
