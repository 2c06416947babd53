"""The vault's behaviour, run identically on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest

from medledger.vault import (
    RecordConflict,
    RecordInfo,
    RecordNotFound,
    UnknownPatient,
    Vault,
    VaultConfigError,
    VaultIntegrityError,
    WrongKEKError,
)
from tests.vault.conftest import HOSPITAL, PATIENT, VaultEnv, make_pid, obs

PID = make_pid("patient-1")
OTHER = make_pid("patient-2")

OBSERVATION = (
    b'{"resourceType": "Observation", "id": "o1", "status": "final", '
    b'"code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}, '
    b'"valueQuantity": {"value": 7.91, "unit": "%"}, "note": [{"text": "Xanthoprotein-Marmalade"}]}'
)


def put_patient(vault: Vault, pid: str = PID, rid: str = "Patient-p1", version: int = 1) -> None:
    vault.put(pid, rid, version, PATIENT, resource_type="Patient", custodian=HOSPITAL)


# ------------------------------------------------------------------ round trip


def test_round_trip_returns_the_exact_bytes(vault: Vault) -> None:
    stored = vault.put(PID, "Patient-p1", 1, PATIENT, resource_type="Patient", custodian=HOSPITAL)
    vault.put(PID, "Obs-1", 1, OBSERVATION, resource_type="Observation", custodian=HOSPITAL)
    assert vault.get("Patient-p1") == PATIENT
    assert vault.get("Obs-1", 1) == OBSERVATION
    fields = (stored.pid, stored.rid, stored.version, stored.resource_type, stored.custodian)
    assert fields == (PID, "Patient-p1", 1, "Patient", HOSPITAL) and stored.is_copy is False
    assert stored.salt.hex() not in repr(stored)
    assert len(stored.salt) == 32
    assert vault.salt(PID, "Patient-p1", 1) == stored.salt
    assert vault.info("Obs-1") == RecordInfo(PID, "Obs-1", 1, "Observation", HOSPITAL, False)


def test_bytes_survive_reopening(vault_env: VaultEnv) -> None:
    first = vault_env.open()
    put_patient(first)
    salt = first.salt(PID, "Patient-p1", 1)
    mkey = first.metadata_key(PID)
    first.close()
    second = vault_env.open()
    assert second.get("Patient-p1") == PATIENT
    assert second.salt(PID, "Patient-p1", 1) == salt
    assert second.metadata_key(PID) == mkey


def test_versions_latest_and_specific(vault: Vault) -> None:
    v1, v2, v5 = obs(1, "first"), obs(1, "second"), obs(1, "fifth")
    vault.put(PID, "Obs-1", 1, v1, resource_type="Observation", custodian=HOSPITAL)
    vault.put(PID, "Obs-1", 2, v2, resource_type="Observation", custodian=HOSPITAL)
    vault.put(PID, "Obs-1", 5, v5, resource_type="Observation", custodian=HOSPITAL)
    assert vault.versions("Obs-1") == [1, 2, 5]
    assert vault.get("Obs-1") == v5
    assert vault.get("Obs-1", 2) == v2
    assert vault.get("Obs-1", 1) == v1
    with pytest.raises(RecordNotFound):
        vault.get("Obs-1", 3)
    with pytest.raises(RecordNotFound):
        vault.get("nope")
    with pytest.raises(RecordNotFound):
        vault.versions("nope")
    salts = {vault.salt(PID, "Obs-1", v) for v in (1, 2, 5)}
    assert len(salts) == 3


def test_versions_are_immutable_and_rids_belong_to_one_patient(vault: Vault) -> None:
    vault.put(PID, "Obs-1", 2, obs(1), resource_type="Observation", custodian=HOSPITAL)
    with pytest.raises(RecordConflict):
        vault.put(PID, "Obs-1", 2, obs(1, "changed"), resource_type="Observation", custodian="x")
    with pytest.raises(RecordConflict):
        vault.put(PID, "Obs-1", 1, obs(1, "older"), resource_type="Observation", custodian="x")
    with pytest.raises(RecordConflict, match="another patient"):
        vault.put(OTHER, "Obs-1", 3, obs(1), resource_type="Observation", custodian=HOSPITAL)
    assert vault.get("Obs-1") == obs(1)
    assert vault.versions("Obs-1") == [2]
    assert vault.patients() == [PID]  # the refused put did not leave a key for OTHER


def test_records_of_patients_and_copies(vault: Vault) -> None:
    put_patient(vault)
    vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
    vault.put(PID, "Obs-1", 2, obs(1), resource_type="Observation", custodian=HOSPITAL)
    custodian_salt = secrets.token_bytes(32)
    vault.put(
        PID,
        "Obs-remote",
        3,
        obs(9),
        resource_type="Observation",
        custodian="hosp-paris",
        is_copy=True,
        salt=custodian_salt,
    )
    vault.put(OTHER, "Obs-9", 1, obs(2), resource_type="Observation", custodian=HOSPITAL)
    assert vault.patients() == sorted([PID, OTHER])
    assert vault.records_of(PID) == [
        RecordInfo(PID, "Obs-1", 1, "Observation", HOSPITAL, False),
        RecordInfo(PID, "Obs-1", 2, "Observation", HOSPITAL, False),
        RecordInfo(PID, "Obs-remote", 3, "Observation", "hosp-paris", True),
        RecordInfo(PID, "Patient-p1", 1, "Patient", HOSPITAL, False),
    ]
    assert [r.rid for r in vault.records_of(PID, include_copies=False)] == [
        "Obs-1",
        "Obs-1",
        "Patient-p1",
    ]
    assert vault.records_of(make_pid("never-seen")) == []
    assert vault.salt(PID, "Obs-remote", 3) == custodian_salt  # the custodian's, kept encrypted
    with pytest.raises(RecordNotFound):
        vault.salt(OTHER, "Obs-1", 1)  # right record, wrong patient


def test_metadata_key(vault: Vault) -> None:
    put_patient(vault)
    vault.put(OTHER, "Obs-9", 1, obs(2), resource_type="Observation", custodian=HOSPITAL)
    key = vault.metadata_key(PID)
    assert len(key) == 32
    assert key == vault.metadata_key(PID)
    assert key != vault.metadata_key(OTHER)
    assert key != vault.salt(PID, "Patient-p1", 1)
    with pytest.raises(UnknownPatient):
        vault.metadata_key(make_pid("never-seen"))


def test_no_clear_value_is_stored(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    put_patient(vault)
    vault.put(PID, "Obs-1", 1, OBSERVATION, resource_type="Observation", custodian=HOSPITAL)
    raw = vault_env.raw_bytes()
    for needle in (b"Zephyrine-Quasimodo", b"Brunehaut", b"1961-02-29", b"4548-4", b"7.91"):
        assert needle not in raw
    for needle in (b"Xanthoprotein-Marmalade", b"loinc"):
        assert needle not in raw
    assert PID.encode() in raw  # the scan does see the clear columns
    if vault_env.backend == "postgres":
        disk = vault_env.disk_bytes()
        assert PID.encode() in disk
        assert b"Zephyrine-Quasimodo" not in disk and b"Xanthoprotein-Marmalade" not in disk


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "pid",
    ["185057800604832", "Zephyrine Quasimodo", "A" * 64, "", "g" * 64, "a" * 63],
)
def test_clear_identifiers_are_refused_as_pid(vault: Vault, pid: str) -> None:
    with pytest.raises(ValueError, match="pseudonym"):
        vault.put(pid, "Patient-p1", 1, PATIENT, resource_type="Patient", custodian=HOSPITAL)
    assert vault.patients() == []


def test_bad_inputs_are_refused(vault: Vault) -> None:
    ok: dict[str, Any] = {"resource_type": "Observation", "custodian": HOSPITAL}
    with pytest.raises(ValueError, match="not valid JSON"):
        vault.put(PID, "Obs-1", 1, b'{"resourceType": "Observation",', **ok)
    with pytest.raises(ValueError, match="JSON object"):
        vault.put(PID, "Obs-1", 1, b"[1, 2]", **ok)
    with pytest.raises(ValueError, match="does not match"):
        vault.put(PID, "Obs-1", 1, PATIENT, **ok)
    with pytest.raises(TypeError):
        vault.put(PID, "Obs-1", 1, OBSERVATION.decode(), **ok)  # type: ignore[arg-type]
    for version in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match="version"):
            vault.put(PID, "Obs-1", version, OBSERVATION, **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rid"):
        vault.put(PID, "has space", 1, OBSERVATION, **ok)
    with pytest.raises(ValueError, match="resource type"):
        vault.put(PID, "Obs-1", 1, OBSERVATION, resource_type="observation", custodian=HOSPITAL)
    with pytest.raises(ValueError, match="salt"):
        vault.put(PID, "Obs-1", 1, OBSERVATION, salt=b"s" * 32, **ok)
    assert vault.patients() == []


# ------------------------------------------------------------------- tampering


def _one(env: VaultEnv, sql: str, params: tuple[object, ...] = ()) -> Any:
    rows = env.execute(sql, params)
    assert len(rows) == 1
    return rows[0][0]


def test_changed_ciphertext_fails_loudly(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    vault.put(PID, "Obs-1", 1, OBSERVATION, resource_type="Observation", custodian=HOSPITAL)
    ct = bytearray(_one(vault_env, "SELECT ciphertext FROM records WHERE rid = 'Obs-1'"))
    ct[10] ^= 0x01
    vault_env.execute("UPDATE records SET ciphertext = ? WHERE rid = 'Obs-1'", (bytes(ct),))
    with pytest.raises(VaultIntegrityError, match="Obs-1 version 1") as info:
        vault.get("Obs-1")
    assert (info.value.rid, info.value.version) == ("Obs-1", 1)
    # a truncated ciphertext (tag cut off) too
    vault_env.execute("UPDATE records SET ciphertext = ? WHERE rid = 'Obs-1'", (bytes(ct[:5]),))
    with pytest.raises(VaultIntegrityError):
        vault.get("Obs-1")


def test_changed_nonce_fails_loudly(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    vault.put(PID, "Obs-1", 1, OBSERVATION, resource_type="Observation", custodian=HOSPITAL)
    nonce = bytearray(_one(vault_env, "SELECT nonce FROM records WHERE rid = 'Obs-1'"))
    assert len(nonce) == 12
    nonce[0] ^= 0x80
    vault_env.execute("UPDATE records SET nonce = ? WHERE rid = 'Obs-1'", (bytes(nonce),))
    with pytest.raises(VaultIntegrityError, match="Obs-1 version 1"):
        vault.get("Obs-1")
    vault_env.execute("UPDATE records SET nonce = ? WHERE rid = 'Obs-1'", (b"short",))
    with pytest.raises(VaultIntegrityError):
        vault.get("Obs-1")


def test_associated_data_mismatch_fails_loudly(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    vault.put(PID, "Obs-1", 1, obs(1, "one"), resource_type="Observation", custodian=HOSPITAL)
    vault.put(PID, "Obs-2", 1, obs(2, "two"), resource_type="Observation", custodian=HOSPITAL)
    vault.put(PID, "Obs-3", 1, obs(3, "three"), resource_type="Observation", custodian=HOSPITAL)
    vault.put(OTHER, "Obs-9", 1, obs(9, "nine"), resource_type="Observation", custodian=HOSPITAL)

    # relabel a version: the ciphertext of version 1 presented as version 7
    vault_env.execute("UPDATE records SET version = 7 WHERE rid = 'Obs-1'")
    with pytest.raises(VaultIntegrityError, match="Obs-1 version 7"):
        vault.get("Obs-1", 7)

    # move a ciphertext (with its nonce) to another rid of the same patient
    ct, nonce = vault_env.execute("SELECT ciphertext, nonce FROM records WHERE rid = 'Obs-2'")[0]
    vault_env.execute(
        "UPDATE records SET ciphertext = ?, nonce = ? WHERE rid = 'Obs-3'", (ct, nonce)
    )
    with pytest.raises(VaultIntegrityError, match="Obs-3 version 1"):
        vault.get("Obs-3")
    assert vault.get("Obs-2") == obs(2, "two")

    # change a clear attribute bound into the associated data
    vault_env.execute("UPDATE records SET resource_type = 'Condition' WHERE rid = 'Obs-2'")
    with pytest.raises(VaultIntegrityError, match="Obs-2"):
        vault.get("Obs-2")

    # reassign a record to another patient (whose key then unwraps, but cannot decrypt)
    vault_env.execute("UPDATE records SET pid = ? WHERE rid = 'Obs-9'", (PID,))
    with pytest.raises(VaultIntegrityError, match="Obs-9"):
        vault.get("Obs-9")


def test_changed_wrapped_key_fails_loudly(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    vault.put(PID, "Obs-1", 1, OBSERVATION, resource_type="Observation", custodian=HOSPITAL)
    wrapped = bytearray(_one(vault_env, "SELECT wrapped FROM patient_keys WHERE pid = ?", (PID,)))
    wrapped[20] ^= 0x04
    vault_env.execute("UPDATE patient_keys SET wrapped = ? WHERE pid = ?", (bytes(wrapped), PID))
    with pytest.raises(VaultIntegrityError):
        vault.get("Obs-1")
    with pytest.raises(VaultIntegrityError):
        vault.metadata_key(PID)


def test_wrong_kek_is_refused(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    put_patient(vault)
    vault.close()
    with pytest.raises(WrongKEKError, match="not the one"):
        vault_env.open(kek=secrets.token_bytes(32))
    # Even with the stored fingerprint forged, the wrong KEK cannot unwrap anything.
    wrong = secrets.token_bytes(32)
    from medledger.vault.keys import kek_fingerprint

    vault_env.execute(
        "UPDATE meta SET value = ? WHERE key = 'kek_fingerprint'", (kek_fingerprint(wrong),)
    )
    forged = vault_env.open(kek=wrong)
    with pytest.raises(VaultIntegrityError, match="wrong KEK"):
        forged.get("Patient-p1")
    with pytest.raises(VaultIntegrityError):
        forged.put(PID, "Obs-1", 1, OBSERVATION, resource_type="Observation", custodian=HOSPITAL)


def test_other_hospital_id_is_refused(vault_env: VaultEnv) -> None:
    with pytest.raises(ValueError, match="hospital id"):
        vault_env.open(hospital_id="")
    vault_env.open().close()
    with pytest.raises(VaultConfigError, match="belongs to hospital"):
        vault_env.open(hospital_id="hosp-marseille")


# ---------------------------------------------------------------------- batches


def test_batch_commits_all_together(vault: Vault) -> None:
    with vault.batch():
        put_patient(vault)
        vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
        vault.put(OTHER, "Obs-9", 1, obs(9), resource_type="Observation", custodian=HOSPITAL)
    assert vault.get("Patient-p1") == PATIENT
    assert vault.get("Obs-9") == obs(9)
    assert vault.patients() == sorted([PID, OTHER])


def test_batch_rollback_leaves_nothing(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    vault.put(OTHER, "Obs-9", 1, obs(9), resource_type="Observation", custodian=HOSPITAL)
    before = vault_env.execute(
        "SELECT n_records, manifest FROM patient_keys WHERE pid = ?", (OTHER,)
    )

    class BundleRejected(Exception):
        pass

    with pytest.raises(BundleRejected), vault.batch():
        put_patient(vault)  # new patient: its key row is created in the batch
        vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
        vault.put(OTHER, "Obs-9", 2, obs(9, "v2"), resource_type="Observation", custodian=HOSPITAL)
        raise BundleRejected("entry 4: reference to nothing")

    for rid in ("Patient-p1", "Obs-1"):
        with pytest.raises(RecordNotFound):
            vault.get(rid)
    assert vault.versions("Obs-9") == [1]
    assert vault.patients() == [OTHER]
    assert vault.records_of(PID) == []
    assert vault_env.execute("SELECT COUNT(*) FROM records")[0][0] == 1
    assert vault_env.execute("SELECT COUNT(*) FROM patient_keys")[0][0] == 1
    after = vault_env.execute(
        "SELECT n_records, manifest FROM patient_keys WHERE pid = ?", (OTHER,)
    )
    assert after == before


def test_failed_put_inside_batch_is_undone_alone(vault: Vault) -> None:
    with vault.batch():
        put_patient(vault)
        with pytest.raises(RecordConflict):
            put_patient(vault)  # same version again
        vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
    assert vault.versions("Patient-p1") == [1]
    assert vault.get("Obs-1") == obs(1)
    assert [r.rid for r in vault.records_of(PID)] == ["Obs-1", "Patient-p1"]


def test_nested_batches_join_the_outer_one(vault: Vault) -> None:
    with pytest.raises(RuntimeError), vault.batch():
        with vault.batch():
            put_patient(vault)
        raise RuntimeError("outer fails after inner finished")
    assert vault.patients() == []


# ------------------------------------------------------------------ concurrency


def test_concurrent_writers_keep_counters_consistent(vault_env: VaultEnv) -> None:
    """Two connections (two workers) writing one patient at once: nothing lost."""
    vaults = [vault_env.open(), vault_env.open()]
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for i in range(25):
                vaults[w].put(
                    PID, f"Obs-{w}-{i}", 1, obs(i), resource_type="Observation", custodian=HOSPITAL
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(vaults[0].records_of(PID)) == 50
    assert vault_env.execute("SELECT n_records FROM patient_keys WHERE pid = ?", (PID,)) == [(50,)]
    assert all(vaults[1].get(f"Obs-{w}-{i}") == obs(i) for w in range(2) for i in range(25))
