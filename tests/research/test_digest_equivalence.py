"""The evaluation through the research digests gives the facts the records give.

Hypothesis builds messy vaults, shaped like what hospitals' systems send: lab results
corrected (new versions), sent by another hospital (copies), registered then withdrawn,
values as floats, integers, strings or missing, units in % or mmol/mol or none, dates full,
partial or missing, a blood pressure among the labs, diagnoses, prescriptions, Patient
resources with odd genders, erased patients. Some records are written by a vault that keeps
the digests (the node's), others by one that does not (a vault of older code), so digests
are found fresh, stale and missing. For several queries and consents (the categories the
patients allowed: all the query asks, some, none, more), `Evaluator(source="digest")` and
`Evaluator(source="records")` must give the same facts for every patient.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medledger.contracts.study_query import StudyQuery, parse
from medledger.interop.research_facts import DIGESTER
from medledger.research.evaluate import Evaluator
from medledger.vault import NewRecord, Vault, VaultConfig
from medledger.vault import vault as vault_module
from medledger.vault.digest import ROW_BOUND

LYON, PARIS = "chu-lyon", "aphp-paris"
LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PIDS = [hashlib.sha256(f"p{i}".encode()).hexdigest() for i in range(3)]
KEK = b"e" * 32

QUERIES: list[StudyQuery] = [
    parse(  # HbA1c in %, a range, the last value, by sex
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
    ),
    parse(  # any HbA1c of 2025, the max value, no demographics
        {
            "categories": ["labs", "vital-signs"],
            "cohort": {
                "types": ["Observation"],
                "codes": [{"system": LOINC, "code": "4548-4"}, {"system": LOINC, "code": "8480-6"}],
                "date": {"from": "2025-01-01", "to": "2025-12-31"},
            },
            "value_of": "max",
            "statistics": [{"kind": "count"}],
        }
    ),
    parse(  # diabetics by age, a 2x2 table of diagnosis against a prescription
        {
            "categories": ["conditions", "medications"],
            "cohort": {"types": ["Condition"], "codes": [{"system": SNOMED, "code": "44054006"}]},
            "age": {"min": 18},
            "age_on": "2025-01-01",
            "statistics": [
                {
                    "kind": "table2x2",
                    "rows": {"types": ["Condition"]},
                    "columns": {"types": ["MedicationRequest"]},
                }
            ],
            "stratify": ["age_band"],
            "age_bands": [0, 50, 120],
        }
    ),
]

values = st.one_of(
    st.floats(min_value=-5, max_value=40, allow_nan=False).map(lambda v: round(v, 2)),
    st.integers(min_value=-3, max_value=50),
    st.sampled_from(["7.4", None, True, 1e300]),
)
dates = st.sampled_from(["2025-03-02T08:00:00+01:00", "2024-11", "2025", "", None])


@st.composite
def lab(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [
                {"system": "urn:oid:1.2.250.1.213.2.12", "code": "A1C"},
                {"system": LOINC, "code": draw(st.sampled_from(["4548-4", "8480-6", "2345-7"]))},
            ]
        },
        "performer": [{"reference": "Organization/lab-bio"}],
    }
    kind = draw(st.sampled_from(["laboratory", "vital-signs", None]))
    if kind:
        doc["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": kind}]}]
    date = draw(dates)
    if date is not None:
        doc["effectiveDateTime" if draw(st.booleans()) else "issued"] = date
    if draw(st.booleans()):
        quantity: dict[str, Any] = {"value": draw(values)}
        unit = draw(st.sampled_from(["%", "mmol/mol", None]))
        if unit:
            quantity["unit" if draw(st.booleans()) else "code"] = unit
        doc["valueQuantity"] = quantity
    return doc


def condition(code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "code": {"coding": [{"system": SNOMED, "code": code}], "text": "T2D"},
        "onsetDateTime": "2019-05-01",
    }


resources = st.one_of(
    lab(),
    st.sampled_from(["44054006", "38341003"]).map(condition),
    st.just({"resourceType": "MedicationRequest", "status": "active", "authoredOn": "2025-02"}),
    st.builds(
        lambda gender, birth: {"resourceType": "Patient", "gender": gender, "birthDate": birth},
        st.sampled_from(["female", "male", "Female", None]),
        st.sampled_from(["1961-02-28", "2010-06-01", "1950", 12]),
    ),
)
#: (patient, record number, the resource, a copy?, written by the node's vault?, withdrawn?)
writes = st.lists(
    st.tuples(
        st.integers(0, len(PIDS) - 1),
        st.integers(0, 5),
        resources,
        st.integers(0, 3).map(lambda n: n == 0),
        st.booleans(),
        st.integers(0, 7).map(lambda n: n == 0),
    ),
    max_size=30,
)


def build(folder: Path, plan: list[Any], erased: set[int]) -> None:
    """Write the plan through two vaults on one database: one keeps digests, one does not."""
    config = VaultConfig(LYON, path=folder / "vault.db", kek=KEK, sqlite_synchronous="OFF")
    versions: dict[str, int] = {}
    kinds: dict[str, str] = {}
    with Vault.open(config) as plain, Vault.open(replace(config, digester=DIGESTER)) as node:
        for who, n, resource, is_copy, by_node, withdrawn in plan:
            rid = f"{'cp' if is_copy else 'r'}-{who}-{n}"
            kind = kinds.setdefault(rid, resource["resourceType"])
            if resource["resourceType"] != kind:
                continue  # a rid keeps its type
            version = versions.get(rid, 0) + 1
            record = NewRecord(
                PIDS[who],
                rid,
                version,
                orjson.dumps({**resource, "id": rid}),
                kind,
                PARIS if is_copy else LYON,
                is_copy,
                b"s" * 32 if is_copy else None,
            )
            vault = node if by_node else plain
            with vault.batch():
                vault.put_many([record])
                unit = vault.hold([(rid, version)]) if withdrawn else None
            if unit is not None:
                vault.withdraw(unit)
            else:
                versions[rid] = version
        for who in erased:
            plain.erase(PIDS[who])


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    plan=writes,
    erased=st.sets(st.integers(0, len(PIDS) - 1), max_size=1),
    bound=st.sampled_from([ROW_BOUND, 150]),  # small: puts drop rows, readers rebuild them
)
def test_the_digests_give_the_facts_the_records_give(
    plan: list[Any], erased: set[int], bound: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(vault_module, "ROW_BOUND", bound):
        build(Path(tmp), plan, erased)
        config = VaultConfig(LYON, path=Path(tmp) / "vault.db", kek=KEK)
        with Vault.open(config) as vault:
            for q, categories in [(query, c) for query in QUERIES for c in consents(query)]:
                by_records = Evaluator(vault, q, categories, source="records")
                expected = by_records.facts(PIDS)
                # Twice: the first read rebuilds what is stale, the second reads it as stored.
                for _ in range(2):
                    by_digest = Evaluator(vault, q, categories)
                    assert by_digest.facts(PIDS) == expected
                    # The record path also decrypts labs a consent leaves out, then drops them.
                    assert by_digest.decrypted <= by_records.decrypted
            assert not ({PIDS[who] for who in erased} & set(expected))


def consents(q: StudyQuery) -> list[list[str]]:
    """The categories a patient may have consented to for the study: all the query asks, each
    one alone, none of them, and more than it asks."""
    asked = sorted(q.categories)
    return [asked, *([c] for c in asked), ["demographics"], [*asked, "vital-signs", "other"]]
