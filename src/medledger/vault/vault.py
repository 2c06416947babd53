"""One hospital's off-chain vault: encrypted FHIR records and crypto-shredding.

The vault knows nothing of the ledger. It stores each record version as
AES-256-GCM ciphertext under a per-patient data key (see keys.py), gives the
chain-index code what it needs to publish commitments and encrypted metadata
(per-record salts, the per-patient metadata key), and erases a patient by
destroying the one row that holds their wrapped key.

Erasure, and why it takes constant time
---------------------------------------
erase(pid) runs one short transaction: read the key row, delete it by primary
key, write a tombstone. That DELETE is the commit point: from then on no
record, salt or metadata key of the patient can be derived, whatever the
number of records, because they all came from that key. The ciphertext rows,
now undecryptable, are deleted later by purge_pending() (one indexed DELETE
per erased patient, then a WAL truncation on SQLite / VACUUM on PostgreSQL),
which is the only step whose cost grows with the number of records. The
receipt's digest is computed from counters and a running manifest hash kept on
the key row, so it needs no scan either.

Provisional units
-----------------
Records that count only once registered elsewhere (ingestion registers them
on the chain) are stored and marked provisional (hold) in one transaction,
before the registration is sent; the unit keeps the signed registration
(claim) and is settled by confirm() or withdraw(). So a crash at any point
leaves either nothing, or the records plus what is needed to learn how their
registration ended: never a registration whose records are gone.

Policy after erasure: a put for an erased pid is refused (PatientErased) so
that a sync agent or a late message cannot silently bring the patient back.
If the patient comes back to the hospital, reinstate(pid) must be called
explicitly: it creates a new key generation for new data only; nothing erased
becomes readable again, and erased rids can never be reused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

import orjson

from medledger.vault.backend import Backend
from medledger.vault.envelope import (
    EMPTY_MANIFEST,
    RecordContext,
    extend_manifest,
    open_record,
    open_salt,
    seal_record,
    seal_salt,
    withdraw_from_manifest,
)
from medledger.vault.errors import (
    PatientErased,
    RecordConflict,
    RecordNotFound,
    UnitSettled,
    UnknownPatient,
    VaultConfigError,
    VaultError,
    WrongKEKError,
)
from medledger.vault.keys import DEFAULT_KEK_ENV, KeyRing, PatientKeys, encode_fields, load_kek
from medledger.vault.models import (
    ErasureReceipt,
    ErasureRow,
    KeyRow,
    ProvisionalUnit,
    PurgeReport,
    RecordInfo,
    RecordRow,
    StoredRecord,
)


class _Any:
    """The default of `confirm`/`withdraw`'s claim: settle whatever the unit holds."""


_ANY = _Any()

#: A pid is an HMAC-SHA256 pseudonym: 64 lowercase hex digits, or 43 base64url characters.
#: Anything else (an INS, a name, a local MRN) is refused, because pids are stored in clear.
DEFAULT_PID_PATTERN = r"[0-9a-f]{64}|[A-Za-z0-9_-]{43}"
_RID_RE = re.compile(r"[\x21-\x7e]{1,256}")
_RESOURCE_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_CUSTODIAN_RE = re.compile(r"[\x21-\x7e]{1,128}")
_LABEL_ERASURE = b"medledger/vault/v1/erasure"
_UNWRAPPED_CACHE = 1024


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """Where a hospital's vault lives and where its KEK comes from.

    backend="sqlite" needs `path` (the database file, e.g. under the hospital's
    home); backend="postgres" needs `dsn` (a libpq connection string). The KEK
    is `kek` when given (tests, a future KMS), else read from `kek_path`, else
    from the environment variable `kek_env`.
    """

    hospital_id: str
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path | None = None
    dsn: str | None = field(default=None, repr=False)
    kek_path: Path | None = None
    kek_env: str = DEFAULT_KEK_ENV
    kek: bytes | None = field(default=None, repr=False)
    sqlite_synchronous: str = "FULL"
    pid_pattern: str = DEFAULT_PID_PATTERN


def _check(regex: re.Pattern[str], value: object, what: str) -> str:
    if not isinstance(value, str) or regex.fullmatch(value) is None:
        raise ValueError(f"invalid {what}: {value!r:.80}")
    return value


