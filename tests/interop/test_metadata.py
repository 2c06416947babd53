"""Index metadata: small, categorised, and free of direct identifiers."""

from __future__ import annotations

from pathlib import Path

import orjson

from medledger.interop import CATEGORIES, extract_metadata, parse_fhir, sequential_ids
from medledger.interop.synth import generate


def resources(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [
        p.resource for p in parse_fhir(path.read_bytes(), path.name, id_factory=sequential_ids())
    ]


def test_lab_observation(fhir_dir: Path) -> None:
    _, _, hba1c, _, report = resources(fhir_dir / "bundle_transaction.json")
    assert extract_metadata(hba1c) == {
        "type": "Observation",
        "category": "labs",
        "code": "http://loinc.org|4548-4",
        "date": "2024-03-12",
        "title": "Hemoglobin A1c/Hemoglobin.total in Blood",
    }
    assert extract_metadata(report)["category"] == "labs"  # a LAB report is covered by "labs"
    assert extract_metadata(report)["title"] == "Laboratory report"


def test_patient_metadata_holds_no_identifier(fhir_dir: Path) -> None:
    [patient] = resources(fhir_dir / "patient_r4.json")
    meta = extract_metadata(patient)
    assert meta == {
        "type": "Patient",
        "category": "demographics",
        "code": None,
        "date": None,
        "title": "Patient",
    }
    text = orjson.dumps(meta)
    assert b"MARTIN" not in text and b"1984" not in text and b"184127510812347" not in text


def test_r4_and_r5_medication_requests(fhir_dir: Path) -> None:
    data = (fhir_dir / "medicationrequest_r5.json").read_bytes()
    [r5] = [p.resource for p in parse_fhir(data, "m.json", resolve=lambda r: "Patient/1")]
    *_, r4 = resources(fhir_dir / "bundle_batch.json")
    for resource in (r4, r5):
        meta = extract_metadata(resource)
        assert meta["category"] == "medications"
        assert meta["code"] == "http://www.whocc.no/atc|A10BA02"
        assert meta["title"] == "metformin"


def test_categories_from_observation_and_report_categories() -> None:
    vital = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    }
    assert extract_metadata(vital)["category"] == "vital-signs"  # by LOINC when no category
    survey = {
        "resourceType": "Observation",
        "category": [{"coding": [{"code": "survey"}]}],
        "code": {"text": "PHQ-9"},
    }
    assert extract_metadata(survey)["category"] == "observations"
    radiology = {"resourceType": "DiagnosticReport", "category": [{"coding": [{"code": "RAD"}]}]}
    assert extract_metadata(radiology)["category"] == "imaging"
    other = {"resourceType": "DiagnosticReport", "code": {"text": "ECG"}}
    assert extract_metadata(other)["category"] == "diagnostic-reports"
    assert extract_metadata({"resourceType": "Basic"})["category"] == "other"


def test_every_synthetic_resource_gets_metadata_from_the_vocabulary() -> None:
    seen: set[str] = set()
    for bundles in generate(6, ["a", "b", "c"], seed=5).values():
        for bundle in bundles:
            for entry in bundle["entry"]:
                meta = extract_metadata(entry["resource"])
                assert meta["category"] in CATEGORIES
                assert meta["title"] and len(meta["title"]) <= 80
                if meta["type"] != "Patient":
                    assert meta["code"] and "|" in meta["code"]
                    assert meta["date"] and len(meta["date"]) == 10
                seen.add(meta["category"])
    assert {"demographics", "encounters", "conditions", "labs", "vital-signs", "medications",
            "imaging"} <= seen  # fmt: skip


def test_the_vocabulary_is_fixed() -> None:
    assert len(CATEGORIES) == len(set(CATEGORIES))
    assert "labs" in CATEGORIES and "imaging" in CATEGORIES and "other" in CATEGORIES
