"""Provisional units: records that count only once their registration elsewhere succeeds.

Ingestion stores a unit's records and marks them provisional in one vault transaction, before
the chain sees them; the unit is then confirmed or withdrawn. These tests run on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import pytest

from medledger.vault import RecordNotFound, UnitSettled, Vault, VaultError
from tests.vault.conftest import HOSPITAL, PATIENT, VaultEnv, make_pid, obs

PID = make_pid("provisional-1")


def _store_unit(vault: Vault, first_obs: int = 1) -> str:
    with vault.batch():
        vault.put(PID, "Patient-p1", 1, PATIENT, resource_type="Patient", custodian=HOSPITAL)
        vault.put(
            PID,
            f"Obs-{first_obs}",
            1,
            obs(first_obs),
            resource_type="Observation",
            custodian=HOSPITAL,
        )
        return vault.hold([("Patient-p1", 1), (f"Obs-{first_obs}", 1)])


def test_a_held_unit_survives_reopening_until_confirmed(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    unit = _store_unit(vault)
    vault.claim(unit, b"signed-tx-bytes")
    vault.close()

    reopened = vault_env.open()  # as after a crash: the unit and its records are still there
    [pending] = reopened.provisional()
    assert pending.unit == unit
    assert pending.claim == b"signed-tx-bytes"
    assert pending.records == (("Patient-p1", 1), ("Obs-1", 1))
    assert reopened.get("Patient-p1") == PATIENT

    reopened.confirm(unit)
    assert reopened.provisional() == []
    assert reopened.get("Obs-1") == obs(1)
    with pytest.raises(VaultError, match="already settled"):
        reopened.confirm(unit)


def test_withdraw_deletes_the_units_records_and_counts_them_out(vault: Vault) -> None:
    unit = _store_unit(vault)
    assert vault.withdraw(unit) == 2
    assert vault.provisional() == []
    for rid in ("Patient-p1", "Obs-1"):
        with pytest.raises(RecordNotFound):
            vault.get(rid)
    assert vault.patients() == []  # the unit brought the patient: no key row is left either
    # The rids are free again (a corrected file can be ingested with the same ids)...
    kept = _store_unit(vault, first_obs=2)
    vault.confirm(kept)
    # ...and the erasure receipt counts only what the key protected at the end.
    receipt = vault.erase(PID)
    assert (receipt.records_shredded, receipt.copies_shredded) == (2, 0)


def test_the_manifest_remembers_a_withdrawal(vault_env: VaultEnv) -> None:
    vault = vault_env.open()
    vault.put(PID, "Obs-9", 1, obs(9), resource_type="Observation", custodian=HOSPITAL)

    def key_state() -> tuple[int, bytes]:
        [(n, manifest)] = vault_env.execute(
            "SELECT n_records, manifest FROM patient_keys WHERE pid = ?", (PID,)
        )
        return int(n), bytes(manifest)

    before = key_state()
    unit = _store_unit(vault)
    held = key_state()
    vault.withdraw(unit)
    after = key_state()
    assert (before[0], held[0], after[0]) == (1, 3, 1)
    # The same records as before, but the running hash keeps the history.
    assert len({before[1], held[1], after[1]}) == 3


def test_hold_outside_a_batch_is_refused(vault: Vault) -> None:
    vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
    with pytest.raises(VaultError, match="inside the batch"):
        vault.hold([("Obs-1", 1)])


def test_a_failed_batch_leaves_neither_records_nor_unit(vault: Vault) -> None:
    with pytest.raises(RuntimeError), vault.batch():
        vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
        vault.hold([("Obs-1", 1)])
        raise RuntimeError("the chain refused")
    assert vault.provisional() == []
    with pytest.raises(RecordNotFound):
        vault.get("Obs-1")


def test_withdrawing_after_an_erasure_deletes_the_unreadable_rows(vault: Vault) -> None:
    unit = _store_unit(vault)
    vault.erase(PID)
    assert vault.withdraw(unit) == 2
    assert vault.provisional() == []


def test_settling_an_unknown_unit_names_it(vault: Vault) -> None:
    with pytest.raises(VaultError, match="provisional unit nope is unknown"):
        vault.withdraw("nope")
    with pytest.raises(VaultError, match="provisional unit nope is unknown"):
        vault.claim("nope", b"tx")


def test_a_unit_is_not_settled_on_a_claim_it_no_longer_holds(vault: Vault) -> None:
    """A reconciliation judged the old claim; the owner signed a newer tx meanwhile."""
    unit = _store_unit(vault)
    vault.claim(unit, b"tx-1")
    judged = vault.provisional()[0].claim
    vault.claim(unit, b"tx-2")  # the owner resends
    with pytest.raises(UnitSettled, match="newer claim"):
        vault.withdraw(unit, judged)
    assert vault.get("Obs-1") == obs(1)  # nothing was deleted
    with pytest.raises(UnitSettled, match="newer claim"):
        vault.confirm(unit, None)
    vault.confirm(unit, b"tx-2")
    assert vault.provisional() == []


def test_a_withdrawn_rid_purged_by_an_erasure_can_be_used_again(vault: Vault) -> None:
    unit = _store_unit(vault)
    receipt = vault.erase(PID, purge=True)  # the erasure destroyed the unit's records too
    assert receipt.records_shredded == 2
    assert vault.withdraw(unit) == 0
    vault.reinstate(PID)
    # Never registered anywhere, so no tombstone keeps the rid from a new ingestion.
    vault.put(PID, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
    assert vault.get("Obs-1") == obs(1)


def test_another_threads_batch_makes_a_claim_wait_not_fail(vault_env: VaultEnv) -> None:
    """Ingestion stores the next unit (a batch) while a thread registers the one before:
    that thread's claim and confirm wait for the batch instead of being refused as inside it."""
    import threading

    vault = vault_env.open()
    unit = _store_unit(vault)
    outcome: list[BaseException | None] = []

    def register() -> None:
        try:
            vault.claim(unit, b"signed-tx-bytes")
            vault.confirm(unit)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    with vault.batch():
        vault.put(PID, "Obs-9", 1, obs(9), resource_type="Observation", custodian=HOSPITAL)
        other = threading.Thread(target=register)
        other.start()
        other.join(0.2)  # it waits for the vault's lock, held by this batch
        assert outcome == []
        with pytest.raises(VaultError, match="inside a batch"):
            vault.claim(unit, b"x")  # this thread is inside it: refused as before
    other.join(30)
    assert outcome == [None]
    assert vault.provisional() == []