class Vault:
    """A hospital's encrypted record store. Thread-safe; one instance per process is enough.

    Use as a context manager, or call close(). Every public method is atomic;
    `with vault.batch():` makes several puts atomic together.
    """

    def __init__(
        self, backend: Backend, keyring: KeyRing, *, pid_pattern: str = DEFAULT_PID_PATTERN
    ):
        _check(_CUSTODIAN_RE, keyring.hospital_id, "hospital id")
        self._backend = backend
        self._keyring = keyring
        self._pid_re = re.compile(pid_pattern)
        self._lock = threading.RLock()
        self._batch_depth = 0
        self._compact_due = False
        self._unwrapped: dict[tuple[str, int, bytes], PatientKeys] = {}
        self._bind_meta()

    @classmethod
    def open(cls, config: VaultConfig) -> Vault:
        """Load the KEK, connect the configured backend, and check the KEK and hospital id."""
        kek = config.kek if config.kek is not None else load_kek(config.kek_path, config.kek_env)
        keyring = KeyRing(kek, config.hospital_id)
        backend: Backend
        if config.backend == "sqlite":
            if config.path is None:
                raise VaultConfigError("the sqlite vault backend needs a path")
            from medledger.vault.sqlite_backend import SQLiteBackend

            backend = SQLiteBackend(Path(config.path), synchronous=config.sqlite_synchronous)
        elif config.backend == "postgres":
            if not config.dsn:
                raise VaultConfigError("the postgres vault backend needs a dsn")
            from medledger.vault.postgres_backend import PostgresBackend

            backend = PostgresBackend(config.dsn)
        else:
            raise VaultConfigError(f"unknown vault backend {config.backend!r}")
        try:
            return cls(backend, keyring, pid_pattern=config.pid_pattern)
        except BaseException:
            backend.close()
            raise

    def _bind_meta(self) -> None:
        """Tie the database to this hospital and KEK on first open; refuse a mismatch later."""
        with self._backend.transaction():
            self._backend.set_meta_if_absent("hospital_id", self.hospital_id.encode())
            self._backend.set_meta_if_absent("kek_fingerprint", self._keyring.fingerprint)
        stored_hospital = self._backend.get_meta("hospital_id")
        if stored_hospital != self.hospital_id.encode():
            raise VaultConfigError(
                f"this vault belongs to hospital {stored_hospital!r}, not {self.hospital_id!r}"
            )
        stored_fp = self._backend.get_meta("kek_fingerprint")
        if stored_fp != self._keyring.fingerprint:
            raise WrongKEKError(
                f"the KEK given (fingerprint {self._keyring.fingerprint.hex()}) is not the one "
                f"this vault was created with ({(stored_fp or b'').hex()})"
            )

    @property
    def hospital_id(self) -> str:
        """The hospital this vault belongs to (bound into every key and ciphertext)."""
        return self._keyring.hospital_id

    @property
    def backend_name(self) -> str:
        """'sqlite' or 'postgres'."""
        return self._backend.name

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._backend.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers

    def _pid(self, pid: object) -> str:
        if not isinstance(pid, str) or self._pid_re.fullmatch(pid) is None:
            raise ValueError(
                "invalid pid: expected a pseudonym (HMAC-SHA256 as 64 hex digits or 43 base64url "
                "characters); a clear identifier must never reach the vault's clear columns"
            )
        return pid

    def _keys(self, pid: str, generation: int, wrapped: bytes) -> PatientKeys:
        """Unwrap a patient key, remembering it for the next records of the same patient.

        The cache is keyed by the wrapped bytes read from the store, so it can only ever
        answer for a key row that still exists; erase() also forgets the patient's entry.
        """
        cache_key = (pid, generation, wrapped)
        keys = self._unwrapped.get(cache_key)
        if keys is None:
            keys = self._keyring.unwrap(pid, generation, wrapped)
            if len(self._unwrapped) >= _UNWRAPPED_CACHE:
                self._unwrapped.clear()
            self._unwrapped[cache_key] = keys
        return keys

    def _ctx(self, row: RecordRow) -> RecordContext:
        return RecordContext(
            hospital_id=self.hospital_id,
            pid=row.pid,
            rid=row.rid,
            version=row.version,
            resource_type=row.resource_type,
            custodian=row.custodian,
            is_copy=row.is_copy,
        )

    def _live_key_for_write(self, pid: str) -> KeyRow:
        """The patient's key row, locked; created on first use; refused after an erasure."""
        key = self._backend.lock_key(pid)
        if key is not None:
            return key
        if self._backend.latest_erasure(pid) is not None:
            raise PatientErased(
                pid,
                f"patient {pid} was erased; call reinstate(pid) before storing new data for them",
            )
        return self._create_key(pid, generation=1)

    def _create_key(self, pid: str, generation: int) -> KeyRow:
        row = KeyRow(
            pid=pid,
            generation=generation,
            wrapped=self._keyring.new_wrapped_key(pid, generation),
            n_records=0,
            n_copies=0,
            manifest=EMPTY_MANIFEST,
        )
        if self._backend.insert_key(row):
            return row
        existing = self._backend.lock_key(pid)  # a concurrent writer created it first
        if existing is None:
            raise VaultError(f"the key of patient {pid} vanished while being created; retry")
        return existing

    def _fetch_row(self, rid: str, version: int | None) -> tuple[RecordRow, bytes]:
        """The record row and its live wrapped key, or the precise reason there is none."""
        found = self._backend.fetch_record(rid, version)
        if found is None:
            owner = self._backend.shredded_owner(rid)
            if owner is not None:
                raise PatientErased(owner, f"record {rid} belonged to an erased patient")
            raise RecordNotFound(rid, version)
        row, wrapped = found
        if wrapped is None:
            raise PatientErased(row.pid, f"record {rid} belongs to an erased patient")
        return row, wrapped

    def _fetch(self, rid: str, version: int | None) -> tuple[RecordRow, PatientKeys]:
        row, wrapped = self._fetch_row(rid, version)
        return row, self._keys(row.pid, row.generation, wrapped)

    # ------------------------------------------------------------------ batch

    @contextmanager
    def batch(self) -> Iterator[Vault]:
        """Make every put inside the block atomic together: all stored, or none.

        Meant for one FHIR bundle. Other threads wait for the batch to finish.
        A put that fails inside the batch is undone alone (savepoint); if the
        exception leaves the block, the whole batch is rolled back.
        """
        with self._lock, self._backend.transaction():
            self._batch_depth += 1
            try:
                yield self
            finally:
                self._batch_depth -= 1

    def _refuse_in_batch(self, what: str) -> None:
        if self._batch_depth:
            raise VaultError(f"{what} cannot run inside a batch: it must commit on its own")

    # ------------------------------------------------------------ put and get

    def put(
        self,
        pid: str,
        rid: str,
        version: int,
        resource_json: bytes,
        *,
        resource_type: str,
        custodian: str,
        is_copy: bool = False,
        salt: bytes | None = None,
    ) -> StoredRecord:
        """Encrypt and store one version of a FHIR resource, exactly the bytes given.

        The JSON is checked to be an object whose resourceType (if present)
        equals `resource_type`, but it is stored as received, never
        re-serialised. Versions of a rid are immutable and must increase; a
        rid belongs to one patient for ever. `is_copy` marks a record held for
        another custodian; for a copy, `salt` may carry the custodian's salt
        (kept encrypted under the patient's key) so its chain commitment can be
        re-checked later. Returns the record's attributes and the salt of its
        commitment.
        """
        pid = self._pid(pid)
        _check(_RID_RE, rid, "rid")
        _check(_RESOURCE_TYPE_RE, resource_type, "resource type")
        _check(_CUSTODIAN_RE, custodian, "custodian")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**62:
            raise ValueError(f"invalid version {version!r}: a positive integer is required")
        if not isinstance(resource_json, bytes | bytearray | memoryview):
            raise TypeError("resource_json must be the JSON bytes as received")
        data = bytes(resource_json)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"record {rid} version {version}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"record {rid} version {version}: a FHIR resource is a JSON object")
        declared = doc.get("resourceType")
        if declared is not None and declared != resource_type:
            raise ValueError(
                f"record {rid} version {version}: resourceType {declared!r} "
                f"does not match resource_type {resource_type!r}"
            )
        if salt is not None and (not is_copy or not 16 <= len(salt) <= 64):
            raise ValueError("a salt may only be given for a copy, and must be 16 to 64 bytes")

        with self._lock, self._backend.transaction():
            key = self._live_key_for_write(pid)
            state = self._backend.rid_state(rid)
            if state is None:
                owner = self._backend.shredded_owner(rid)
                if owner is not None:
                    raise PatientErased(owner, f"rid {rid} belonged to an erased patient")
            elif state.pid != pid:
                raise RecordConflict(
                    f"rid {rid} belongs to another patient", rid=rid, version=version
                )
            elif state.generation != key.generation:
                raise PatientErased(pid, f"rid {rid} belongs to this patient's erased data")
            elif version <= state.max_version:
                raise RecordConflict(
                    f"rid {rid}: version {version} is not above the stored version "
                    f"{state.max_version}; stored versions are immutable",
                    rid=rid,
                    version=version,
                )
            keys = self._keys(pid, key.generation, key.wrapped)
            ctx = RecordContext(
                hospital_id=self.hospital_id,
                pid=pid,
                rid=rid,
                version=version,
                resource_type=resource_type,
                custodian=custodian,
                is_copy=bool(is_copy),
            )
            nonce, ciphertext = seal_record(keys, ctx, data)
            row = RecordRow(
                rid=rid,
                version=version,
                pid=pid,
                generation=key.generation,
                resource_type=resource_type,
                custodian=custodian,
                is_copy=bool(is_copy),
                nonce=nonce,
                ciphertext=ciphertext,
                salt_ct=None if salt is None else seal_salt(keys, ctx, salt),
            )
            if not self._backend.insert_record(row):
                raise RecordConflict(
                    f"record {rid} version {version} already exists", rid=rid, version=version
                )
            self._backend.update_key_counters(
                pid,
                key.generation,
                key.n_records + (0 if is_copy else 1),
                key.n_copies + (1 if is_copy else 0),
                extend_manifest(key.manifest, ctx, ciphertext),
            )
        return StoredRecord(
            pid=pid,
            rid=rid,
            version=version,
            resource_type=resource_type,
            custodian=custodian,
            is_copy=bool(is_copy),
            salt=salt if salt is not None else keys.salt(rid, version),
        )

    # ------------------------------------------------------ provisional units

    def hold(self, records: list[tuple[str, int]]) -> str:
        """Mark record versions stored in this batch as provisional; return the unit's id.

        For records that count only once registered elsewhere (ingestion registers them on
        the chain). Called inside the batch that stores them, so the records and the unit
        commit together: after a crash, the unit says what may need to be withdrawn.
        Settle it with `confirm` or `withdraw`.
        """
        if not self._batch_depth:
            raise VaultError("hold() must be called inside the batch that stores the records")
        if not records:
            raise ValueError("a provisional unit needs at least one record version")
        unit = secrets.token_hex(16)
        body = orjson.dumps([[rid, int(version)] for rid, version in records])
        with self._lock, self._backend.transaction():
            self._backend.insert_provisional(unit, body, time.time())
        return unit

    def claim(self, unit: str, claim: bytes) -> None:
        """Keep, durably, what registers the unit (a signed tx) before it is sent."""
        self._refuse_in_batch("claim")
        with self._lock, self._backend.transaction():
            if not self._backend.set_provisional_claim(unit, bytes(claim), time.time()):
                raise UnitSettled(f"provisional unit {unit} is unknown or already settled")

    def confirm(self, unit: str, claim: bytes | None | _Any = _ANY) -> None:
        """The registration succeeded: the unit's records are ordinary records from now on.

        With `claim`, only if the unit still holds that claim (see `withdraw`); raises
        UnitSettled if the unit is gone or holds another claim.
        """
        self._refuse_in_batch("confirm")
        with self._lock, self._backend.transaction():
            self._settling(unit, claim)
            self._backend.delete_provisional(unit)

    def withdraw(self, unit: str, claim: bytes | None | _Any = _ANY) -> int:
        """The registration failed: delete the unit's record versions; return how many.

        One transaction: the versions go, the patient's counters go down and the manifest
        records the withdrawal, and the unit is forgotten. A patient the unit brought (no
        record left, never erased) loses the key row too. Versions of an erased patient are
        already unreadable and are simply deleted, with the tombstone of a rid they brought.
        With `claim`, only if the unit still holds the claim that was judged: an owner that
        signed a newer tx meanwhile keeps its records (UnitSettled is raised).
        """
        self._refuse_in_batch("withdraw")
        with self._lock, self._backend.transaction():
            held = self._settling(unit, claim)
            deleted = 0
            for rid, version in held.records:
                row = self._backend.delete_record(rid, version)
                if row is None:
                    if version == 1 and not self._backend.versions(rid):
                        self._backend.forget_shredded(rid)  # purged after an erasure
                    continue
                deleted += 1
                key = self._backend.lock_key(row.pid)
                if key is None or key.generation != row.generation:
                    continue
                n_records = key.n_records - (0 if row.is_copy else 1)
                n_copies = key.n_copies - (1 if row.is_copy else 0)
                if n_records == n_copies == 0 and self._backend.latest_erasure(row.pid) is None:
                    # The unit brought this patient here: leave no trace of them either.
                    self._backend.delete_key(row.pid, key.generation)
                    self._unwrapped.pop((row.pid, key.generation, key.wrapped), None)
                    continue
                manifest = withdraw_from_manifest(key.manifest, self._ctx(row), row.ciphertext)
                self._backend.update_key_counters(
                    row.pid, key.generation, n_records, n_copies, manifest
                )
            self._backend.delete_provisional(unit)
        return deleted

    def _settling(self, unit: str, claim: bytes | None | _Any) -> ProvisionalUnit:
        held = self._backend.lock_provisional(unit)
        if held is None:
            raise UnitSettled(f"provisional unit {unit} is unknown or already settled")
        if not isinstance(claim, _Any) and held.claim != claim:
            raise UnitSettled(f"provisional unit {unit} holds a newer claim")
        return held

    def provisional(self) -> list[ProvisionalUnit]:
        """Units not settled yet, oldest first."""
        with self._lock:
            return self._backend.list_provisional()

    def get(self, rid: str, version: int | None = None) -> bytes:
        """The exact JSON bytes stored for a record version (the latest by default).

        Raises RecordNotFound, PatientErased, or VaultIntegrityError when the
        stored ciphertext, nonce or clear attributes were altered.
        """
        with self._lock:
            row, keys = self._fetch(rid, version)
        return open_record(keys, self._ctx(row), row.nonce, row.ciphertext)

    def info(self, rid: str, version: int | None = None) -> RecordInfo:
        """The clear attributes of a record version (latest by default), without decrypting."""
        with self._lock:
            row, _wrapped = self._fetch_row(rid, version)
        return row.info()

    def versions(self, rid: str) -> list[int]:
        """The stored versions of a rid, ascending."""
        with self._lock:
            self._fetch_row(rid, None)  # raises RecordNotFound or PatientErased
            return self._backend.versions(rid)

    def records_of(self, pid: str, include_copies: bool = True) -> list[RecordInfo]:
        """Every stored version of a patient's records, ordered by (rid, version).

        Empty for a pid never seen; PatientErased for an erased one.
        """
        pid = self._pid(pid)
        with self._lock:
            key = self._backend.read_key(pid)
            if key is None:
                if self._backend.latest_erasure(pid) is not None:
                    raise PatientErased(pid)
                return []
            return self._backend.list_records(pid, key.generation, include_copies)

    def salt(self, pid: str, rid: str, version: int) -> bytes:
        """The secret salt of a record version's chain commitment.

        Derived from the patient key for own records; for a copy stored with
        the custodian's salt, that salt. Gone for ever once the patient is erased.
        """
        pid = self._pid(pid)
        with self._lock:
            row, keys = self._fetch(rid, version)
        if row.pid != pid:
            raise RecordNotFound(rid, version)
        if row.salt_ct is not None:
            return open_salt(keys, self._ctx(row), row.salt_ct)
        return keys.salt(rid, version)

    def metadata_key(self, pid: str) -> bytes:
        """The patient's 32-byte metadata key, for the chain index's encrypted metadata."""
        pid = self._pid(pid)
        with self._lock:
            key = self._backend.read_key(pid)
            if key is None:
                if self._backend.latest_erasure(pid) is not None:
                    raise PatientErased(pid)
                raise UnknownPatient(pid)
        return self._keys(pid, key.generation, key.wrapped).metadata_key

    def patients(self) -> list[str]:
        """Pids with live (not erased) key material, sorted."""
        with self._lock:
            return self._backend.patients()

    def is_erased(self, pid: str) -> bool:
        """True when the patient's latest key was erased and not reinstated."""
        pid = self._pid(pid)
        with self._lock:
            if self._backend.read_key(pid) is not None:
                return False
            return self._backend.latest_erasure(pid) is not None

    # ---------------------------------------------------------------- erasure

    def erase(self, pid: str, *, purge: bool = False) -> ErasureReceipt:
        """Crypto-shred a patient: delete their wrapped key row, in constant time.

        The deletion commits before this returns; afterwards none of the
        patient's records, salts or metadata key can be recovered. Their
        ciphertext rows are deleted by purge_pending(), or right away with
        `purge=True` (that part takes time proportional to the records).
        Idempotent: erasing an erased patient returns the original receipt.
        A pid never seen gets a tombstone too (zero counts), so that data
        arriving later for them is refused.
        """
        pid = self._pid(pid)
        self._refuse_in_batch("erase")
        with self._lock:
            with self._backend.transaction():
                key = self._backend.lock_key(pid)
                if key is None:
                    previous = self._backend.latest_erasure(pid)
                    if previous is not None:
                        receipt = self._receipt(previous)
                    else:
                        receipt = self._write_erasure(pid, 0, b"", 0, 0, EMPTY_MANIFEST)
                else:
                    if not self._backend.delete_key(pid, key.generation):
                        raise VaultError(f"the key of patient {pid} could not be deleted")
                    receipt = self._write_erasure(
                        pid, key.generation, key.wrapped, key.n_records, key.n_copies, key.manifest
                    )
            self._compact_due = True
            for cached in [k for k in self._unwrapped if k[0] == pid]:
                del self._unwrapped[cached]
            if purge:
                self._purge(only_pid=pid)
        return receipt

    def _write_erasure(
        self,
        pid: str,
        generation: int,
        wrapped: bytes,
        n_records: int,
        n_copies: int,
        manifest: bytes,
    ) -> ErasureReceipt:
        erased_at = datetime.now(UTC).isoformat(timespec="microseconds")
        digest = hashlib.sha256(
            encode_fields(
                _LABEL_ERASURE,
                self.hospital_id,
                pid,
                generation,
                n_records,
                n_copies,
                erased_at,
                hashlib.sha256(wrapped).digest(),
                manifest,
            )
        ).digest()
        row = ErasureRow(
            pid=pid,
            generation=generation,
            erased_at=erased_at,
            n_records=n_records,
            n_copies=n_copies,
            digest=digest,
            purged=False,
        )
        self._backend.insert_erasure(row)
        return self._receipt(row)

    def _receipt(self, row: ErasureRow) -> ErasureReceipt:
        return ErasureReceipt(
            hospital_id=self.hospital_id,
            pid=row.pid,
            generation=row.generation,
            records_shredded=row.n_records,
            copies_shredded=row.n_copies,
            erased_at=datetime.fromisoformat(row.erased_at),
            digest=row.digest,
        )

    def purge_pending(self) -> PurgeReport:
        """Delete the ciphertext rows of erased patients and compact the storage.

        Separate from erase() because it is the only part of an erasure whose
        cost grows with the number of records; the node can run it in the
        background. Erased rids are kept as tombstones (rid -> pid, both
        already on the chain) so that they are reported as erased, never reused.
        """
        self._refuse_in_batch("purge_pending")
        with self._lock:
            return self._purge(only_pid=None)

    def _purge(self, only_pid: str | None) -> PurgeReport:
        pending = [(p, g) for p, g in self._backend.pending_erasures() if only_pid in (None, p)]
        deleted = 0
        for pid, generation in pending:
            with self._backend.transaction():
                deleted += self._backend.purge(pid, generation)
        compacted = True
        if pending or self._compact_due:
            compacted = self._backend.compact()
            self._compact_due = not compacted
        return PurgeReport(patients=len(pending), rows_deleted=deleted, storage_compacted=compacted)

    def reinstate(self, pid: str) -> int:
        """Give an erased patient a new key generation, for new data only; returns it.

        Purges what is left of the erased generation first. Nothing erased
        becomes readable again, and erased rids stay unusable.
        """
        pid = self._pid(pid)
        self._refuse_in_batch("reinstate")
        with self._lock:
            self._purge(only_pid=pid)
            with self._backend.transaction():
                key = self._backend.lock_key(pid)
                if key is not None:
                    return key.generation
                previous = self._backend.latest_erasure(pid)
                generation = 1 if previous is None else previous.generation + 1
                return self._create_key(pid, generation).generation
