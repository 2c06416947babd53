"""The storage interface the vault needs, implemented once per database.

Backends only move rows: they never see a key or a plaintext, and all the
vault's logic (encryption, checks, erasure) lives above them in vault.py, so
SQLite and PostgreSQL behave the same by construction. Each backend keeps all
of its SQL in its own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import orjson

from medledger.vault.models import (
    ErasureRow,
    KeyRow,
    ProvisionalUnit,
    RecordInfo,
    RecordRow,
    RidState,
)

SCHEMA_VERSION = 1


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

    def transaction(self) -> AbstractContextManager[None]:
        """Open a (possibly nested) transaction; commit on success, roll back on error."""
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

    def insert_record(self, row: RecordRow) -> bool:
        """Insert one record version; False if (rid, version) already exists."""
        ...

    def fetch_record(self, rid: str, version: int | None) -> tuple[RecordRow, bytes | None] | None:
        """The record version (latest if None) and the wrapped key of its generation.

        The key is None when that generation was erased but its rows are not
        purged yet. Reading both in one statement means a concurrent erasure
        is either fully seen or not at all.
        """
        ...

    def versions(self, rid: str) -> list[int]:
        """Stored versions of a rid, ascending."""
        ...

    def list_records(self, pid: str, generation: int, include_copies: bool) -> list[RecordInfo]:
        """Attributes of every stored version of one patient key generation, by (rid, version)."""
        ...

    def patients(self) -> list[str]:
        """Pids that have a live key, sorted."""
        ...

    def delete_record(self, rid: str, version: int) -> RecordRow | None:
        """Delete one record version; return the row deleted, or None if there was none."""
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
        """Tombstone the rids, delete the ciphertext rows and mark the erasure purged."""
        ...

    def compact(self) -> bool:
        """After a purge, ask the database to drop residual copies of freed bytes.

        SQLite: checkpoint and truncate the WAL (old frames hold the deleted key
        and ciphertexts). PostgreSQL: VACUUM the tables. Runs outside any
        transaction; returns False if the database could not complete it now
        (e.g. a reader holds an old snapshot), in which case a later purge retries.
        """
        ...


def record_from_row(row: Sequence[Any]) -> tuple[RecordRow, bytes | None]:
    """Decode the backends' record query: (rid, version, pid, generation, resource_type,
    custodian, is_copy, nonce, ciphertext, salt_ct, wrapped key or NULL once erased)."""
    record = RecordRow(
        rid=row[0],
        version=int(row[1]),
        pid=row[2],
        generation=int(row[3]),
        resource_type=row[4],
        custodian=row[5],
        is_copy=bool(row[6]),
        nonce=bytes(row[7]),
        ciphertext=bytes(row[8]),
        salt_ct=None if row[9] is None else bytes(row[9]),
    )
    return record, None if row[10] is None else bytes(row[10])


def info_from_row(row: Sequence[Any]) -> RecordInfo:
    """Decode (pid, rid, version, resource_type, custodian, is_copy)."""
    return RecordInfo(
        pid=row[0],
        rid=row[1],
        version=int(row[2]),
        resource_type=row[3],
        custodian=row[4],
        is_copy=bool(row[5]),
    )


def provisional_from_row(row: Sequence[Any]) -> ProvisionalUnit:
    """Decode (unit, claim or NULL, records JSON, updated_at)."""
    records = tuple((str(rid), int(version)) for rid, version in orjson.loads(bytes(row[2])))
    return ProvisionalUnit(
        unit=str(row[0]),
        claim=None if row[1] is None else bytes(row[1]),
        records=records,
        updated_at=float(row[3]),
    )
