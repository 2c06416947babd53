"""The sealed research digest: per patient, one row per consent category (and an index).

A vault opened with a digester (the node's) refreshes the rows a put writes in its
transaction; any other write (a vault of older code, a withdrawal, a restore) leaves them
stale, and a stale row never opens: it is rebuilt from the records. A reader opens only the
rows of the categories it asks. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import orjson
import pytest

import medledger.vault.digest
import medledger.vault.vault
from medledger.contracts.study_query import parse
from medledger.interop.research_facts import DIGESTER
from medledger.research.evaluate import Evaluator
from medledger.vault import ReadKeys, Vault
from tests.vault.conftest import HOSPITAL, VaultEnv

PARIS = "hosp-paris"
LABS = ["labs"]
#: The types whose records can fall in a category, as `Marks.types_in` says.
TYPES = {"labs": "Observation", "vital-signs": "Observation", "medications": "Medication"}


class Marks:
    """A digester that keeps each record's type and marker, files it in its `category` (labs
    unless it says), and counts its calls."""

    version = "marks/1"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, resource: dict[str, Any]) -> tuple[str, Any]:
        self.calls += 1
        category = resource.get("category", "labs")
        return category, [resource["resourceType"], resource.get("marker", "")]

    def types_in(self, categories: Collection[str]) -> Collection[str] | None:
        return {TYPES[c] for c in categories}


def put(vault: Vault, pid: str, rid: str, version: int, marker: str, **more: Any) -> None:
    custodian = more.get("custodian", HOSPITAL)
    kind = more.get("kind", "Observation")
    doc = {"resourceType": kind, "id": rid, "marker": marker}
    if "category" in more:
        doc["category"] = more["category"]
    vault.put(
        pid,
        rid,
        version,
        orjson.dumps(doc),
        resource_type=kind,
        custodian=custodian,
        is_copy=custodian != HOSPITAL,
        salt=None if custodian == HOSPITAL else b"s" * 32,
    )


def rows(env: VaultEnv, pid: str) -> int:
    """The patient's digest rows (their index too)."""
    query = "SELECT COUNT(*) FROM research_digest_rows WHERE pid = ?"
    return int(env.execute(query, (pid,))[0][0])


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every payload a digest's AES-GCM opens (an index's or a category row's), in order."""
    seen: list[Any] = []
    real = medledger.vault.digest.open_digest

    def spy(*args: Any) -> Any:
        payload = real(*args)
        seen.append(payload)
        return payload

    monkeypatch.setattr(medledger.vault.digest, "open_digest", spy)
    return seen


