"""The sealed research digest: one row per patient, the facts of their latest own records.

A vault opened with a digester (the node's) refreshes a patient's digest in the transaction
that writes their own records; any other write (a vault of older code, a withdrawal, a
restore) leaves it stale, and a stale digest never opens: it is rebuilt from the records.
Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from medledger.vault import Vault
from tests.vault.conftest import HOSPITAL, VaultEnv

PARIS = "hosp-paris"


class Marks:
    """A digester that keeps each record's type and marker, and counts its calls."""

    version = "marks/1"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, resource: dict[str, Any]) -> Any:
        self.calls += 1
        return [resource["resourceType"], resource.get("marker", "")]


def put(vault: Vault, pid: str, rid: str, version: int, marker: str, **more: Any) -> None:
    custodian = more.get("custodian", HOSPITAL)
    vault.put(
        pid,
        rid,
        version,
        orjson.dumps({"resourceType": "Observation", "id": rid, "marker": marker}),
        resource_type="Observation",
        custodian=custodian,
        is_copy=custodian != HOSPITAL,
        salt=None if custodian == HOSPITAL else b"s" * 32,
    )


def rows(env: VaultEnv, pid: str) -> int:
    return int(env.execute("SELECT COUNT(*) FROM research_digests WHERE pid = ?", (pid,))[0][0])


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
    assert rows(vault_env, anne) == 1 and rows(vault_env, bruno) == 0
    written = marks.calls

    found = dict(vault.research_digests([bruno, anne, pid_factory("never")], marks))

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
    assert rows(vault_env, anne) == 1  # the row is still there, sealed for version 1

    assert dict(node.research_digests([anne], marks)) == {anne: [["Observation", "corrected"]]}
    # ... rebuilt and stored: the node's next write folds into it.
    put(node, anne, "lab-2", 1, "second")
    calls = marks.calls
    found = dict(node.research_digests([anne], marks))
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
    anne_row = vault_env.execute("SELECT sealed FROM research_digests WHERE pid = ?", (anne,))
    vault_env.execute(
        "UPDATE research_digests SET sealed = ? WHERE pid = ?", (anne_row[0][0], bruno)
    )
    assert dict(vault.research_digests([bruno], marks)) == {bruno: [["Observation", "bruno's"]]}

    class Newer(Marks):
        version = "marks/2"

        def __call__(self, resource: dict[str, Any]) -> Any:
            return [resource["marker"].upper()]

    assert dict(vault.research_digests([anne], Newer())) == {anne: [["ANNE'S"]]}


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
    assert len(dict(vault.research_digests([anne], marks))[anne]) == 2
    vault.withdraw(unit)

    assert dict(vault.research_digests([anne], marks)) == {anne: [["Observation", "registered"]]}


def test_erasure_deletes_the_digest_and_no_fact_survives(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    vault = vault_env.open()
    vault.digester = marks
    anne, bruno = pid_factory("anne"), pid_factory("bruno")
    put(vault, anne, "lab-1", 1, "anne-secret-marker")
    put(vault, bruno, "lab-2", 1, "bruno stays")
    assert rows(vault_env, anne) == 1

    vault.erase(anne, purge=True)

    assert rows(vault_env, anne) == 0
    assert dict(vault.research_digests([anne, bruno], marks)) == {
        bruno: [["Observation", "bruno stays"]]
    }
    assert rows(vault_env, anne) == 0  # a reader does not bring it back
    assert b"anne-secret-marker" not in vault_env.raw_bytes()
    # Back after an erasure: a new generation, a new digest of the new records only.
    vault.reinstate(anne)
    put(vault, anne, "lab-3", 1, "new data")
    assert dict(vault.research_digests([anne], marks)) == {anne: [["Observation", "new data"]]}


def test_a_vault_made_before_the_digests_opens_and_builds_them_when_read(
    vault_env: VaultEnv, pid_factory: Callable[[str], str]
) -> None:
    marks = Marks()
    anne = pid_factory("anne")
    old = vault_env.open()
    put(old, anne, "lab-1", 1, "before the digests")
    old.close()
    vault_env.execute("DROP TABLE research_digests")  # the shape older code made

    vault = vault_env.open()
    vault.digester = marks
    assert vault.digest_count() == 0
    put(vault, anne, "lab-2", 1, "after")  # stale (none yet): left to the first reader
    assert rows(vault_env, anne) == 0

    found = dict(vault.research_digests([anne], marks))

    assert found == {anne: [["Observation", "before the digests"], ["Observation", "after"]]}
    assert rows(vault_env, anne) == 1


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
