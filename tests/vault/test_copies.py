"""Copies shredded apart: a key set per (patient, custodian) under the patient key.

A hospital that holds its own care records of a patient (under legal retention) and copies
of other custodians' records must be able to erase the copies alone. Every test runs on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import orjson
import pytest

from medledger.vault import PatientErased, RecordConflict, Vault, VaultConfigError
from tests.vault.conftest import HOSPITAL, VaultEnv, make_pid

PID = make_pid("own-and-copies")
PARIS, LILLE = "hosp-paris", "hosp-lille"
OWN_TEXT, PARIS_TEXT, LILLE_TEXT = b"Own-Retained-Note", b"Paris-Copy-Note", b"Lille-Copy-Note"


def _resource(rid: str, text: bytes) -> bytes:
    return orjson.dumps(
        {"resourceType": "Observation", "id": rid, "note": [{"text": text.decode()}]}
    )


def _salt(rid: str) -> bytes:
    return rid.encode().ljust(32, b"#")  # the custodian's salt, received with its copy


def _fill(vault: Vault) -> None:
    """Own records, two copies of Paris's records and one of Lille's, for one patient."""
    for rid in ("Obs-own-1", "Obs-own-2"):
        vault.put(
            PID, rid, 1, _resource(rid, OWN_TEXT), resource_type="Observation", custodian=HOSPITAL
        )
    for custodian, text, rids in (
        (PARIS, PARIS_TEXT, ("Obs-paris-1", "Obs-paris-2")),
        (LILLE, LILLE_TEXT, ("Obs-lille-1",)),
    ):
        for rid in rids:
            vault.put(
                PID,
                rid,
                1,
                _resource(rid, text),
                resource_type="Observation",
                custodian=custodian,
                is_copy=True,
                salt=_salt(rid),
            )


def _pieces(vault_env: VaultEnv, custodian: str) -> list[bytes]:
    """Distinctive 24-byte pieces of one custodian's ciphertexts, salts and wrapped set key."""
    rows = vault_env.execute(
        "SELECT ciphertext, salt_ct FROM records WHERE pid = ? AND custodian = ?", (PID, custodian)
    )
    blobs = [bytes(b) for row in rows for b in row if b is not None]
    blobs += [
        bytes(r[0])
        for r in vault_env.execute(
            "SELECT wrapped FROM key_sets WHERE pid = ? AND custodian = ?", (PID, custodian)
        )
    ]
    return [b[4:28] for b in blobs]


