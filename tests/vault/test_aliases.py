"""Aliases (the names a hospital finds its records by again) and the hospital's own records.

Aliases are opaque 32-byte HMACs computed by ingestion (node/aliases.py): the vault keeps
them next to the rid they name, forgets them with the record version that brought them, and
with their patient once erased. Records that are no patient's live under `hospital_pid`,
which no erasure touches. These tests run on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib

import orjson
import pytest

from medledger.vault import Vault
from tests.vault.conftest import HOSPITAL, PATIENT, VaultEnv, make_pid, obs

PID = make_pid("aliases-1")
PRACTITIONER = orjson.dumps(
    {"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Ardent"}]}
)


def _alias(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()  # ingestion uses an HMAC; any 32 bytes do


def _put(vault: Vault, rid: str, data: bytes, kind: str, pid: str = PID, version: int = 1) -> None:
    vault.put(pid, rid, version, data, resource_type=kind, custodian=HOSPITAL)


def test_an_alias_names_the_records_it_was_given_to(vault: Vault) -> None:
    _put(vault, "Patient-p1", PATIENT, "Patient")
    _put(vault, "Obs-1", obs(1), "Observation")
    vault.remember("Patient-p1", [_alias("ins"), _alias("mrn")])
    vault.remember("Obs-1", [_alias("sender-obs-1")])
    vault.remember("Patient-p1", [_alias("ins")])  # idempotent

    found = vault.recall([_alias("ins"), _alias("sender-obs-1"), _alias("unknown")])

    assert found == {_alias("ins"): ["Patient-p1"], _alias("sender-obs-1"): ["Obs-1"]}
    _put(vault, "Obs-2", obs(2), "Observation")
    vault.remember("Obs-2", [_alias("sender-obs-1")])  # an alias may name several rids
    assert vault.recall([_alias("sender-obs-1")]) == {_alias("sender-obs-1"): ["Obs-1", "Obs-2"]}


def test_an_alias_is_an_opaque_hmac_and_names_a_stored_record(vault: Vault) -> None:
    from medledger.vault import RecordNotFound

    with pytest.raises(ValueError, match="32 bytes"):
        vault.remember("Obs-1", [b"1234567890123"])  # e.g. an INS in clear
    with pytest.raises(RecordNotFound):
        vault.remember("Obs-1", [_alias("x")])


def test_withdrawing_a_unit_forgets_the_aliases_it_brought(vault: Vault) -> None:
    _put(vault, "Patient-p1", PATIENT, "Patient")
    vault.remember("Patient-p1", [_alias("ins")])
    with vault.batch():
        _put(vault, "Patient-p1", PATIENT.replace(b"1961", b"1962"), "Patient", version=2)
        vault.remember("Patient-p1", [_alias("mrn")])  # brought by version 2
        _put(vault, "Obs-1", obs(1), "Observation")
        vault.remember("Obs-1", [_alias("sender-obs-1")])
        unit = vault.hold([("Patient-p1", 2), ("Obs-1", 1)])

    vault.withdraw(unit)

    assert vault.recall([_alias("ins"), _alias("mrn"), _alias("sender-obs-1")]) == {
        _alias("ins"): ["Patient-p1"]
    }


def test_an_erased_patients_aliases_name_nothing_and_are_purged(
    vault_env: VaultEnv, vault: Vault
) -> None:
    _put(vault, "Patient-p1", PATIENT, "Patient")
    vault.remember("Patient-p1", [_alias("ins")])
    other = make_pid("aliases-2")
    _put(vault, "Patient-p2", PATIENT, "Patient", pid=other)
    vault.remember("Patient-p2", [_alias("ins-2")])

    vault.erase(PID)

    assert vault.recall([_alias("ins"), _alias("ins-2")]) == {_alias("ins-2"): ["Patient-p2"]}
    vault.purge_pending()
    assert vault_env.execute("SELECT COUNT(*) FROM aliases WHERE pid = ?", (PID,)) == [(0,)]
    assert vault_env.execute("SELECT COUNT(*) FROM aliases") == [(1,)]


def test_the_hospitals_own_records_are_no_patients_and_outlive_erasures(vault: Vault) -> None:
    own = vault.hospital_pid
    _put(vault, "Practitioner-1", PRACTITIONER, "Practitioner", pid=own)
    vault.remember("Practitioner-1", [_alias("rpps")])
    _put(vault, "Patient-p1", PATIENT, "Patient")

    assert vault.patients() == [PID]  # not a patient
    vault.erase(PID, purge=True)
    assert vault.get("Practitioner-1") == PRACTITIONER
    assert vault.recall([_alias("rpps")]) == {_alias("rpps"): ["Practitioner-1"]}
    with pytest.raises(ValueError, match="no patient's"):
        vault.erase(own)
    with pytest.raises(ValueError, match="no patient's"):
        vault.erase_copies(own)


def test_a_vault_of_schema_2_is_migrated_on_open(vault_env: VaultEnv) -> None:
    """A vault written by the code before aliases (schema 2) opens, keeps everything, and
    remembers aliases from then on."""
    vault = vault_env.open()
    _put(vault, "Patient-p1", PATIENT, "Patient")
    vault.close()
    # What schema 2 was: the same tables without `aliases`, and its version in meta.
    vault_env.execute("DROP TABLE aliases")
    vault_env.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"2",))

    reopened = vault_env.open()

    assert reopened.get("Patient-p1") == PATIENT
    reopened.remember("Patient-p1", [_alias("ins")])
    assert reopened.recall([_alias("ins")]) == {_alias("ins"): ["Patient-p1"]}
    [(version,)] = vault_env.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    assert bytes(version) == b"3"