def _commit_level(vault: Vault, env: VaultEnv) -> str:
    """Whether the vault's connection commits now with a wait for the disk."""
    dialect = vault._backend.dialect  # type: ignore[attr-defined]
    if env.backend == "sqlite":
        level = dialect.execute("PRAGMA synchronous", ()).fetchone()[0]
        return {1: "no wait", 2: "waits"}[level]
    found = dialect.execute("SHOW synchronous_commit", ()).fetchone()[0]
    return {"off": "no wait", "on": "waits"}[found]


def test_a_batch_held_for_its_claim_commits_without_waiting_for_the_disk(
    vault_env: VaultEnv,
) -> None:
    """Ingestion's batch: its claim's durable commit, which follows, makes it durable (the
    database's log is written in order). Everything else commits at the configured level
    (the test PostgreSQL server's is `synchronous_commit=off` for speed)."""
    vault = vault_env.open()
    configured = _commit_level(vault, vault_env)
    seen = []
    with vault.batch(durable=False):
        vault.put(PID, "Patient-p1", 1, PATIENT, resource_type="Patient", custodian=HOSPITAL)
        seen.append(_commit_level(vault, vault_env))
        unit = vault.hold([("Patient-p1", 1)])
    with vault.batch():
        seen.append(_commit_level(vault, vault_env))
    assert seen == ["no wait", configured]
    assert _commit_level(vault, vault_env) == configured  # the connection's level is back
    assert vault_env.backend == "postgres" or configured == "waits"
    vault.claim(unit, b"signed-tx-bytes")
    vault.close()

    reopened = vault_env.open()
    assert [u.unit for u in reopened.provisional()] == [unit]
    assert reopened.get("Patient-p1") == PATIENT


def test_sync_writes_a_change_for_its_commit_to_carry(vault_env: VaultEnv) -> None:
    """A database syncs only a commit that wrote something."""
    vault = vault_env.open()
    vault.sync()
    first = vault_env.execute("SELECT value FROM meta WHERE key = 'touched'")
    vault.sync()
    assert vault_env.execute("SELECT value FROM meta WHERE key = 'touched'") != first
    with vault.batch(), pytest.raises(VaultError, match="inside a batch"):
        vault.sync()
