"""Synthetic patients: deterministic, realistic, and valid by our own validator."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import orjson
import typer
from typer.testing import CliRunner

from medledger.cli.synth import register
from medledger.contracts.study_query import Code, Criterion
from medledger.interop import parse_fhir, patient_pid
from medledger.interop.ins import INS_NIR_TEST_SYSTEM, parse_ins
from medledger.interop.synth import (
    HBA1C_LOINC,
    LOINC,
    bundle_label,
    generate,
    hba1c_patient,
    summarise,
)
from medledger.research.evaluate import match

HOSPITALS = ["chu-lyon", "ch-nantes", "aphp-hegp"]
KEY = b"consortium-key-for-tests-0123456"


def test_same_seed_same_bytes() -> None:
    first = orjson.dumps(generate(8, HOSPITALS, seed=42))
    assert first == orjson.dumps(generate(8, HOSPITALS, seed=42))
    assert first != orjson.dumps(generate(8, HOSPITALS, seed=43))


def test_a_patient_does_not_depend_on_how_many_are_generated() -> None:
    small, large = generate(3, HOSPITALS, seed=1), generate(6, HOSPITALS, seed=1)
    for hospital in HOSPITALS:
        labels = {bundle_label(b) for b in small[hospital]}
        assert small[hospital] == [b for b in large[hospital] if bundle_label(b) in labels]


def test_every_bundle_passes_the_validator() -> None:
    for hospital, bundles in generate(12, HOSPITALS, seed=7).items():
        for bundle in bundles:
            parsed = parse_fhir(orjson.dumps(bundle), f"{hospital}/{bundle_label(bundle)}.json")
            assert parsed[0].resource_type == "Patient"
            assert all(p.patient_ref == parsed[0].id for p in parsed)
            assert all(p.fhir_version == "R4" for p in parsed)


def test_each_patient_is_one_pid_across_two_or_three_hospitals() -> None:
    pids: dict[str, set[str]] = defaultdict(set)
    hospitals_of: dict[str, set[str]] = defaultdict(set)
    for hospital, bundles in generate(20, HOSPITALS, seed=3).items():
        for bundle in bundles:
            patient = bundle["entry"][0]["resource"]
            ins = next(i for i in patient["identifier"] if i["system"] == INS_NIR_TEST_SYSTEM)
            parse_ins(ins["value"])  # a valid test INS
            label = bundle_label(bundle)
            pids[label].add(patient_pid(KEY, patient))
            hospitals_of[label].add(hospital)
    assert len(pids) == 20
    assert all(len(p) == 1 for p in pids.values())
    assert len({next(iter(p)) for p in pids.values()}) == 20
    assert {len(h) for h in hospitals_of.values()} <= {2, 3}


def test_realistic_content() -> None:
    result = generate(25, HOSPITALS, seed=9)
    loinc: set[str] = set()
    conditions: set[str] = set()
    modalities: set[str] = set()
    for bundles in result.values():
        for bundle in bundles:
            for entry in bundle["entry"]:
                resource = entry["resource"]
                if resource["resourceType"] == "Observation":
                    loinc.add(resource["code"]["coding"][0]["code"])
                elif resource["resourceType"] == "Condition":
                    conditions.add(resource["code"]["coding"][0]["code"])
                elif resource["resourceType"] == "ImagingStudy":
                    modalities.add(resource["modality"][0]["code"])
    assert {"4548-4", "2345-7", "33762-6", "2160-0", "85354-9", "8867-4", "29463-7"} <= loinc
    assert {"44054006", "84114007"} <= conditions  # type 2 diabetes, heart failure
    assert conditions & {"254837009", "363406005", "254637007", "399068003"}  # a cancer
    assert {"CT", "US"} <= modalities
    summary = summarise(result)
    assert summary["patients"] == 25
    assert summary["duplicated_exams"] > 0  # repeated on purpose across hospitals
    assert set(summary["by_type"]) == {
        "AllergyIntolerance",
        "Condition",
        "DiagnosticReport",
        "Encounter",
        "ImagingStudy",
        "MedicationRequest",
        "Observation",
        "Patient",
    }


def test_a_light_study_patient_is_valid_fhir_with_its_ins_and_matched_results() -> None:
    """`hba1c_patient`, the demo's study cohort and `bench study`'s patients: a Patient whose
    test INS says its sex and birth, its results in % where a study's criterion finds them."""
    results = [("2024-03-10", 6.9), ("2025-11-10", 8.2)]
    url = "urn:uuid:0c5d6f2e9a1b4c3d8e7f6a5b4c3d2e1f"
    entries = hba1c_patient(
        42, "female", dt.date(1961, 2, 28), results, url=url, family="ETUDE42",
        department="59", hospital="chu-lyon",
    )  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    parsed = parse_fhir(orjson.dumps(bundle), "cohort.json")
    assert [p.resource_type for p in parsed] == ["Patient", "Observation", "Observation"]
    assert all(p.patient_ref == parsed[0].id for p in parsed)
    patient = entries[0]["resource"]
    ins = parse_ins(patient["identifier"][0]["value"])
    assert patient["identifier"][0]["system"] == INS_NIR_TEST_SYSTEM
    assert ins.number == "2610259000042"  # woman, born 1961-02 in the Nord, order number 42
    assert patient["identifier"][1] == {
        "use": "usual", "system": "urn:medledger:chu-lyon:ipp", "value": "00000042"
    }  # fmt: skip
    assert patient["birthDate"] == "1961-02-28" and patient["gender"] == "female"
    criterion = Criterion(
        types=("Observation",), codes=(Code(LOINC, HBA1C_LOINC),), value_min=3000,
        value_max=20000, unit="%",
    )  # fmt: skip
    found = [match(e["resource"], criterion).value for e in entries[1:]]
    assert found == [("2024-03-10", 6900), ("2025-11-10", 8200)]
    assert [e["fullUrl"] for e in entries] == [url, url + "0", url + "1"]
    # Without a hospital: the INS alone, as the demo's cohort has it.
    bare = hba1c_patient(
        7, "male", dt.date(1975, 12, 1), [], url=url, family="ETUDE7", department="59"
    )
    assert len(bare) == 1 and len(bare[0]["resource"]["identifier"]) == 1


def test_one_or_two_hospitals_are_enough() -> None:
    [bundles] = generate(2, ["solo"], seed=1).values()
    assert len(bundles) == 2
    assert {len(v) for v in generate(4, ["a", "b"], seed=1).values()} == {4}


def test_cli_writes_identical_files_for_the_same_seed(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer from flattening "synth" away
    def noop() -> None: ...

    runner = CliRunner()
    outputs = []
    for run in ("one", "two"):
        out = tmp_path / run
        args = [
            "synth",
            "--patients",
            "3",
            "--hospitals",
            "h1,h2,h3",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "3 synthetic patients (seed 5)" in result.output
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.json"))})
    assert outputs[0] == outputs[1]
    files = outputs[0]
    assert Path("summary.json") in files
    assert Path("h1/patient-0001.json") in files or Path("h2/patient-0001.json") in files
    for path, data in files.items():
        if path.name != "summary.json":
            parse_fhir(data, str(path))
