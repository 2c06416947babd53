"""`Vault.put_many`: a unit's records stored together, as one `put` (and `remember`) after
the other would store them, all or none. Ingestion stores each unit so (node/ingest.py).
These tests run on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib

import pytest

from medledger.vault import NewRecord, PatientErased, RecordConflict, RecordNotFound, Vault
from medledger.vault.envelope import EMPTY_MANIFEST, RecordContext, extend_manifest
from tests.vault.conftest import HOSPITAL, PATIENT, make_pid, obs

ANNE, BRUNO = make_pid("put-many-anne"), make_pid("put-many-bruno")


def _alias(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _record(
    pid: str,
    rid: str,
    data: bytes,
    kind: str = "Observation",
    version: int = 1,
    aliases: tuple[bytes, ...] = (),
) -> NewRecord:
    return NewRecord(pid, rid, version, data, kind, HOSPITAL, aliases=aliases)


def _manifest_of(vault: Vault, pid: str, order: list[tuple[str, int]]) -> bytes:
    """The patient key's manifest recomputed from the stored rows, in the order given."""
    manifest: bytes = EMPTY_MANIFEST
    for rid, version in order:
        found = vault._backend.fetch_record(rid, version)
        assert found is not None
        row = found[0]
        ctx = RecordContext(
            HOSPITAL, pid, rid, version, row.resource_type, row.custodian, row.is_copy
        )
        manifest = extend_manifest(manifest, ctx, bytes(row.ciphertext))
    return manifest


def test_a_unit_of_two_patients_is_stored_as_puts_one_after_the_other(vault: Vault) -> None:
    copy_salt = b"\x07" * 32
    stored = vault.put_many(
        [
            _record(ANNE, "Patient-anne", PATIENT, "Patient", aliases=(_alias("ins-anne"),)),
            _record(ANNE, "Obs-1", obs(1), aliases=(_alias("lab-1"), _alias("lab-1b"))),
            _record(BRUNO, "Obs-2", obs(2)),
            _record(ANNE, "Obs-1", obs(1, "corrected"), version=2),  # a new version, same call
            NewRecord(ANNE, "Obs-3", 1, obs(3), "Observation", "hosp-paris", True, copy_salt),
        ]
    )

    assert [(s.pid, s.rid, s.version, s.is_copy) for s in stored] == [
        (ANNE, "Patient-anne", 1, False),
        (ANNE, "Obs-1", 1, False),
        (BRUNO, "Obs-2", 1, False),
        (ANNE, "Obs-1", 2, False),
        (ANNE, "Obs-3", 1, True),
    ]
    assert stored[4].salt == copy_salt
    assert stored[1].salt == vault.salt(ANNE, "Obs-1", 1)  # the commitment's salt, as put's
    assert vault.get("Patient-anne") == PATIENT  # the exact bytes
    assert vault.get("Obs-1") == obs(1, "corrected")
    assert vault.versions("Obs-1") == [1, 2]
    assert vault.recall([_alias("lab-1"), _alias("ins-anne")]) == {
        _alias("lab-1"): ["Obs-1"],
        _alias("ins-anne"): ["Patient-anne"],
    }
    # The counters and the running manifest an erasure receipt is made of: each version
    # folded in, in order, as successive puts fold them.
    key = vault._backend.read_key(ANNE)
    assert key is not None
    assert (key.n_records, key.n_copies) == (3, 1)
    order = [("Patient-anne", 1), ("Obs-1", 1), ("Obs-1", 2), ("Obs-3", 1)]
    assert key.manifest == _manifest_of(vault, ANNE, order)
    receipt = vault.erase(ANNE)
    assert (receipt.records_shredded, receipt.copies_shredded) == (3, 1)


def test_one_refused_record_leaves_nothing_of_the_call(vault: Vault) -> None:
    vault.put(ANNE, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
    head = vault.journal_head()

    with pytest.raises(RecordConflict, match="version 1 is not above the stored version 1"):
        vault.put_many(
            [
                _record(BRUNO, "Patient-bruno", PATIENT, "Patient", aliases=(_alias("ins-b"),)),
                _record(ANNE, "Obs-1", obs(1, "again")),  # stored versions are immutable
            ]
        )

    assert vault.records_of(BRUNO) == []  # not even the patient's key was kept
    assert vault._backend.read_key(BRUNO) is None
    assert vault.recall([_alias("ins-b")]) == {}
    assert vault.get("Obs-1") == obs(1)
    assert vault.journal_head() == head  # nothing to replicate either


def test_refusals_name_the_record_as_put_does(vault: Vault) -> None:
    vault.put(ANNE, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
    with pytest.raises(RecordConflict, match="rid Obs-1 belongs to another patient"):
        vault.put_many([_record(BRUNO, "Obs-1", obs(1), version=2)])
    with pytest.raises(ValueError, match="record Obs-9 version 1: resourceType 'Observation'"):
        vault.put_many([_record(ANNE, "Obs-9", obs(9), "Condition")])
    with pytest.raises(ValueError, match="an alias is 32 bytes"):
        vault.put_many([_record(ANNE, "Obs-9", obs(9), aliases=(b"short",))])
    vault.erase(ANNE)
    with pytest.raises(PatientErased):
        vault.put_many([_record(ANNE, "Obs-9", obs(9))])
    assert vault.put_many([]) == []


def test_get_many_reads_versions_in_the_order_asked_and_refuses_as_get(vault: Vault) -> None:
    vault.put_many(
        [
            _record(ANNE, "Patient-anne", PATIENT, "Patient"),
            _record(ANNE, "Obs-1", obs(1)),
            _record(ANNE, "Obs-1", obs(1, "corrected"), version=2),
            _record(BRUNO, "Obs-2", obs(2)),
        ]
    )

    asked = [("Obs-1", 2), ("Patient-anne", 1), ("Obs-1", 1), ("Obs-2", 1)]
    assert vault.get_many(asked) == [obs(1, "corrected"), PATIENT, obs(1), obs(2)]
    assert vault.get_many([]) == []
    with pytest.raises(RecordNotFound):
        vault.get_many([("Obs-1", 1), ("Obs-1", 3)])
    vault.erase(BRUNO)
    with pytest.raises(PatientErased):
        vault.get_many([("Obs-1", 1), ("Obs-2", 1)])
    assert vault.get_many([("Obs-1", 1)]) == [obs(1)]
