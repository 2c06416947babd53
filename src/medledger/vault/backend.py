"""The storage interface the vault needs, implemented once per database.

Backends only move rows: they never see a key or a plaintext, and all the
vault's logic (encryption, checks, erasure) lives above them in vault.py, so
SQLite and PostgreSQL behave the same by construction. Both run the one SQL
body in sql.py; sqlite_backend.py and postgres_backend.py hold only what their
database does its own way.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from medledger.vault.models import (
    CopyErasureRow,
    ErasureRow,
    KeyRow,
    ProvisionalUnit,
    RecordInfo,
    RecordRow,
    RidState,
    SetRow,
)

SCHEMA_VERSION = 3
# Version 3 adds the aliases table (senders' ids and identifiers -> rid): a version-2 vault is
# migrated on open by creating it (empty: what was stored before is still found by rid and
# by its patient's pid). Version 1 kept one data key per patient for own records and copies
# alike. Version 2 (key sets per patient and custodian) changes how every record is
# encrypted, so a version-1 vault cannot be converted without its plaintexts: it is refused.
MIGRATES_FROM = frozenset({2})
SCHEMA_REFUSAL = (
    "this vault has schema version {found}; this medledger needs version {needed} (a key set "
    "per patient and custodian, so that copies can be erased apart). There is no in-place "
    "migration: move the old vault away and re-ingest the hospital's records"
)


class Backend(Protocol):
    """Row storage for one hospital's vault.

    Contract shared by all implementations:
    - `transaction()` nests: the outermost level is a real transaction (taking
      the write lock up front where the database allows), inner levels are
      savepoints, so a failed put inside a batch can be undone alone.
    - Methods that write are only called inside `transaction()`.
    - `lock_key` holds the patient's key row (or its absence) stable until the
      transaction ends, so puts and erasures of one patient are serialised.
    """

    name: str
    #: Whether `lock_key` locks the row only (PostgreSQL), not the whole store as a
    #: transaction already does (SQLite): a caller that locks several patients' keys then
    #: takes one per transaction, never waiting for one while holding another.
    row_locks: bool

    def transaction(self, durable: bool = True) -> AbstractContextManager[None]:
        """Open a (possibly nested) transaction; commit on success, roll back on error.

        `durable=False` (outermost level; nested levels follow theirs): the commit returns
        before it reaches the disk. A crash of the process loses nothing; a power cut may
        lose it, and then every commit after it too, never a part of one (the database's
        log is written in order): it becomes durable with the next durable commit.
        """
        ...

    def close(self) -> None:
        """Release the connection."""
        ...

    def get_meta(self, key: str) -> bytes | None:
        """Read one vault-wide setting (schema version, hospital id, KEK fingerprint)."""
        ...

    def set_meta_if_absent(self, key: str, value: bytes) -> None:
        """Record a vault-wide setting the first time the vault is opened."""
        ...

    def touch(self) -> None:
        """Write a row of no meaning (`meta`'s `touched`): a change for a durable commit to
        carry (`Vault.sync`)."""
        ...

    def lock_key(self, pid: str) -> KeyRow | None:
        """Read and lock the patient's live key row."""
        ...

    def read_key(self, pid: str) -> KeyRow | None:
        """Read the patient's live key row without locking it."""
        ...

    def insert_key(self, row: KeyRow) -> bool:
        """Insert a key row; False if the pid already has one (a concurrent put won)."""
        ...

    def update_key_counters(
        self, pid: str, generation: int, n_records: int, n_copies: int, manifest: bytes
    ) -> None:
        """Store the running record counts and manifest hash on the key row."""
        ...

    def delete_key(self, pid: str, generation: int) -> bool:
        """Delete the key row: the crypto-shredding commit point. O(1), by primary key."""
        ...

    def lock_set(self, pid: str, generation: int, custodian: str, is_copy: bool) -> SetRow | None:
        """The live key set of (patient, generation, custodian, copy flag), if any.

        Called after lock_key in the same transaction, which already serialises writers
        of the patient.
        """
        ...

    def read_set(self, kid: str) -> SetRow | None:
        """A live key set by its id."""
        ...

    def sets_of(self, pid: str, generation: int) -> list[SetRow]:
        """Every live key set of one patient key generation, by (is_copy, custodian)."""
        ...

    def insert_set(self, row: SetRow) -> bool:
        """Insert a key set; False if that (pid, generation, custodian, copy flag) has one."""
        ...

    def update_set_counters(self, kid: str, n_records: int, manifest: bytes) -> None:
        """Store the set's running record count and manifest hash."""
        ...

    def delete_set(self, kid: str) -> bool:
        """Delete a key set row: the commit point of shredding copies apart. By primary key."""
        ...

    def delete_sets(self, pid: str, generation: int) -> None:
        """Delete every key set row of a patient key generation (the patient key is gone)."""
        ...

    def insert_copy_erasure(self, row: CopyErasureRow) -> None:
        """Write the tombstone of a copy set shredded apart."""
        ...

    def copy_erasures(
        self, pid: str, generation: int, custodian: str | None
    ) -> list[CopyErasureRow]:
        """Tombstones of copy sets shredded at this generation (of one custodian, or all)."""
        ...

    def pending_copy_erasures(self) -> list[tuple[str, str]]:
        """(kid, pid) of copy sets shredded whose ciphertext rows are not purged yet."""
        ...

    def purge_set(self, kid: str) -> int:
        """Tombstone the set's rids, delete its ciphertext rows, mark its erasure purged."""
        ...

    def latest_erasure(self, pid: str) -> ErasureRow | None:
        """The most recent erasure tombstone of the pid, if any."""
        ...

    def insert_erasure(self, row: ErasureRow) -> None:
        """Write an erasure tombstone."""
        ...

    def rid_state(self, rid: str) -> RidState | None:
        """Owner, key generation and latest version of a rid (locking it where needed)."""
        ...

    def shredded_owner(self, rid: str) -> str | None:
        """The pid of a rid whose rows were purged after an erasure, if it is one."""
        ...

    def rid_states(self, rids: list[str]) -> dict[str, RidState]:
        """`rid_state` of each rid that has records (locking each where needed)."""
        ...

    def shredded_owners(self, rids: list[str]) -> dict[str, str]:
        """`shredded_owner` of each rid that has one."""
        ...

    def insert_records(self, rows: list[RecordRow]) -> bool:
        """Insert record versions; False if any (rid, version) already existed."""
        ...

    def fetch_record(
        self, rid: str, version: int | None
    ) -> tuple[RecordRow, bytes | None, bytes | None] | None:
        """The record version (latest if None), the wrapped patient key of its generation
        and the wrapped key of its key set.

        A key is None when it was erased (the patient, or the copy set) but the
        rows are not purged yet. Reading all in one statement means a concurrent
        erasure is either fully seen or not at all.
        """
        ...

    def fetch_records(
        self, versions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[RecordRow, bytes | None, bytes | None]]:
        """`fetch_record` of each (rid, version) that exists."""
        ...

    def fetch_latest(
        self,
        pids: list[str],
        types: list[str] | None,
        decrypt: list[str] | None,
        include_copies: bool,
    ) -> list[tuple[RecordRow, bytes, bytes]]:
        """The latest version of each record of these patients' live key generations (of
        `types` only, unless None), with its live wrapped keys (patient, set); the records of
        an erased patient and copies shredded apart are left out. The ciphertext only of the
        types in `decrypt` (b"" for the others; every one when None). In no particular
        order."""
        ...

    def digest_sources(
        self, pids: list[str], categories: list[str]
    ) -> list[tuple[str, int, bytes, str, bytes, int, dict[str, bytes]]]:
        """Per patient of `pids` with a live key and an own key set: (pid, generation, wrapped
        patient key, own set's kid, own set's manifest and record count, {category: sealed
        row} of the research digest's rows of these `categories` that exist)."""
        ...

    def own_states(self, pids: list[str]) -> dict[str, tuple[int, str, bytes]]:
        """Per patient of `pids` with a live key and an own key set: (generation, own set's
        kid, its manifest), what a research digest's index is bound to."""
        ...

    def read_digests(
        self, pid: str, generation: int, categories: list[str] | None, limit: int | None = None
    ) -> dict[str, bytes | None]:
        """The patient generation's research digest rows of these categories (None: all);
        a row longer than `limit` bytes as None, unread."""
        ...

    def put_digests(
        self, pid: str, generation: int, rows: dict[str, bytes | None], only: bool
    ) -> None:
        """Store (replace; None: delete) these rows of the patient's research digest, unless
        that key row is gone; `only`: delete the patient's other rows first."""
        ...

    def delete_digest(self, pid: str) -> None:
        """Forget the patient's research digest, every row (erasure, withdrawal)."""
        ...

    def count_digests(self) -> int:
        """How many patients' research digests are stored (their index rows)."""
        ...

    def versions(self, rid: str) -> list[int]:
        """Stored versions of a rid, ascending."""
        ...

    def list_records(self, pid: str, generation: int, include_copies: bool) -> list[RecordInfo]:
        """Attributes of every stored version of one patient key generation whose key set is
        live (copies shredded apart are left out), by (rid, version)."""
        ...

    def patients(self) -> list[str]:
        """Pids that have a live key, sorted."""
        ...

    def has_patient_besides(self, pid: str) -> bool:
        """True when some pid other than `pid` has a live key (one indexed row read)."""
        ...

    def delete_record(self, rid: str, version: int) -> RecordRow | None:
        """Delete one record version; return the row deleted, or None if there was none."""
        ...

    def insert_aliases(self, rows: list[tuple[bytes, str, int, str]]) -> None:
        """Remember (alias, rid, version that brought it, pid); an alias already naming that
        rid is left as it is."""
        ...

    def find_aliases(self, aliases: list[bytes]) -> list[tuple[bytes, str]]:
        """(alias, rid) for each of the aliases that names a rid of a live (not erased) key."""
        ...

    def delete_aliases(self, rid: str, version: int) -> None:
        """Forget the aliases a withdrawn record version brought."""
        ...

    # A provisional unit's records are a JSON list of [rid, version] (see ProvisionalUnit).

    def insert_provisional(self, unit: str, records: bytes, updated_at: float) -> None:
        """Start a provisional unit (no claim yet)."""
        ...

    def set_provisional_claim(self, unit: str, claim: bytes, updated_at: float) -> bool:
        """Record the unit's claim; False if the unit is not (or no longer) provisional."""
        ...

    def lock_provisional(self, unit: str) -> ProvisionalUnit | None:
        """Read one unit and hold it stable until the transaction ends."""
        ...

    def forget_shredded(self, rid: str) -> None:
        """Drop a rid's erasure tombstone (a withdrawn rid that was never registered)."""
        ...

    def delete_provisional(self, unit: str) -> bool:
        """Forget a settled unit; False if it was not there."""
        ...

    def list_provisional(self) -> list[ProvisionalUnit]:
        """Every provisional unit, oldest first."""
        ...

    def pending_erasures(self) -> list[tuple[str, int]]:
        """(pid, generation) pairs erased but whose ciphertext rows are not purged yet."""
        ...

    def purge(self, pid: str, generation: int) -> int:
        """Tombstone the rids, delete the ciphertext rows and the generation's key set rows,
        and mark the erasure (and the generation's copy erasures) purged."""
        ...

    def compact(self) -> bool:
        """After a purge, ask the database to drop residual copies of freed bytes.

        SQLite: checkpoint and truncate the WAL (old frames hold the deleted key
        and ciphertexts). PostgreSQL: VACUUM the tables. Runs outside any
        transaction; returns False if the database could not complete it now
        (e.g. a reader holds an old snapshot), in which case a later purge retries.
        """
        ...

    # -- replication journal: every write above notes the item it changed (replication.py)
    def journal_head(self) -> int:
        """The last change's sequence number (0: none)."""
        ...

    def changes(self, after: int, limit: int) -> list[tuple[int, str, float]]:
        """(seq, item name, time) of the changes after `after`, oldest first."""
        ...

    def lag(self, after: int) -> tuple[int, float | None]:
        """How many changes follow `after`, and the time of the oldest."""
        ...

    def prune_journal(self, upto: int) -> None:
        """Forget the changes up to `upto`."""
        ...

    def replica_peers(self) -> dict[str, tuple[int, float, int]]:
        """peer -> (last sequence acknowledged, when, bytes held there)."""
        ...

    def set_replica_peer(self, peer: str, acked_seq: int, acked_at: float, held: int) -> None:
        """Record what `peer` acknowledged."""
        ...

    def item_names(self) -> list[str]:
        """Every replicated item held now."""
        ...

    def read_item(self, name: str) -> dict[str, list[list[Any]]] | None:
        """An item's rows by table; None once deleted."""
        ...

    def write_item(self, name: str, content: dict[str, list[list[Any]]]) -> None:
        """Write an item's rows (a restore into a fresh vault)."""
        ...

    def delete_item(self, name: str) -> None:
        """Delete an item's rows (a restore trying another version of it)."""
        ...
