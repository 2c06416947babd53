"""What one hospital's evaluation reads of its vault for a query, and what it never opens.

The vault holds what hospitals' systems send: a lab result corrected twice, a diagnosis, a
prescription, a blood pressure among the labs, a copy of another hospital's result, a
patient who asked to be erased. `Evaluator.decrypted` counts the record versions opened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.contracts.study_query import parse
from medledger.research.evaluate import Evaluator
from medledger.vault import Vault, VaultConfig

LYON, PARIS = "chu-lyon", "aphp-paris"
LOINC = "http://loinc.org"
ANNE, BRUNO, CLARA, DAVID = (
    hashlib.sha256(n.encode()).hexdigest() for n in ("anne", "bruno", "clara", "david")
)

QUERY = parse(
    {
        "categories": ["labs"],
        "cohort": {
            "types": ["Observation"],
            "codes": [{"system": LOINC, "code": "4548-4"}],
            "value": {"min": 3, "max": 20, "unit": "%"},
        },
        "value_of": "last",
        "statistics": [{"kind": "count"}, {"kind": "mean"}],
        "stratify": ["sex"],
    }
)


def hba1c(rid: str, value: float, date: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": f"LAB-{rid}"}],
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
        "code": {
            "coding": [
                {"system": "urn:oid:1.2.250.1.213.2.12", "code": "A1C"},
                {"system": LOINC, "code": "4548-4"},
            ]
        },
        "subject": {"reference": "Patient/ipp-1"},
        "performer": [{"reference": "Organization/lab-bio"}],
        "effectiveDateTime": f"{date}T08:00:00+01:00",
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org"},
    }


def blood_pressure(rid: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": "2025-01-02",
    }


def patient(rid: str, gender: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": rid, "gender": gender, "birthDate": "1961-02-28"}


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    opened = Vault.open(VaultConfig(LYON, path=tmp_path / "vault.db", kek=b"k" * 32))
    yield opened
    opened.close()


def put(vault: Vault, pid: str, resource: dict[str, Any], version: int = 1, **more: Any) -> None:
    custodian = more.get("custodian", LYON)
    vault.put(
        pid,
        str(resource["id"]),
        version,
        orjson.dumps(resource),
        resource_type=str(resource["resourceType"]),
        custodian=custodian,
        is_copy=custodian != LYON,
        salt=None if custodian == LYON else b"s" * 32,
    )


def test_only_the_latest_own_labs_and_the_matched_patients_demographics_are_opened(
    vault: Vault,
) -> None:
    # Anne: her result corrected twice (the last one counts), a diagnosis, a prescription,
    # a blood pressure, and a copy of Paris's result (Paris reports it, not Lyon).
    put(vault, ANNE, patient("pat-anne", "female"))
    for version, value in ((1, 6.1), (2, 25.0), (3, 7.4)):
        put(vault, ANNE, hba1c("lab-anne", value, "2025-03-02"), version)
    put(vault, ANNE, {"resourceType": "Condition", "id": "dx-anne", "code": {"text": "T2D"}})
    put(vault, ANNE, {"resourceType": "MedicationRequest", "id": "rx-anne", "status": "active"})
    put(vault, ANNE, blood_pressure("bp-anne"))
    put(vault, ANNE, hba1c("lab-paris", 11.0, "2025-06-01"), custodian=PARIS)
    # Bruno: a result, then erased: nothing of his is read.
    put(vault, BRUNO, patient("pat-bruno", "male"))
    put(vault, BRUNO, hba1c("lab-bruno", 6.0, "2025-01-01"))
    vault.erase(BRUNO)
    # Clara: her only result is out of range: her Patient resource stays closed.
    put(vault, CLARA, patient("pat-clara", "female"))
    put(vault, CLARA, hba1c("lab-clara", 42.0, "2025-01-01"))

    evaluator = Evaluator(vault, QUERY, ["labs"])
    facts = evaluator.facts([ANNE, BRUNO, CLARA, DAVID])

    assert sorted(facts) == sorted([ANNE, CLARA])  # erased and never-seen patients left out
    assert facts[ANNE].matched["cohort"] and facts[ANNE].value == ("2025-03-02", 7400)
    assert facts[ANNE].sex == "female" and facts[ANNE].birth_date == "1961-02-28"
    assert not facts[CLARA].matched["cohort"] and facts[CLARA].sex == ""
    # Opened: Anne's lab (latest version), her Patient resource; Clara's lab. Never: old
    # versions, the blood pressure (vital signs: its digest row is another one), the
    # diagnosis, the prescription, the copy, Bruno's records, Clara's Patient.
    assert evaluator.decrypted == 3
    # The records themselves: the blood pressure, an Observation, is decrypted, then dropped.
    by_records = Evaluator(vault, QUERY, ["labs"], source="records")
    assert by_records.facts([ANNE, BRUNO, CLARA, DAVID]) == facts
    assert by_records.decrypted == 4


def test_a_query_without_sex_or_age_never_opens_a_patient_resource(vault: Vault) -> None:
    put(vault, ANNE, patient("pat-anne", "female"))
    put(vault, ANNE, hba1c("lab-anne", 7.4, "2025-03-02"))
    q = parse(
        {
            "categories": ["labs"],
            "cohort": {"types": ["Observation"], "codes": [{"system": LOINC, "code": "4548-4"}]},
            "statistics": [{"kind": "count"}],
        }
    )
    evaluator = Evaluator(vault, q, ["labs"])
    facts = evaluator.facts([ANNE])
    assert facts[ANNE].matched["cohort"] and facts[ANNE].sex == ""
    assert evaluator.decrypted == 1
