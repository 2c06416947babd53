"""`Vault.latest_records`: many patients' latest records in a few statements, as a study query
reads them, with `records_of` + `get`'s guarantees. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from medledger.vault import ReadKeys, Vault, VaultIntegrityError
from medledger.vault.keys import KeyRing
from tests.vault.conftest import HOSPITAL, VaultEnv, make_pid

ANNE, BRUNO, CLARA, NEVER = (make_pid(n) for n in ("anne", "bruno", "clara", "never-seen"))
PARIS = "hosp-paris"


def _json(resource_type: str, rid: str, **more: Any) -> bytes:
    return orjson.dumps({"resourceType": resource_type, "id": rid, **more})


def _put(vault: Vault, pid: str, rid: str, version: int, resource_type: str, **more: Any) -> None:
    custodian = more.pop("custodian", HOSPITAL)
    vault.put(
        pid,
        rid,
        version,
        _json(resource_type, rid, v=version),
        resource_type=resource_type,
        custodian=custodian,
        is_copy=custodian != HOSPITAL,
        salt=b"s" * 32 if custodian != HOSPITAL else None,
    )


def _fill(vault: Vault) -> None:
    """Anne: a Patient, a lab result in three versions, a condition, and a copy of Paris's
    lab result. Bruno: a Patient and a lab result, then erased. Clara: a lab result only."""
    _put(vault, ANNE, "pat-anne", 1, "Patient")
    for version in (1, 2, 3):
        _put(vault, ANNE, "lab-anne", version, "Observation")
    _put(vault, ANNE, "dx-anne", 1, "Condition")
    _put(vault, ANNE, "lab-paris", 1, "Observation", custodian=PARIS)
    _put(vault, BRUNO, "pat-bruno", 1, "Patient")
    _put(vault, BRUNO, "lab-bruno", 1, "Observation")
    vault.erase(BRUNO)
    _put(vault, CLARA, "lab-clara", 1, "Observation")


def _read(found: list[tuple[Any, bytes | None]]) -> list[tuple[str, str, int, Any]]:
    return [
        (info.pid, info.rid, info.version, None if data is None else orjson.loads(data)["v"])
        for info, data in found
    ]


def test_the_latest_own_version_of_each_record_erased_and_unknown_patients_give_nothing(
    vault: Vault,
) -> None:
    _fill(vault)
    found = list(vault.latest_records([CLARA, NEVER, BRUNO, ANNE], decrypt=["Observation"]))
    # In the order asked, rids ordered; the copy left out; only the last version of the lab.
    assert _read(found) == [
        (CLARA, "lab-clara", 1, 1),
        (ANNE, "dx-anne", 1, None),  # listed, never decrypted: not a type asked for
        (ANNE, "lab-anne", 3, 3),
        (ANNE, "pat-anne", 1, None),
    ]
    assert [info.resource_type for info, _ in found] == [
        "Observation",
        "Condition",
        "Observation",
        "Patient",
    ]
    # The bytes are those `get` gives for the same version.
    assert found[2][1] == vault.get("lab-anne", 3)


def test_types_restrict_the_listing_and_copies_come_only_when_asked(vault: Vault) -> None:
    _fill(vault)
    patients = vault.latest_records([ANNE, CLARA], decrypt=["Patient"], types=["Patient"])
    assert _read(list(patients)) == [(ANNE, "pat-anne", 1, 1)]
    with_copies = vault.latest_records(
        [ANNE], decrypt=["Observation"], types=["Observation"], include_copies=True
    )
    assert [(i.rid, i.is_copy, i.custodian) for i, _ in with_copies] == [
        ("lab-anne", False, HOSPITAL),
        ("lab-paris", True, PARIS),
    ]
    vault.erase_copies(ANNE, PARIS)  # shredded apart: gone even when copies are asked
    assert [i.rid for i, _ in vault.latest_records([ANNE], [], include_copies=True)] == [
        "dx-anne",
        "lab-anne",
        "pat-anne",
    ]


def test_a_reading_shares_its_unwrapped_keys_between_calls(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(vault)
    unwraps: list[str] = []
    real = KeyRing.unwrap

    def counted(self: KeyRing, pid: str, generation: int, wrapped: bytes) -> Any:
        unwraps.append(pid)
        return real(self, pid, generation, wrapped)

    monkeypatch.setattr(KeyRing, "unwrap", counted)
    keys = ReadKeys()
    list(vault.latest_records([ANNE, CLARA], decrypt=["Observation"], keys=keys))
    list(vault.latest_records([ANNE], decrypt=["Patient"], types=["Patient"], keys=keys))
    assert sorted(unwraps) == sorted([ANNE, CLARA])  # once each, for both calls
    # Nothing to decrypt: no key unwrapped at all.
    unwraps.clear()
    list(vault.latest_records([ANNE, CLARA], decrypt=[]))
    assert unwraps == []


def test_an_altered_ciphertext_is_refused_naming_the_record(
    vault_env: VaultEnv, vault: Vault
) -> None:
    _fill(vault)
    vault_env.execute(
        "UPDATE records SET resource_type = 'Observation' WHERE rid = 'dx-anne'"
    )  # a Condition relabelled to slip into a lab query: its AAD no longer matches
    with pytest.raises(VaultIntegrityError, match="dx-anne"):
        list(vault.latest_records([ANNE], decrypt=["Observation"]))


def test_a_long_list_of_patients_is_read_in_chunks(vault: Vault) -> None:
    pids = [make_pid(f"p{n}") for n in range(450)]  # more than one statement's worth
    for n, pid in enumerate(pids):
        _put(vault, pid, f"lab-{n}", 1, "Observation")
    found = list(vault.latest_records(reversed(pids), decrypt=["Observation"]))
    assert [info.pid for info, _ in found] == list(reversed(pids))
    assert all(data is not None for _, data in found)
