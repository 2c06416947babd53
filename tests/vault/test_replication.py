"""The replication journal and format (vault/replication.py), on SQLite and PostgreSQL: every
change is journaled in its own transaction, items carry whole rows, and a fresh vault written
from the items serves the same bytes; a blob opens only as the item, owner and version it was
sealed for."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from medledger.vault import Vault, VaultConfig
from medledger.vault.replication import (
    ReplicaError,
    ReplicaKeys,
    bucket,
    item_name,
    parse_item_name,
)
from tests.vault.conftest import HOSPITAL, VaultEnv, make_pid
from tests.vault.test_erasure import NEEDLES, OTHER, PID, _fill


def items_of(vault: Vault) -> dict[str, dict[str, Any]]:
    found = vault.read_items(vault.item_names())
    return {name: rows for name, rows in found.items() if rows is not None}


def test_every_change_is_journaled_with_the_item_it_touched(vault: Vault) -> None:
    assert vault.journal_head() == 0
    _fill(vault)
    names = {name for _, name, _ in vault.changes(0, 1000)}
    assert item_name("key", PID) in names
    assert item_name("record", "Obs-1", 2) in names
    assert {parse_item_name(n)[0] for n in names} >= {"key", "set", "record"}
    head = vault.journal_head()

    vault.erase(PID)
    after = [name for _, name, _ in vault.changes(head, 1000)]
    assert item_name("key", PID) in after  # deleted: a drop at the peers
    assert item_name("erasure", PID, 1) in after  # the tombstone travels too
    assert vault.read_items([item_name("key", PID)]) == {item_name("key", PID): None}
    vault.purge_pending()
    purged = [name for _, name, _ in vault.changes(head, 1000)]
    assert item_name("record", "Obs-1", 1) in purged and item_name("shredded", "Obs-1") in purged


def test_a_failed_write_leaves_no_journal_entry(vault: Vault) -> None:
    _fill(vault)
    head = vault.journal_head()
    with pytest.raises(RuntimeError), vault.batch():
        vault.put(
            OTHER,
            "Obs-new",
            1,
            b'{"resourceType":"Observation"}',
            resource_type="Observation",
            custodian=HOSPITAL,
        )
        raise RuntimeError("crash before commit")
    assert vault.changes(head, 10) == []
    assert item_name("record", "Obs-new", 1) not in vault.item_names()


def test_the_journal_is_pruned_and_cursors_kept(vault: Vault) -> None:
    _fill(vault)
    head = vault.journal_head()
    vault.set_replica_peer("peer-a", head, 1.0, 1234)
    assert vault.replica_peers() == {"peer-a": (head, 1.0, 1234)}
    assert vault.replication_lag(0)[0] == head
    vault.prune_journal(head)
    assert vault.changes(0, 10) == [] and vault.replication_lag(head) == (0, None)


def test_a_fresh_vault_written_from_the_items_serves_the_same_bytes(
    vault_env: VaultEnv, tmp_path: Path
) -> None:
    vault = vault_env.open()
    _fill(vault)
    keys = ReplicaKeys(secrets.token_bytes(32), HOSPITAL)
    sealed = [keys.seal(name, rows, version=7) for name, rows in items_of(vault).items()]
    for s in sealed:
        for needle in NEEDLES:
            assert needle not in s.blob
    restored = dict(keys.open(s.id, s.version, s.blob) for s in sealed)

    fresh = Vault.open(VaultConfig(HOSPITAL, path=tmp_path / "restored.db", kek=vault_env.kek))
    try:
        fresh.write_items(restored)
        for pid in (PID, OTHER):
            infos = vault.records_of(pid)
            assert [i.rid for i in fresh.records_of(pid)] == [i.rid for i in infos]
            for info in infos:
                assert fresh.get(info.rid, info.version) == vault.get(info.rid, info.version)
                assert fresh.salt(pid, info.rid, info.version) == vault.salt(
                    pid, info.rid, info.version
                )
    finally:
        fresh.close()


def test_a_blob_opens_only_as_the_item_owner_and_version_it_was_sealed_for() -> None:
    backup_key = secrets.token_bytes(32)
    keys = ReplicaKeys(backup_key, HOSPITAL)
    rows = {"patient_keys": [[make_pid("x"), 1, b"wrapped", 0, 0, b""]]}
    sealed = keys.seal(item_name("key", make_pid("x")), rows, version=5)
    assert keys.open(sealed.id, 5, sealed.blob)[1] == rows
    other_id = keys.item_id(item_name("key", make_pid("y")))
    for item_id, version, owner in (
        (other_id, 5, HOSPITAL),
        (sealed.id, 6, HOSPITAL),
        (sealed.id, 5, "hosp-paris"),
    ):
        with pytest.raises(ReplicaError):
            ReplicaKeys(backup_key, owner).open(item_id, version, sealed.blob)
    with pytest.raises(ReplicaError):
        ReplicaKeys(secrets.token_bytes(32), HOSPITAL).open(sealed.id, 5, sealed.blob)


def test_sizes_are_padded_to_power_of_two_buckets() -> None:
    assert [bucket(n) for n in (0, 511, 512, 1000, 5000)] == [512, 512, 1024, 1024, 8192]
