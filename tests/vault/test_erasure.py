"""Crypto-shredding: what erase() destroys, what is left, and that its work is O(1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from medledger.vault import PatientErased, RecordConflict, Vault, VaultError
from tests.vault.conftest import HOSPITAL, VaultEnv, make_pid

PID = make_pid("erase-me")
OTHER = make_pid("keep-me")
NEEDLES = [b"Zephyrine-Quasimodo", b"Brunehaut", b"Xanthoprotein-Marmalade", b"Quetzal-Ombudsman"]


def _resource(resource_type: str, rid: str, text: str) -> bytes:
    return orjson.dumps({"resourceType": resource_type, "id": rid, "note": [{"text": text}]})


def _fill(vault: Vault) -> None:
    patient = (
        b'{"resourceType":"Patient","id":"p1","name":[{"family":"Zephyrine-Quasimodo",'
        b'"given":["Brunehaut"]}]}'
    )
    vault.put(PID, "Patient-p1", 1, patient, resource_type="Patient", custodian=HOSPITAL)
    for version, text in ((1, "Xanthoprotein-Marmalade"), (2, "Xanthoprotein-Marmalade v2")):
        vault.put(
            PID,
            "Obs-1",
            version,
            _resource("Observation", "Obs-1", text),
            resource_type="Observation",
            custodian=HOSPITAL,
        )
    vault.put(
        PID,
        "Cond-remote",
        1,
        _resource("Condition", "Cond-remote", "Quetzal-Ombudsman"),
        resource_type="Condition",
        custodian="hosp-paris",
        is_copy=True,
    )
    vault.put(
        OTHER,
        "Obs-keep",
        1,
        _resource("Observation", "Obs-keep", "Keeper-Lighthouse"),
        resource_type="Observation",
        custodian=HOSPITAL,
    )


def _chunks(blobs: list[bytes]) -> list[bytes]:
    """Distinctive 24-byte pieces of ciphertexts/keys, to look for in raw storage."""
    return [b[4:28] for b in blobs]


def test_erase_destroys_keys_salts_and_ciphertexts(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    wrapped = vault_env.execute("SELECT wrapped FROM patient_keys WHERE pid = ?", (PID,))[0][0]
    cts = [r[0] for r in vault_env.execute("SELECT ciphertext FROM records WHERE pid = ?", (PID,))]
    kept_ct = vault_env.execute("SELECT ciphertext FROM records WHERE pid = ?", (OTHER,))[0][0]
    assert len(cts) == 4
    before = vault_env.raw_bytes()
    assert all(c in before for c in _chunks([*cts, wrapped, kept_ct]))  # the scan sees them
    assert not any(n in before for n in NEEDLES)  # and plaintext was never stored

    t0 = datetime.now(UTC)
    receipt = vault.erase(PID)
    assert (receipt.pid, receipt.hospital_id, receipt.generation) == (PID, HOSPITAL, 1)
    assert (receipt.records_shredded, receipt.copies_shredded) == (3, 1)
    assert t0 - timedelta(seconds=1) <= receipt.erased_at <= datetime.now(UTC)
    assert re.fullmatch(r"[0-9a-f]{64}", receipt.digest_hex)

    # The commit point: the key row is gone, nothing of the patient can be derived any more.
    assert vault_env.execute("SELECT COUNT(*) FROM patient_keys WHERE pid = ?", (PID,)) == [(0,)]
    for rid in ("Patient-p1", "Obs-1", "Cond-remote"):
        with pytest.raises(PatientErased) as info:
            vault.get(rid)
        assert info.value.pid == PID
    with pytest.raises(PatientErased):
        vault.get("Obs-1", 1)
    with pytest.raises(PatientErased):
        vault.salt(PID, "Obs-1", 1)
    with pytest.raises(PatientErased):
        vault.metadata_key(PID)
    with pytest.raises(PatientErased):
        vault.records_of(PID)
    assert vault.patients() == [OTHER]
    assert vault.is_erased(PID) and not vault.is_erased(OTHER)
    # The undecryptable ciphertext rows wait for the purge...
    assert vault_env.execute("SELECT COUNT(*) FROM records WHERE pid = ?", (PID,)) == [(4,)]

    report = vault.purge_pending()
    assert (report.patients, report.rows_deleted, report.storage_compacted) == (1, 4, True)
    assert vault_env.execute("SELECT COUNT(*) FROM records WHERE pid = ?", (PID,)) == [(0,)]
    for rid in ("Patient-p1", "Obs-1", "Cond-remote"):
        with pytest.raises(PatientErased):
            vault.get(rid)
    with pytest.raises(PatientErased):
        vault.versions("Obs-1")

    # ...after which the raw storage holds none of the patient's bytes, not even encrypted.
    after = vault_env.raw_bytes()
    assert [n for n in NEEDLES if n in after] == []
    left = [i for i, chunk in enumerate(_chunks([*cts, wrapped])) if chunk in after]
    assert left == [], "ciphertext (0-3) or wrapped key (4) bytes left in raw storage"
    assert _chunks([kept_ct])[0] in after
    assert b"Keeper-Lighthouse" in vault.get("Obs-keep")
    if vault_env.backend == "postgres":
        disk = vault_env.disk_bytes()  # data folder, WAL included, after a CHECKPOINT
        assert _chunks([kept_ct])[0] in disk
        assert not any(n in disk for n in NEEDLES)

    assert vault.purge_pending().rows_deleted == 0


def test_erase_is_idempotent(vault: Vault) -> None:
    _fill(vault)
    first = vault.erase(PID)
    again = vault.erase(PID)
    assert again == first
    vault.purge_pending()
    assert vault.erase(PID) == first
    other = vault.erase(OTHER)
    assert other.digest != first.digest and other.records_shredded == 1


def test_erase_with_purge_removes_rows_at_once(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    vault.erase(PID, purge=True)
    assert vault_env.execute("SELECT COUNT(*) FROM records WHERE pid = ?", (PID,)) == [(0,)]
    assert vault_env.execute("SELECT COUNT(*) FROM records") == [(1,)]
    assert vault.purge_pending().patients == 0


def test_erase_of_unknown_pid_leaves_a_tombstone(vault: Vault) -> None:
    pid = make_pid("never-here")
    receipt = vault.erase(pid)
    assert (receipt.records_shredded, receipt.copies_shredded, receipt.generation) == (0, 0, 0)
    with pytest.raises(PatientErased, match="reinstate"):
        vault.put(pid, "Obs-late", 1, b"{}", resource_type="Observation", custodian="hosp-paris")
    assert vault.patients() == []


def test_put_after_erase_is_refused_until_reinstated(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    old_mkey = vault.metadata_key(PID)
    vault.erase(PID)
    with pytest.raises(PatientErased, match="reinstate"):
        vault.put(PID, "Obs-new", 1, b"{}", resource_type="Observation", custodian=HOSPITAL)

    assert vault.reinstate(PID) == 2
    assert vault.reinstate(PID) == 2  # already live: no new generation
    assert not vault.is_erased(PID)
    assert vault.records_of(PID) == []  # the erased generation is not visible again
    assert vault.metadata_key(PID) != old_mkey
    for rid in ("Patient-p1", "Obs-1"):
        with pytest.raises(PatientErased):
            vault.get(rid)
        with pytest.raises(PatientErased):  # an erased rid is never reused
            vault.put(PID, rid, 9, b"{}", resource_type="Observation", custodian=HOSPITAL)
    vault.put(PID, "Obs-new", 1, b'{"a": 1}', resource_type="Observation", custodian=HOSPITAL)
    assert vault.get("Obs-new") == b'{"a": 1}'
    with pytest.raises(RecordConflict, match="another patient"):
        vault.put(OTHER, "Obs-new", 2, b"{}", resource_type="Observation", custodian=HOSPITAL)

    receipt = vault.erase(PID)
    assert (receipt.generation, receipt.records_shredded) == (2, 1)
    with pytest.raises(PatientErased):
        vault.get("Obs-new")


def test_erase_refused_inside_a_batch(vault: Vault) -> None:
    _fill(vault)
    with pytest.raises(VaultError, match="batch"), vault.batch():
        vault.erase(PID)
    assert b"Zephyrine" in vault.get("Patient-p1")


# ------------------------------------------------------ erase does O(1) work


class _Recorder:
    """Wraps a backend and logs which of its methods are called."""

    def __init__(self, inner: Any, log: list[str]):
        self._inner = inner
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append(name)
            return attr(*args, **kwargs)

        return call


def _patient_with(vault: Vault, pid: str, n: int) -> None:
    with vault.batch():
        for i in range(n):
            vault.put(
                pid,
                f"{pid[:8]}-{i}",
                1,
                _resource("Observation", str(i), f"value {i}"),
                resource_type="Observation",
                custodian=HOSPITAL,
            )


def _erase_trace(vault: Vault, pid: str) -> tuple[list[str], list[str]]:
    calls: list[str] = []
    statements: list[str] = []
    backend = vault._backend  # the test inspects the work erase() asks for
    conn = getattr(backend, "_conn", None)
    is_sqlite = backend.name == "sqlite"
    if is_sqlite:
        conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    vault._backend = _Recorder(backend, calls)
    try:
        receipt = vault.erase(pid)
    finally:
        vault._backend = backend
        if is_sqlite:
            conn.set_trace_callback(None)  # type: ignore[union-attr]
    assert receipt.records_shredded in (10, 1000)
    return calls, statements


def test_erase_work_does_not_grow_with_the_number_of_records(vault: Vault) -> None:
    """Erase of 10 and of 1,000 records asks the database for exactly the same O(1) work.

    (Timings are measured in bench/bench_vault.py, not asserted here.)
    """
    small, large = make_pid("ten"), make_pid("thousand")
    _patient_with(vault, small, 10)
    _patient_with(vault, large, 1000)
    calls_small, sql_small = _erase_trace(vault, small)
    calls_large, sql_large = _erase_trace(vault, large)
    assert calls_small == calls_large
    # The research digest's row goes too: one row, by its primary key.
    expected = {"transaction", "lock_key", "delete_key", "delete_digest", "insert_erasure"}
    assert set(calls_small) == expected
    if vault.backend_name == "sqlite":

        def normalise(sql: str) -> str:
            return re.sub(r"'[^']*'|X'[0-9A-Fa-f]*'|\d+", "?", sql)

        assert [normalise(s) for s in sql_small] == [normalise(s) for s in sql_large]
        assert not any(re.search(r"\brecords\b", s) for s in sql_large), sql_large
        assert any(s.startswith("DELETE FROM patient_keys") for s in sql_large)
    assert vault.purge_pending().rows_deleted == 1010