def test_the_copies_of_one_custodian_are_shredded_apart(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    paris_pieces = _pieces(vault_env, PARIS)
    kept_pieces = _pieces(vault_env, HOSPITAL) + _pieces(vault_env, LILLE)
    assert len(paris_pieces) == 5  # 2 ciphertexts, 2 sealed salts, 1 wrapped set key
    before = vault_env.raw_bytes()
    assert all(p in before for p in paris_pieces + kept_pieces)

    receipt = vault.erase_copies(PID, PARIS)
    assert (receipt.records_shredded, receipt.copies_shredded) == (0, 2)
    assert receipt.copies_of == (PARIS,) and re.fullmatch(r"[0-9a-f]{64}", receipt.digest_hex)

    # Paris's copies, and the salts received with them, cannot be decrypted any more...
    for rid in ("Obs-paris-1", "Obs-paris-2"):
        with pytest.raises(PatientErased, match=PARIS):
            vault.get(rid)
        with pytest.raises(PatientErased):
            vault.salt(PID, rid, 1)
    # ...while the own records, Lille's copies and the metadata key stay readable.
    assert OWN_TEXT in vault.get("Obs-own-1")
    assert LILLE_TEXT in vault.get("Obs-lille-1")
    assert vault.salt(PID, "Obs-lille-1", 1) == _salt("Obs-lille-1")
    assert len(vault.metadata_key(PID)) == 32
    assert not vault.is_erased(PID) and vault.patients() == [PID]
    assert {i.rid for i in vault.records_of(PID)} == {"Obs-own-1", "Obs-own-2", "Obs-lille-1"}
    assert vault_env.execute("SELECT n_records, n_copies FROM patient_keys") == [(2, 1)]
    assert vault.erase_copies(PID, PARIS) == receipt  # idempotent: a retry gets the same proof

    report = vault.purge_pending()
    assert (report.patients, report.copy_sets, report.rows_deleted) == (0, 1, 2)
    after = vault_env.raw_bytes()
    assert [i for i, p in enumerate(paris_pieces) if p in after] == []
    assert PARIS_TEXT not in after
    assert all(p in after for p in kept_pieces)
    with pytest.raises(PatientErased):
        vault.get("Obs-paris-1")

    # A late sync cannot bring Paris's copies back unnoticed; reinstating is explicit.
    late = _resource("Obs-paris-3", PARIS_TEXT)
    copy: dict[str, Any] = {"resource_type": "Observation", "custodian": PARIS, "is_copy": True}
    with pytest.raises(PatientErased, match="reinstate"):
        vault.put(PID, "Obs-paris-3", 1, late, **copy)
    with pytest.raises(PatientErased):
        vault.put(PID, "Obs-paris-1", 2, late, **copy)  # nor an erased rid
    assert vault.reinstate(PID, custodian=PARIS) == 1
    vault.put(PID, "Obs-paris-3", 1, late, **copy)
    assert vault.get("Obs-paris-3") == late
    with pytest.raises(PatientErased):
        vault.get("Obs-paris-1")  # nothing erased became readable again


def test_all_copies_go_at_once_and_the_whole_patient_still_erases(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    receipt = vault.erase_copies(PID)
    assert receipt.copies_of == (LILLE, PARIS) and receipt.copies_shredded == 3
    assert [i.custodian for i in vault.records_of(PID)] == [HOSPITAL, HOSPITAL]
    assert vault_env.execute("SELECT COUNT(*) FROM key_sets") == [(1,)]  # the own set only

    whole = vault.erase(PID)
    assert (whole.records_shredded, whole.copies_shredded, whole.copies_of) == (2, 0, ())
    with pytest.raises(PatientErased):
        vault.get("Obs-own-1")
    with pytest.raises(PatientErased):
        vault.erase_copies(PID)
    report = vault.purge_pending()
    assert (report.patients, report.copy_sets, report.rows_deleted) == (1, 0, 5)
    assert vault_env.execute("SELECT COUNT(*) FROM key_sets") == [(0,)]
    assert vault_env.execute("SELECT COUNT(*) FROM records") == [(0,)]


def test_the_vault_says_whose_copies_it_refuses_until_reinstated(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    assert vault.copies_refused(PID, PARIS) is None  # never shredded
    vault.erase_copies(PID, PARIS)
    since = vault.copies_refused(PID, PARIS)
    assert since is not None and since.tzinfo is not None
    assert vault.copies_refused(PID, LILLE) is None  # Lille's copies are still taken
    vault.reinstate(PID, custodian=PARIS)
    assert vault.copies_refused(PID, PARIS) is None
    vault.erase_copies(PID, LILLE)
    vault.erase(PID)
    assert vault.copies_refused(PID, LILLE) is None  # erased as a whole: see is_erased
    with pytest.raises(ValueError, match="custodian"):
        vault.copies_refused(PID, "not a custodian!")


def test_a_rid_never_moves_between_key_sets(vault: Vault) -> None:
    _fill(vault)
    with pytest.raises(RecordConflict, match="another key set"):
        vault.put(
            PID,
            "Obs-own-1",
            2,
            _resource("Obs-own-1", PARIS_TEXT),
            resource_type="Observation",
            custodian=PARIS,
            is_copy=True,
        )


# ---------------------------------------------------------------- crashes


class _CrashAfter:
    """Wraps a backend; the named method runs, then the process 'dies' (an exception)."""

    def __init__(self, inner: Any, method: str, after_calls: int = 1):
        self._inner = inner
        self._method = method
        self._left = after_calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            self._left -= 1
            if self._left == 0:
                raise KeyboardInterrupt(f"crash after {name}")
            return result

        return call


def _crashing(vault: Vault, method: str, after_calls: int = 1) -> Any:
    backend = vault._backend  # the test breaks the store between two steps
    vault._backend = _CrashAfter(backend, method, after_calls)
    return backend


@pytest.mark.parametrize(
    ("method", "after_calls"),
    [("delete_set", 1), ("insert_copy_erasure", 1), ("delete_set", 2), ("update_key_counters", 1)],
)
def test_a_crash_while_shredding_copies_leaves_nothing_half_done(
    vault_env: VaultEnv, method: str, after_calls: int
) -> None:
    vault = vault_env.open()
    _fill(vault)
    keys_before = vault_env.execute("SELECT * FROM patient_keys")
    backend = _crashing(vault, method, after_calls)
    with pytest.raises(KeyboardInterrupt):
        vault.erase_copies(PID)
    vault._backend = backend
    # Rolled back as a whole: every set and counter as before, every copy readable.
    assert vault_env.execute("SELECT * FROM patient_keys") == keys_before
    assert vault_env.execute("SELECT COUNT(*) FROM key_sets") == [(3,)]
    assert vault_env.execute("SELECT COUNT(*) FROM copy_erasures") == [(0,)]
    assert PARIS_TEXT in vault.get("Obs-paris-2") and LILLE_TEXT in vault.get("Obs-lille-1")
    # and the retry does the whole job.
    assert vault.erase_copies(PID).copies_shredded == 3


def test_a_crash_while_purging_copies_is_finished_by_the_next_purge(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    _fill(vault)
    receipt = vault.erase_copies(PID, PARIS)
    backend = _crashing(vault, "purge_set")
    with pytest.raises(KeyboardInterrupt):
        vault.purge_pending()
    vault._backend = backend
    # The shredding had committed: still undecryptable; the purge is simply still due.
    with pytest.raises(PatientErased):
        vault.get("Obs-paris-1")
    assert vault_env.execute("SELECT COUNT(*) FROM records WHERE custodian = ?", (PARIS,)) == [(2,)]
    report = vault.purge_pending()
    assert (report.copy_sets, report.rows_deleted) == (1, 2)
    assert vault_env.execute("SELECT COUNT(*) FROM records WHERE custodian = ?", (PARIS,)) == [(0,)]
    assert vault.erase_copies(PID, PARIS) == receipt
    assert OWN_TEXT in vault.get("Obs-own-2")


# ------------------------------------------------------------ old vaults


def test_a_vault_of_the_old_schema_is_refused_with_a_clear_message(vault_env: VaultEnv) -> None:
    if vault_env.sqlite_path is not None:
        vault_env.sqlite_path.parent.mkdir(parents=True)
    blob = "BLOB" if vault_env.backend == "sqlite" else "BYTEA"
    vault_env.execute(f"CREATE TABLE meta (key TEXT PRIMARY KEY, value {blob} NOT NULL)")
    vault_env.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (b"1",))
    with pytest.raises(VaultConfigError, match="schema version 1.*needs version 3.*re-ingest"):
        vault_env.open()
    if vault_env.backend == "sqlite":
        assert vault_env.sqlite_path is not None
        conn = sqlite3.connect(vault_env.sqlite_path)
        try:  # refused before anything was written to it
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        finally:
            conn.close()
        assert tables == ["meta", "sqlite_autoindex_meta_1"]


def _calls_of_erase_copies(vault: Vault, pid: str) -> list[str]:
    calls: list[str] = []
    backend = vault._backend  # the test inspects the work erase_copies() asks for

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            attr = getattr(backend, name)
            if not callable(attr):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return attr(*args, **kwargs)

            return call

    vault._backend = Recorder()
    try:
        vault.erase_copies(pid, PARIS)
    finally:
        vault._backend = backend
    return calls


def test_shredding_copies_does_not_grow_with_the_number_of_copies(vault: Vault) -> None:
    """The ciphertext rows are only touched by the purge, as for a whole erasure."""
    small, large = make_pid("ten copies"), make_pid("thousand copies")
    for pid, n in ((small, 10), (large, 1000)):
        with vault.batch():
            vault.put(pid, f"{pid[:8]}-own", 1, _resource("own", OWN_TEXT), **_own())
            for i in range(n):
                rid = f"{pid[:8]}-{i}"
                vault.put(pid, rid, 1, _resource(rid, PARIS_TEXT), **_paris_copy())
    assert _calls_of_erase_copies(vault, small) == _calls_of_erase_copies(vault, large)
    assert vault.purge_pending().rows_deleted == 1010


def _own() -> dict[str, Any]:
    return {"resource_type": "Observation", "custodian": HOSPITAL}


def _paris_copy() -> dict[str, Any]:
    return {"resource_type": "Observation", "custodian": PARIS, "is_copy": True}