def test_a_node_vault_keeps_the_digest_as_it_writes_and_reads_it_without_the_records(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne, bruno = pid_factory("anne"), pid_factory("bruno")
    put(vault, anne, "lab-1", 1, "first")
    put(vault, anne, "lab-1", 2, "corrected")  # the latest version only
    put(vault, anne, "dx-1", 1, "diagnosis")
    put(vault, anne, "lab-paris", 1, "a copy", custodian=PARIS)  # copies never
    put(vault, bruno, "lab-paris-2", 1, "only a copy", custodian=PARIS)
    assert rows(vault_env, anne) == 2 and rows(vault_env, bruno) == 0  # labs and the index
    written = marks.calls

    found = dict(vault.research_digests([bruno, anne, pid_factory("never")], marks, LABS))

    assert found == {anne: [["Observation", "diagnosis"], ["Observation", "corrected"]]}
    assert marks.calls == written  # read from the digest: no record decrypted again
    assert vault.digest_count() == 1


def test_a_digest_sealed_before_a_later_write_is_rebuilt_never_read_stale(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    anne = pid_factory("anne")
    node = vault_env.open()
    node.digester = marks
    put(node, anne, "lab-1", 1, "first")
    older = vault_env.open()  # no digester: a vault of older code writes a correction
    put(older, anne, "lab-1", 2, "corrected")
    assert rows(vault_env, anne) == 2  # the rows are still there, indexed for version 1

    assert dict(node.research_digests([anne], marks, LABS)) == {
        anne: [["Observation", "corrected"]]
    }
    # ... rebuilt and stored: the node's next write folds into it.
    put(node, anne, "lab-2", 1, "second")
    calls = marks.calls
    found = dict(node.research_digests([anne], marks, LABS))
    assert found == {anne: [["Observation", "corrected"], ["Observation", "second"]]}
    assert marks.calls == calls


def test_a_digest_moved_to_another_patient_or_another_digester_version_is_rebuilt(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne, bruno = pid_factory("anne"), pid_factory("bruno")
    put(vault, anne, "lab-a", 1, "anne's")
    put(vault, bruno, "lab-b", 1, "bruno's")
    where = "WHERE pid = ? AND category = 'labs'"
    anne_row = vault_env.execute(f"SELECT sealed FROM research_digest_rows {where}", (anne,))
    vault_env.execute(
        f"UPDATE research_digest_rows SET sealed = ? {where}", (anne_row[0][0], bruno)
    )
    assert dict(vault.research_digests([bruno], marks, LABS)) == {
        bruno: [["Observation", "bruno's"]]
    }

    class Newer(Marks):
        version = "marks/2"

        def __call__(self, resource: dict[str, Any]) -> tuple[str, Any]:
            return "labs", [resource["marker"].upper()]

    assert dict(vault.research_digests([anne], Newer(), LABS)) == {anne: [["ANNE'S"]]}


def test_a_withdrawn_version_leaves_the_digest(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "lab-1", 1, "registered")
    with vault.batch():
        put(vault, anne, "lab-1", 2, "never registered")
        put(vault, anne, "lab-2", 1, "never registered either")
        unit = vault.hold([("lab-1", 2), ("lab-2", 1)])
    assert len(dict(vault.research_digests([anne], marks, LABS))[anne]) == 2
    vault.withdraw(unit)

    assert dict(vault.research_digests([anne], marks, LABS)) == {
        anne: [["Observation", "registered"]]
    }


def test_erasure_deletes_the_digest_and_no_fact_survives(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne, bruno = pid_factory("anne"), pid_factory("bruno")
    put(vault, anne, "lab-1", 1, "anne-secret-marker")
    put(vault, bruno, "lab-2", 1, "bruno stays")
    assert rows(vault_env, anne) == 2

    vault.erase(anne, purge=True)

    assert rows(vault_env, anne) == 0
    assert dict(vault.research_digests([anne, bruno], marks, LABS)) == {
        bruno: [["Observation", "bruno stays"]]
    }
    assert rows(vault_env, anne) == 0  # a reader does not bring it back
    assert b"anne-secret-marker" not in vault_env.raw_bytes()
    # Back after an erasure: a new generation, a new digest of the new records only.
    vault.reinstate(anne)
    put(vault, anne, "lab-3", 1, "new data")
    assert dict(vault.research_digests([anne], marks, LABS)) == {
        anne: [["Observation", "new data"]]
    }


def test_a_vault_made_before_the_digests_opens_and_builds_them_when_read(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    anne = pid_factory("anne")
    old = vault_env.open()
    put(old, anne, "lab-1", 1, "before the digests")
    old.close()
    vault_env.execute("DROP TABLE research_digest_rows")  # the shape older code made:
    vault_env.execute("CREATE TABLE research_digests (pid TEXT PRIMARY KEY, sealed TEXT)")

    vault = vault_env.open()
    vault.digester = marks
    assert vault.digest_count() == 0
    put(vault, anne, "lab-2", 1, "after")  # stale (none yet): left to the first reader
    assert rows(vault_env, anne) == 0

    found = dict(vault.research_digests([anne], marks, LABS))

    assert found == {anne: [["Observation", "before the digests"], ["Observation", "after"]]}
    assert rows(vault_env, anne) == 2


def test_the_digest_is_no_replicated_item(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    put(vault, pid_factory("anne"), "lab-1", 1, "x")
    # Derived: a replica or a backup leaves it out, and it is rebuilt there when first read.
    assert not [name for name in vault.item_names() if "digest" in name]
    assert not [item for _, item, _ in vault.changes(0) if "digest" in item]


def test_a_reader_opens_only_the_rows_of_the_categories_it_asks(
    vault_env: VaultEnv, pid_factory: Callable[[str], str], opened: list[Any]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "lab-1", 1, "hba1c")
    put(vault, anne, "bp-1", 1, "not consented", category="vital-signs")
    put(vault, anne, "rx-1", 1, "not asked", kind="Medication", category="medications")
    assert rows(vault_env, anne) == 4
    opened.clear()

    assert dict(vault.research_digests([anne], marks, LABS)) == {anne: [["Observation", "hba1c"]]}

    # The index (which categories have a row, their tags) and the labs row: nothing else.
    assert len(opened) == 2 and {"lab-1": [1, ["Observation", "hba1c"]]} in opened
    assert "not consented" not in repr(opened) and "not asked" not in repr(opened)


def test_a_rebuild_decrypts_only_the_types_the_asked_categories_can_hold(
    vault_env: VaultEnv, pid_factory: Callable[[str], str], opened: list[Any]
) -> None:
    marks = Marks()
    anne = pid_factory("anne")
    older = vault_env.open()  # no digester: every row is built when first read
    put(older, anne, "lab-1", 1, "hba1c")
    put(older, anne, "rx-1", 1, "not consented", kind="Medication", category="medications")
    node = vault_env.open()
    node.digester = marks

    assert dict(node.research_digests([anne], marks, LABS)) == {anne: [["Observation", "hba1c"]]}
    assert marks.calls == 1  # the Observation only: the prescription stays sealed
    # ... and stored: a read of another category builds that one, the labs row stays.
    assert dict(node.research_digests([anne], marks, ["medications"])) == {
        anne: [["Medication", "not consented"]]
    }
    assert marks.calls == 2
    opened.clear()
    found = dict(node.research_digests([anne], marks, ["labs", "medications"]))
    assert found == {anne: [["Observation", "hba1c"], ["Medication", "not consented"]]}
    assert marks.calls == 2 and len(opened) == 3  # the index and the two rows


def test_a_write_in_one_category_leaves_the_others_rows_valid_and_unopened(
    vault_env: VaultEnv, pid_factory: Callable[[str], str], opened: list[Any]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "lab-1", 1, "hba1c")
    opened.clear()

    put(vault, anne, "rx-1", 1, "metformin", kind="Medication", category="medications")

    assert "hba1c" not in repr(opened)  # the put opened the index only
    calls = marks.calls
    assert dict(vault.research_digests([anne], marks, LABS)) == {anne: [["Observation", "hba1c"]]}
    assert marks.calls == calls  # the labs row still opens: not rebuilt


def test_a_row_moved_to_another_category_fails_its_tag(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "lab-1", 1, "hba1c")
    put(vault, anne, "bp-1", 1, "120/80", category="vital-signs")
    labs = vault_env.execute(
        "SELECT sealed FROM research_digest_rows WHERE pid = ? AND category = 'labs'", (anne,)
    )
    vault_env.execute(
        "UPDATE research_digest_rows SET sealed = ? WHERE pid = ? AND category = 'vital-signs'",
        (labs[0][0], anne),
    )
    calls = marks.calls

    found = dict(vault.research_digests([anne], marks, ["vital-signs"]))

    assert found == {anne: [["Observation", "120/80"]]}  # rebuilt from the records
    assert marks.calls > calls


def test_a_corrected_record_that_changes_category_leaves_its_old_row(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "obs-1", 1, "filed as a lab")
    put(vault, anne, "lab-2", 1, "hba1c")
    put(vault, anne, "obs-1", 2, "a blood pressure after all", category="vital-signs")
    calls = marks.calls

    assert dict(vault.research_digests([anne], marks, LABS)) == {anne: [["Observation", "hba1c"]]}
    assert dict(vault.research_digests([anne], marks, ["vital-signs"])) == {
        anne: [["Observation", "a blood pressure after all"]]
    }
    assert marks.calls == calls


def test_a_patient_with_no_record_of_the_asked_categories_is_listed_without_facts(
    vault_env: VaultEnv, pid_factory: Callable[[str], str], opened: list[Any]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "rx-1", 1, "not consented", kind="Medication", category="medications")
    opened.clear()

    assert dict(vault.research_digests([anne], marks, LABS)) == {anne: []}
    assert len(opened) == 1 and "not consented" not in repr(opened)  # the index says: none


def test_a_study_never_opens_the_row_of_a_category_the_patient_did_not_consent_to(
    vault_env: VaultEnv, pid_factory: Callable[[str], str], opened: list[Any]
) -> None:
    loinc = "http://loinc.org"
    category = "http://terminology.hl7.org/CodeSystem/observation-category"

    def observation(rid: str, code: str, kind: str, value: float) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": rid,
            "category": [{"coding": [{"system": category, "code": kind}]}],
            "code": {"coding": [{"system": loinc, "code": code}]},
            "valueQuantity": {"value": value, "unit": "%"},
            "effectiveDateTime": "2025-03-02",
        }

    vault = vault_env.open()
    vault.digester = DIGESTER
    anne, bruno = pid_factory("anne"), pid_factory("bruno")
    for pid, resources in {
        anne: [
            {"resourceType": "Patient", "id": "pat-anne", "gender": "female"},
            observation("lab-anne", "4548-4", "laboratory", 7.4),
            observation("bp-anne", "8480-6", "vital-signs", 181),
            {"resourceType": "Condition", "id": "dx-anne", "code": {"text": "depression"}},
        ],
        bruno: [
            {"resourceType": "Patient", "id": "pat-bruno", "gender": "male"},
            observation("bp-bruno", "8480-6", "vital-signs", 122),
        ],
    }.items():
        for doc in resources:
            kind, rid = doc["resourceType"], doc["id"]
            vault.put(pid, rid, 1, orjson.dumps(doc), resource_type=kind, custodian=HOSPITAL)
    q = parse(
        {
            "categories": ["labs", "vital-signs"],
            "cohort": {"types": ["Observation"]},
            "statistics": [{"kind": "count"}],
            "stratify": ["sex"],
        }
    )
    opened.clear()

    facts = Evaluator(vault, q, ["labs"]).facts([anne, bruno])  # consented: labs only

    assert facts[anne].matched["cohort"] and facts[anne].sex == "female"
    assert not facts[bruno].matched["cohort"] and facts[bruno].sex == ""
    rows_opened = [p for p in opened if "rows" not in p]  # the indexes aside
    assert [sorted(p) for p in rows_opened] == [["lab-anne"], ["pat-anne"]]


def test_a_prefetched_category_is_opened_later_without_reading_the_store_again(
    vault_env: VaultEnv,
    pid_factory: Callable[[str], str],
    opened: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne, bruno = pid_factory("anne"), pid_factory("bruno")
    put(vault, anne, "lab-1", 1, "hba1c")
    put(vault, anne, "rx-1", 1, "metformin", kind="Medication", category="medications")
    put(vault, bruno, "rx-2", 1, "insulin", kind="Medication", category="medications")
    statements: list[list[str]] = []
    fetch = vault._backend.digest_sources

    def counted(pids: list[str], categories: list[str]) -> Any:
        statements.append(pids)
        return fetch(pids, categories)

    monkeypatch.setattr(vault._backend, "digest_sources", counted)
    keys = ReadKeys()
    first = vault.research_digests([anne], marks, LABS, keys=keys, prefetch=["medications"])
    assert dict(first) == {anne: [["Observation", "hba1c"]]}
    assert "metformin" not in repr(opened)  # fetched, not opened

    later = dict(vault.research_digests([anne, bruno], marks, ["medications"], keys=keys))

    assert later == {anne: [["Medication", "metformin"]], bruno: [["Medication", "insulin"]]}
    assert statements == [[anne], [bruno]]  # Bruno was not in the first reading: read now


def test_a_row_past_the_bound_is_dropped_by_a_put_and_rebuilt_by_its_next_reader(
    vault_env: VaultEnv,
    pid_factory: Callable[[str], str],
    opened: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A put's digest work does not grow with the patient's history: a row longer than
    `ROW_BOUND` (here 200 bytes: four labs) is neither read nor opened by a put, which drops
    it; its next reader rebuilds it from the records, and the other categories' rows stay."""
    monkeypatch.setattr(medledger.vault.vault, "ROW_BOUND", 200)
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne = pid_factory("anne")
    put(vault, anne, "rx-1", 1, "metformin", kind="Medication", category="medications")
    for i in range(6):
        put(vault, anne, f"lab-{i}", 1, f"reading {i}")
    both = ["labs", "medications"]
    assert len(dict(vault.research_digests([anne], marks, both))[anne]) == 7
    assert marks.calls == 7 + 7  # each put, then the rebuild of both (the labs row grew past)
    opened.clear()

    put(vault, anne, "lab-6", 1, "reading 6")

    assert "reading 0" not in repr(opened)  # the labs row stored whole by the reader: unread
    calls = marks.calls
    meds = dict(vault.research_digests([anne], marks, ["medications"]))
    assert meds == {anne: [["Medication", "metformin"]]} and marks.calls == calls  # kept
    labs = dict(vault.research_digests([anne], marks, LABS))[anne]
    assert labs[-1] == ["Observation", "reading 6"] and len(labs) == 7
    assert marks.calls == calls + 7  # the labs dropped: rebuilt from the records


def test_own_states_move_with_the_patients_own_records_and_nothing_else(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    """What a study's facts read ahead are checked against (research/answer.py, `Prepared`):
    the state a patient's digest is bound to moves with each write of their own records."""
    vault = vault_env.open()
    anne, bruno, carla = pid_factory("anne"), pid_factory("bruno"), pid_factory("carla")
    put(vault, anne, "lab-1", 1, "first")
    put(vault, bruno, "lab-2", 1, "bruno's")
    put(vault, carla, "lab-p1", 1, "Paris's record", custodian=PARIS)  # only a copy here
    before = vault.own_states([anne, bruno, carla])
    assert set(before) == {anne, bruno}  # no own record of carla
    put(vault, anne, "lab-1", 2, "corrected")
    put(vault, bruno, "lab-p2", 1, "a copy of Paris's", custodian=PARIS)
    after = vault.own_states([anne, bruno])
    assert after[anne] != before[anne]
    assert after[bruno] == before[bruno]  # a copy is not his own records
    put(vault, anne, "lab-3", 1, "another")
    assert vault.own_states([anne])[anne] not in (before[anne], after[anne])
    vault.erase(anne, purge=True)
    assert vault.own_states([anne, bruno]) == {bruno: before[bruno]}
