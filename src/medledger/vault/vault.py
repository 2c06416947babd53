"""One hospital's off-chain vault: encrypted FHIR records and crypto-shredding.

The vault knows nothing of the ledger. It stores each record version as
AES-256-GCM ciphertext under the key of its key set (see keys.py): one set for
the hospital's own records of a patient, one per custodian for the copies held
of other hospitals' records of that patient, every set key wrapped under the
patient key. It gives the chain-index code what it needs to publish
commitments and encrypted metadata (per-record salts, the per-patient metadata
key), erases a patient by destroying the one row that holds their wrapped
patient key, and erases the copies held of a custodian's records apart by
destroying that set's key row.

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

Erasing copies apart
--------------------
erase_copies(pid, custodian) does the same for the copies held of one
custodian's records (or of every custodian): one transaction deletes each copy
set's key row (its commit point), writes a copy-erasure tombstone with the
set's digest, and folds it into the patient's counters and manifest. The own
records (under legal retention) and the other custodians' copies stay
readable; the shredded set's ciphertexts, salts and rids go with the next
purge. Later copies of that custodian's records for the patient are refused
(PatientErased) until reinstate(pid, custodian=...).

Provisional units
-----------------
Records that count only once registered elsewhere (ingestion registers them
on the chain) are stored and marked provisional (hold) in one transaction,
before the registration is sent; the unit keeps the signed registration
(claim) and is settled by confirm() or withdraw(). So a crash at any point
leaves either nothing, or the records plus what is needed to learn how their
registration ended: never a registration whose records are gone.

The hospital's own records
--------------------------
Records that are no patient's (the Practitioners, Organizations, Medications... that
documents and messages carry) are kept under `hospital_pid`, an owner reserved for the
hospital: a pid-shaped name derived from the hospital id, with a random key of its own
wrapped under the KEK exactly like a patient key. So they are encrypted at rest like
everything else, yet no patient's erasure ever touches them (erase() refuses that owner),
and `patients()` does not list it.

Aliases
-------
`remember(rid, aliases)` keeps opaque names of a record (32-byte HMACs the caller computes:
a sender's id for it, an identifier it carries) and `recall` finds the rids they name, so
that a resource sent again, or referred to by a sender's id, is found. The vault never sees
what they name. An alias goes with the record version that brought it (withdraw) and with
its patient (purge after an erasure).

Research digests
----------------
`research_digests(pids, digester, categories)` gives, per patient, the facts a digester made
of each latest own record of these consent categories, from the patient's sealed rows of
these categories only (digest.py: one per category, and an index). A vault given a digester
(`VaultConfig.digester`) refreshes the rows a put writes in its transaction, up to
`ROW_BOUND` bytes a row (past it the put drops the row); any other change leaves them stale
(the index is bound to the own key set's manifest: it no longer opens) and the first reader
rebuilds the categories it asks from the records of the types they can hold, and stores them
under the key row's lock if the records did not change meanwhile. erase() deletes the rows
with the key.

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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

from medledger.vault.backend import Backend
from medledger.vault.digest import (
    EVERY,
    INDEX,
    ROW_BOUND,
    Digester,
    Entries,
    Index,
    index_aad,
    new_tag,
    open_index,
    open_row,
    row_aad,
    seal_digest,
    seal_index,
)
from medledger.vault.envelope import (
    EMPTY_MANIFEST,
    RecordContext,
    copies_erased_in_manifest,
    fold_manifest,
    manifest_item,
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
    VaultIntegrityError,
    WrongKEKError,
)
from medledger.vault.keys import (
    DEFAULT_KEK_ENV,
    KeyRing,
    PatientKeys,
    RecordKeys,
    encode_fields,
    load_kek,
)
from medledger.vault.models import (
    CopyErasureRow,
    ErasureReceipt,
    ErasureRow,
    KeyRow,
    NewRecord,
    ProvisionalUnit,
    PurgeReport,
    RecordInfo,
    RecordRow,
    RidState,
    SetRow,
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
_LABEL_COPY_SET_ERASURE = b"medledger/vault/v2/copy-set-erasure"
_LABEL_COPIES_RECEIPT = b"medledger/vault/v2/copies-erasure"
_UNWRAPPED_CACHE = 1024
#: Patients listed per statement by `latest_records`.
LATEST_CHUNK = 400
_LABEL_HOSPITAL_OWNER = b"medledger/vault/v3/hospital-records"
ALIAS_SIZE = 32


@dataclass(slots=True)
class _Counters:
    """A key row's or key set's counters and running manifest, as `put_many` moves them on
    (written once at its end)."""

    n_records: int
    n_copies: int
    manifest: bytes

    def add(self, item: bytes, is_copy: bool) -> None:
        """One stored version (its `manifest_item`): a copy, or one of the own records."""
        self.n_copies += is_copy
        self.n_records += not is_copy
        self.manifest = fold_manifest(self.manifest, item)


@dataclass
class _Stale:
    """A patient whose digest rows of some asked categories (`need`) are rebuilt: their keys,
    generation, the index's associated data for the `state` read, and the index if it opened
    (the one stored, once rebuilt)."""

    keys: PatientKeys
    generation: int
    aad: bytes
    index: Index | None
    need: list[str]
    state: tuple[str, int, str, bytes, str]


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
    #: keeps the research digests as records are written (None: rebuilt when first read)
    digester: Digester | None = field(default=None, repr=False, compare=False)


class ReadKeys:
    """The keys one reading unwrapped (`Vault.latest_records`), to share them between its
    calls; keyed by the wrapped bytes read from the store, like the vault's own cache, so
    they only ever answer for rows that still exist. Drop it when the reading is done.
    `indexes`: the research digest indexes opened (`Vault.research_digests`), keyed by what
    they were opened for (pid, generation, kid, manifest, digester version): valid as long
    as that state is (the rows they name open only with their tags). `digests`: the digest
    rows a reading fetched for the next one (`prefetch`), by pid, their categories, and the
    pids that reading asked (a pid asked without rows has none)."""

    __slots__ = ("asked", "digests", "fetched", "indexes", "patients", "sets")

    def __init__(self) -> None:
        self.patients: dict[tuple[str, int, bytes], PatientKeys] = {}
        self.sets: dict[tuple[str, bytes, bytes], RecordKeys] = {}
        self.indexes: dict[tuple[str, int, str, bytes, str], Index] = {}
        self.digests: dict[str, tuple[str, int, bytes, str, bytes, int, dict[str, bytes]]] = {}
        self.fetched: frozenset[str] = frozenset()
        self.asked: set[str] = set()


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
        self,
        backend: Backend,
        keyring: KeyRing,
        *,
        pid_pattern: str = DEFAULT_PID_PATTERN,
        digester: Digester | None = None,
    ):
        _check(_CUSTODIAN_RE, keyring.hospital_id, "hospital id")
        #: refreshes each patient's research digest in the transaction that writes their own
        #: records (`research_digests`); None: the rows go stale and are rebuilt when read
        self.digester = digester
        self._backend = backend
        self._keyring = keyring
        self._pid_re = re.compile(pid_pattern)
        self._lock = threading.RLock()
        self._batches = threading.local()  # per thread: a batch is its thread's
        self._compact_due = False
        self._unwrapped: dict[tuple[str, int, bytes], PatientKeys] = {}
        self._unwrapped_sets: dict[tuple[str, bytes, bytes], RecordKeys] = {}
        self.hospital_pid = hashlib.sha256(
            encode_fields(_LABEL_HOSPITAL_OWNER, keyring.hospital_id)
        ).hexdigest()
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
            return cls(backend, keyring, pid_pattern=config.pid_pattern, digester=config.digester)
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
        if pid == self.hospital_pid:
            return pid
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

    def _set_keys(self, pid: str, generation: int, wrapped: bytes, key_set: SetRow) -> RecordKeys:
        """Unwrap a key set's key under the patient key (both as read from the store), cached.

        Cached by the wrapped bytes of both rows, so the cache only answers for rows
        that still exist; erase() and erase_copies() also forget the entries they destroy.
        """
        cache_key = (key_set.kid, key_set.wrapped, wrapped)
        keys = self._unwrapped_sets.get(cache_key)
        if keys is None:
            patient = self._keys(pid, generation, wrapped)
            keys = patient.unwrap_set_key(
                key_set.custodian, key_set.is_copy, key_set.kid, key_set.wrapped
            )
            if len(self._unwrapped_sets) >= _UNWRAPPED_CACHE:
                self._unwrapped_sets.clear()
            self._unwrapped_sets[cache_key] = keys
        return keys

    def _forget_cached(self, pid: str, kids: set[str] | None = None) -> None:
        """Drop cached keys of a patient (all of them, or only of the sets `kids`)."""
        if kids is None:
            for cached in [k for k in self._unwrapped if k[0] == pid]:
                del self._unwrapped[cached]
            kids = {k.kid for k in self._unwrapped_sets.values() if k.pid == pid}
        for cached_set in [k for k in self._unwrapped_sets if k[0] in kids]:
            del self._unwrapped_sets[cached_set]

    def _scope(self, custodian: str, is_copy: bool) -> tuple[str, bool]:
        """The key set a record belongs to: own records share one, copies one per custodian."""
        return (custodian, True) if is_copy else (self.hospital_id, False)

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

    def _live_set_for_write(
        self, key: KeyRow, custodian: str, is_copy: bool
    ) -> tuple[SetRow, RecordKeys]:
        """The key set records of (custodian, copy flag) go to; created on first use.

        Refused (PatientErased) for copies of a custodian whose copies of this patient were
        erased here, until reinstate(pid, custodian=...): a late sync or delivery must not
        silently bring them back.
        """
        scope_custodian, scope_copy = self._scope(custodian, is_copy)
        key_set = self._backend.lock_set(key.pid, key.generation, scope_custodian, scope_copy)
        if key_set is None:
            if scope_copy and self._backend.copy_erasures(key.pid, key.generation, custodian):
                raise PatientErased(
                    key.pid,
                    f"the copies of {custodian}'s records of patient {key.pid} were erased here; "
                    "call reinstate(pid, custodian=...) before storing new ones",
                )
            key_set = self._create_set(key, scope_custodian, scope_copy)
        return key_set, self._set_keys(key.pid, key.generation, key.wrapped, key_set)

    def _create_set(self, key: KeyRow, custodian: str, is_copy: bool) -> SetRow:
        kid = secrets.token_hex(16)
        patient = self._keys(key.pid, key.generation, key.wrapped)
        row = SetRow(
            kid=kid,
            pid=key.pid,
            generation=key.generation,
            custodian=custodian,
            is_copy=is_copy,
            wrapped=patient.new_wrapped_set_key(custodian, is_copy, kid),
            n_records=0,
            manifest=EMPTY_MANIFEST,
        )
        if self._backend.insert_set(row):
            return row
        existing = self._backend.lock_set(key.pid, key.generation, custodian, is_copy)
        if existing is None:
            raise VaultError(f"a key set of patient {key.pid} vanished while being created; retry")
        return existing

    def _fetch_row(self, rid: str, version: int | None) -> tuple[RecordRow, bytes, bytes]:
        """The record row and its live wrapped keys (patient, set), or the precise reason
        there are none."""
        found = self._backend.fetch_record(rid, version)
        if found is None:
            owner = self._backend.shredded_owner(rid)
            if owner is not None:
                raise PatientErased(owner, f"record {rid} was erased here (crypto-shredded)")
            raise RecordNotFound(rid, version)
        row, wrapped, set_wrapped = found
        if wrapped is None:
            raise PatientErased(row.pid, f"record {rid} belongs to an erased patient")
        if set_wrapped is None:
            raise PatientErased(
                row.pid, f"record {rid} is a copy of {row.custodian}'s records erased here"
            )
        return row, wrapped, set_wrapped

    def _fetch(self, rid: str, version: int | None) -> tuple[RecordRow, RecordKeys]:
        return self._opened(*self._fetch_row(rid, version))

    def _opened(
        self, row: RecordRow, wrapped: bytes, set_wrapped: bytes
    ) -> tuple[RecordRow, RecordKeys]:
        """A record row with its key set's keys, unwrapped from the live wrapped keys."""
        rid = row.rid
        custodian, is_copy = self._scope(row.custodian, row.is_copy)
        key_set = SetRow(
            kid=row.kid,
            pid=row.pid,
            generation=row.generation,
            custodian=custodian,
            is_copy=is_copy,
            wrapped=set_wrapped,
            n_records=0,
            manifest=b"",
        )
        try:
            return row, self._set_keys(row.pid, row.generation, wrapped, key_set)
        except VaultIntegrityError as exc:
            raise VaultIntegrityError(
                f"record {rid} version {row.version}: {exc}", rid=rid, version=row.version
            ) from None

    # ------------------------------------------------------------------ batch

    @contextmanager
    def batch(self, durable: bool = True) -> Iterator[Vault]:
        """Make every put inside the block atomic together: all stored, or none.

        Meant for one FHIR bundle. Other threads wait for the batch to finish.
        A put that fails inside the batch is undone alone (savepoint); if the
        exception leaves the block, the whole batch is rolled back. `durable=False`: the
        commit does not wait for the disk; a power cut may lose the batch whole (never a
        part), until a durable commit follows (`claim` of the unit it holds, or `sync`).
        """
        with self._lock, self._backend.transaction(durable):
            self._batches.depth = self._batch_depth + 1
            try:
                yield self
            finally:
                self._batches.depth -= 1

    @property
    def _batch_depth(self) -> int:
        """How many batches the calling thread is inside (another thread's do not count: its
        calls wait for the vault's lock)."""
        return int(getattr(self._batches, "depth", 0))

    def _refuse_own_records(self, pid: str) -> None:
        if pid == self.hospital_pid:
            raise ValueError(
                "the hospital's own records (hospital_pid) are no patient's: they are not erased"
            )

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
        record = NewRecord(
            pid, rid, version, resource_json, resource_type, custodian, is_copy, salt
        )
        return self.put_many([record])[0]

    def put_many(self, records: Iterable[NewRecord]) -> list[StoredRecord]:
        """`put` each record, in order, all or none; and `remember` each one's aliases.

        The same checks and the same rows as one `put` (and `remember`) after the other, in
        a few statements: each patient's key and key set are read once and their counters
        written once, the records, aliases and journal rows inserted together (ingestion
        stores a unit's resources so)."""
        parsed = [self._checked(r) for r in records]
        checked = [record for record, _ in parsed]
        if not checked:
            return []
        stored: list[StoredRecord] = []
        digester = self.digester
        # pid -> its own key set as found (old manifest), the new own versions' facts by
        # category, and whether one is a new version of a record (it may change category)
        digests: dict[str, tuple[KeyRow, SetRow, dict[str, Entries], list[bool]]] = {}
        with self._lock, self._backend.transaction():
            keys: dict[str, tuple[KeyRow, _Counters]] = {}
            sets: dict[tuple[str, str, bool], tuple[SetRow, RecordKeys, _Counters]] = {}
            states = self._backend.rid_states(list(dict.fromkeys(r.rid for r in checked)))
            new_rids = [r.rid for r in checked if r.rid not in states]
            shredded = self._backend.shredded_owners(new_rids) if new_rids else {}
            rows: list[RecordRow] = []
            aliases: list[tuple[bytes, str, int, str]] = []
            for r, doc in parsed:
                if r.pid not in keys:
                    key = self._live_key_for_write(r.pid)
                    keys[r.pid] = key, _Counters(key.n_records, key.n_copies, key.manifest)
                key, key_counts = keys[r.pid]
                scope = (r.pid, *self._scope(r.custodian, r.is_copy))
                if scope not in sets:
                    key_set, set_keys = self._live_set_for_write(key, r.custodian, r.is_copy)
                    counts = _Counters(key_set.n_records, 0, key_set.manifest)
                    sets[scope] = key_set, set_keys, counts
                key_set, set_keys, set_counts = sets[scope]
                self._check_rid(r, states.get(r.rid), shredded.get(r.rid), key, key_set)
                ctx = RecordContext(
                    hospital_id=self.hospital_id,
                    pid=r.pid,
                    rid=r.rid,
                    version=r.version,
                    resource_type=r.resource_type,
                    custodian=r.custodian,
                    is_copy=r.is_copy,
                )
                nonce, ciphertext = seal_record(set_keys, ctx, r.data)
                item = manifest_item(ctx, ciphertext)
                rows.append(
                    RecordRow(
                        rid=r.rid,
                        version=r.version,
                        pid=r.pid,
                        generation=key.generation,
                        resource_type=r.resource_type,
                        custodian=r.custodian,
                        is_copy=r.is_copy,
                        nonce=nonce,
                        ciphertext=ciphertext,
                        salt_ct=None if r.salt is None else seal_salt(set_keys, ctx, r.salt),
                        kid=key_set.kid,
                    )
                )
                key_counts.add(item, r.is_copy)
                set_counts.add(item, False)
                if digester is not None and not r.is_copy and r.pid != self.hospital_pid:
                    _, _, new, moved = digests.setdefault(r.pid, (key, key_set, {}, [False]))
                    category, facts = digester(doc)
                    for entries in new.values():
                        entries.pop(r.rid, None)
                    new.setdefault(category, {})[r.rid] = [r.version, facts]
                    moved[0] = moved[0] or r.version > 1
                states[r.rid] = RidState(r.pid, key.generation, r.version, key_set.kid)
                aliases += [(a, r.rid, r.version, r.pid) for a in r.aliases]
                salt = r.salt if r.salt is not None else set_keys.salt(r.rid, r.version)
                stored.append(
                    StoredRecord(
                        pid=r.pid,
                        rid=r.rid,
                        version=r.version,
                        resource_type=r.resource_type,
                        custodian=r.custodian,
                        is_copy=r.is_copy,
                        salt=salt,
                    )
                )
            if not self._backend.insert_records(rows):
                first = rows[0]
                raise RecordConflict(
                    f"record {first.rid} version {first.version} already exists"
                    if len(rows) == 1
                    else f"a record of these {len(rows)} already exists",
                    rid=first.rid,
                    version=first.version,
                )
            for key, c in keys.values():
                self._backend.update_key_counters(
                    key.pid, key.generation, c.n_records, c.n_copies, c.manifest
                )
            for key_set, _, c in sets.values():
                self._backend.update_set_counters(key_set.kid, c.n_records, c.manifest)
            for pid, (key, key_set, new, moved) in digests.items():
                manifest = sets[(pid, self.hospital_id, False)][2].manifest
                self._refresh_digest(key, key_set, manifest, new, moved[0])
            if aliases:
                self._backend.insert_aliases(aliases)
        return stored

    def _refresh_digest(
        self, key: KeyRow, key_set: SetRow, manifest: bytes, new: dict[str, Entries], moved: bool
    ) -> None:
        """Fold a put's own versions (`new`: category -> rid -> [version, facts]) into the
        patient's research digest, in the put's transaction: the rows of these categories
        resealed with new tags, the index resealed for the own set's new `manifest`; the other
        rows untouched (their tags stay valid). `moved`: a new version of a record may have
        changed its category, so it is taken out of every row (each one opened and resealed).

        The index as stored must open for the set's state before the put (`key_set`), or the
        set must be new; else (stale: written by a vault without a digester, or never built)
        every row is deleted here and rebuilt from the records when first read. A category the
        index does not know stays unknown (a reader rebuilds it whole). Bounded: a row longer
        than `ROW_BOUND` is neither read nor opened, and one that would grow past it is not
        sealed: the index forgets that category (its next reader rebuilds and stores it)."""
        assert self.digester is not None
        version = self.digester.version
        keys = self._keys(key.pid, key.generation, key.wrapped)
        index: Index | None = Index(empty=EVERY)
        stored: dict[str, bytes | None] = {}
        if key_set.n_records:
            wanted = None if moved else [INDEX, *new]
            stored = self._backend.read_digests(key.pid, key.generation, wanted, ROW_BOUND)
            before = index_aad(keys, key_set.kid, key_set.manifest, version)
            index = open_index(keys, before, stored.get(INDEX))
        if index is None:
            self._backend.delete_digest(key.pid)
            return
        rows: dict[str, bytes | None] = {}
        rids = {rid for entries in new.values() for rid in entries} if moved else set()
        for category in sorted({*new, *(index.rows if moved else ())}):
            if not index.knows(category):
                continue
            entries: Entries | None = None
            if category not in stored or stored[category] is not None:  # else past the bound
                entries = open_row(keys, index, category, stored.get(category), version)
                if entries is None:  # replaced or altered: nothing of this patient is trusted
                    self._backend.delete_digest(key.pid)
                    return
                for rid in rids:
                    entries.pop(rid, None)
                entries.update(new.get(category, {}))
            tag = new_tag() if entries else None
            sealed = (
                None
                if tag is None
                else seal_digest(keys, row_aad(keys, category, tag, version), entries)
            )
            if entries is None or (sealed is not None and len(sealed) > ROW_BOUND):
                if not index.forget(category):  # the index cannot say it unknown: all stale
                    self._backend.delete_digest(key.pid)
                    return
                rows[category] = None
                continue
            rows[category] = sealed
            index.build(category, tag)
        after = index_aad(keys, key_set.kid, manifest, version)
        rows[INDEX] = seal_index(keys, after, index)
        self._backend.put_digests(key.pid, key.generation, rows, only=not key_set.n_records)

    def _checked(self, record: NewRecord) -> tuple[NewRecord, dict[str, Any]]:
        """The record with its pid checked and its bytes as `bytes`, and its JSON parsed;
        refused (ValueError, TypeError) as `put` refuses it, before anything is written."""
        pid = self._pid(record.pid)
        rid = _check(_RID_RE, record.rid, "rid")
        _check(_RESOURCE_TYPE_RE, record.resource_type, "resource type")
        _check(_CUSTODIAN_RE, record.custodian, "custodian")
        version = record.version
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**62:
            raise ValueError(f"invalid version {version!r}: a positive integer is required")
        if not isinstance(record.data, bytes | bytearray | memoryview):
            raise TypeError("resource_json must be the JSON bytes as received")
        data = bytes(record.data)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"record {rid} version {version}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"record {rid} version {version}: a FHIR resource is a JSON object")
        declared = doc.get("resourceType")
        if declared is not None and declared != record.resource_type:
            raise ValueError(
                f"record {rid} version {version}: resourceType {declared!r} "
                f"does not match resource_type {record.resource_type!r}"
            )
        salt, is_copy = record.salt, bool(record.is_copy)
        if salt is not None and (not is_copy or not 16 <= len(salt) <= 64):
            raise ValueError("a salt may only be given for a copy, and must be 16 to 64 bytes")
        aliases = tuple(bytes(a) for a in record.aliases)
        if any(len(a) != ALIAS_SIZE for a in aliases):
            raise ValueError(f"an alias is {ALIAS_SIZE} bytes (an HMAC-SHA256)")
        checked = NewRecord(  # not dataclasses.replace: ≈ 4 times its cost, per record stored
            pid, rid, version, data, record.resource_type, record.custodian, is_copy, salt, aliases
        )
        return checked, doc

    def _check_rid(
        self,
        record: NewRecord,
        state: RidState | None,
        shredded_owner: str | None,
        key: KeyRow,
        key_set: SetRow,
    ) -> None:
        """Refuse a record whose rid may not take this version (see `put`)."""
        rid, version, pid = record.rid, record.version, record.pid
        if state is None:
            if shredded_owner is not None:
                raise PatientErased(shredded_owner, f"rid {rid} belonged to an erased patient")
        elif state.pid != pid:
            raise RecordConflict(f"rid {rid} belongs to another patient", rid=rid, version=version)
        elif state.generation != key.generation:
            raise PatientErased(pid, f"rid {rid} belongs to this patient's erased data")
        elif state.kid != key_set.kid:
            if self._backend.read_set(state.kid) is None:
                raise PatientErased(pid, f"rid {rid} belongs to copies erased here")
            raise RecordConflict(
                f"rid {rid} is held under another key set (own records or another "
                "custodian's copies): a rid never moves between them",
                rid=rid,
                version=version,
            )
        elif version <= state.max_version:
            raise RecordConflict(
                f"rid {rid}: version {version} is not above the stored version "
                f"{state.max_version}; stored versions are immutable",
                rid=rid,
                version=version,
            )

    # ---------------------------------------------------------------- aliases

    def remember(self, rid: str, aliases: Iterable[bytes]) -> None:
        """Keep `aliases` (opaque 32-byte names the caller computed, e.g. HMACs of a sender's
        id) as names of the stored record `rid`, tied to its latest version: withdrawing
        that version forgets them. Idempotent."""
        _check(_RID_RE, rid, "rid")
        names = [bytes(a) for a in aliases]
        if any(len(a) != ALIAS_SIZE for a in names):
            raise ValueError(f"an alias is {ALIAS_SIZE} bytes (an HMAC-SHA256)")
        if not names:
            return
        with self._lock, self._backend.transaction():
            state = self._backend.rid_state(rid)
            if state is None:
                raise RecordNotFound(rid)
            self._backend.insert_aliases([(a, rid, state.max_version, state.pid) for a in names])

    def recall(self, aliases: Iterable[bytes]) -> dict[bytes, list[str]]:
        """The rids each alias names (only records still readable: an erased patient's
        aliases name nothing); aliases naming nothing are left out."""
        names = sorted({bytes(a) for a in aliases})
        found: dict[bytes, list[str]] = {}
        if not names:
            return found
        with self._lock:
            for alias, rid in self._backend.find_aliases(names):
                found.setdefault(alias, []).append(rid)
        return found

    # ------------------------------------------------------ provisional units

    def sync(self) -> None:
        """Make every commit so far durable (after a `batch(durable=False)` that held no
        unit, so that no `claim` follows): one durable commit, which the database's log
        writes after them."""
        self._refuse_in_batch("sync")
        with self._lock, self._backend.transaction():
            self._backend.touch()

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
        """Keep, durably, what registers the unit (a signed tx) before it is sent; the
        unit's batch, and any commit before, become durable with it."""
        self._refuse_in_batch("claim")
        with self._lock, self._backend.transaction():
            if not self._backend.set_provisional_claim(unit, bytes(claim), time.time()):
                raise UnitSettled(f"provisional unit {unit} is unknown or already settled")

    def confirm(self, unit: str, claim: bytes | None | _Any = _ANY) -> None:
        """The registration succeeded: the unit's records are ordinary records from now on.

        With `claim`, only if the unit still holds that claim (see `withdraw`); raises
        UnitSettled if the unit is gone or holds another claim. Not durable at once (the
        next durable commit carries it): a confirmation lost to a power cut leaves the unit
        provisional with its claim, which `registrations.reconcile` confirms again from the
        chain; the records were durable since the claim.
        """
        self._refuse_in_batch("confirm")
        with self._lock, self._backend.transaction(durable=False):
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
                self._backend.delete_aliases(rid, version)
                row = self._backend.delete_record(rid, version)
                if row is None:
                    if version == 1 and not self._backend.versions(rid):
                        self._backend.forget_shredded(rid)  # purged after an erasure
                    continue
                deleted += 1
                key = self._backend.lock_key(row.pid)
                if key is None or key.generation != row.generation:
                    continue
                key_set = self._backend.read_set(row.kid)
                if key_set is None:
                    continue  # copies erased apart: already out of the counters
                if not row.is_copy:
                    self._backend.delete_digest(row.pid)  # rebuilt without it when read
                n_records = key.n_records - (0 if row.is_copy else 1)
                n_copies = key.n_copies - (1 if row.is_copy else 0)
                if (
                    n_records == n_copies == 0
                    and self._backend.latest_erasure(row.pid) is None
                    and not self._backend.copy_erasures(row.pid, key.generation, None)
                ):
                    # The unit brought this patient here: leave no trace of them either.
                    self._backend.delete_sets(row.pid, key.generation)
                    self._backend.delete_key(row.pid, key.generation)
                    self._forget_cached(row.pid)
                    continue
                ctx = self._ctx(row)
                manifest = withdraw_from_manifest(key.manifest, ctx, row.ciphertext)
                self._backend.update_key_counters(
                    row.pid, key.generation, n_records, n_copies, manifest
                )
                self._backend.update_set_counters(
                    key_set.kid,
                    key_set.n_records - 1,
                    withdraw_from_manifest(key_set.manifest, ctx, row.ciphertext),
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

    def get_many(self, versions: list[tuple[str, int]]) -> list[bytes]:
        """`get` of each (rid, version), in order, read in a statement per 400 (a document
        assembled from a patient's records); raises as `get` does for the first that fails."""
        with self._lock:
            found = self._backend.fetch_records(versions)
            opened = []
            for rid, version in versions:
                row = found.get((rid, version))
                if row is None or row[1] is None or row[2] is None:
                    opened.append(self._fetch(rid, version))  # raises the precise reason
                else:
                    opened.append(self._opened(row[0], row[1], row[2]))
        return [
            open_record(keys, self._ctx(row), row.nonce, row.ciphertext) for row, keys in opened
        ]

    def get_with_salt(self, rid: str, version: int) -> tuple[bytes, bytes]:
        """A record version's bytes and its commitment salt, read and unwrapped once (a
        restore checks thousands against the chain)."""
        with self._lock:
            row, keys = self._fetch(rid, version)
        ctx = self._ctx(row)
        data = open_record(keys, ctx, row.nonce, row.ciphertext)
        salt = keys.salt(rid, version) if row.salt_ct is None else open_salt(keys, ctx, row.salt_ct)
        return data, salt

    def info(self, rid: str, version: int | None = None) -> RecordInfo:
        """The clear attributes of a record version (latest by default), without decrypting."""
        with self._lock:
            row, _wrapped, _set_wrapped = self._fetch_row(rid, version)
        return row.info()

    def versions(self, rid: str) -> list[int]:
        """The stored versions of a rid, ascending."""
        with self._lock:
            self._fetch_row(rid, None)  # raises RecordNotFound or PatientErased
            return self._backend.versions(rid)

    def records_of(self, pid: str, include_copies: bool = True) -> list[RecordInfo]:
        """Every stored version of a patient's records, ordered by (rid, version).

        Copies shredded apart (erase_copies) are left out even before their purge.
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

    def latest_records(
        self,
        pids: Iterable[str],
        decrypt: Iterable[str] | None,
        *,
        types: Iterable[str] | None = None,
        include_copies: bool = False,
        keys: ReadKeys | None = None,
    ) -> Iterator[tuple[RecordInfo, bytes | None]]:
        """The latest version of each record of these patients (of `types` only, unless
        None): (its clear attributes, its exact JSON bytes when its type is one of `decrypt`,
        else None: never decrypted), by patient in the order given, rids ordered within a
        patient. A study query reads thousands of patients this way.

        What `records_of` then `get_many` of each rid's latest version would give, without
        their per-patient cost: the records listed in one statement per `LATEST_CHUNK`
        patients with their wrapped keys (the ciphertexts only of the `decrypt` types), each
        patient key and key set unwrapped once per call (not through the bounded cache, which
        a long listing would churn; `keys` shares them with the caller's next call) and only
        when one of its records is decrypted. The same guarantees: an erased patient, or a
        pid never seen, gives nothing (no error: a reader of many patients skips them);
        copies only with `include_copies`, never those shredded apart (erase_copies); the
        latest version of each rid only. VaultIntegrityError (naming the record) when a
        ciphertext or a wrapped key was altered. `decrypt=None`: every record is decrypted."""
        kinds = None if decrypt is None else sorted(set(decrypt))
        wanted = frozenset(kinds or ())
        listed = None if types is None else sorted(set(types))
        order = list(dict.fromkeys(self._pid(pid) for pid in pids))
        keys = ReadKeys() if keys is None else keys
        patients, sets = keys.patients, keys.sets
        for start in range(0, len(order), LATEST_CHUNK):
            chunk = order[start : start + LATEST_CHUNK]
            with self._lock:
                found = self._backend.fetch_latest(chunk, listed, kinds, include_copies)
            rank = {pid: i for i, pid in enumerate(chunk)}
            found.sort(key=lambda item: (rank[item[0].pid], item[0].rid))
            for row, wrapped, set_wrapped in found:
                if kinds is not None and row.resource_type not in wanted:
                    yield row.info(), None
                    continue
                opened = sets.get((row.kid, set_wrapped, wrapped))
                if opened is None:
                    opened = self._unwrap_for_read(row, wrapped, set_wrapped, patients)
                    sets[(row.kid, set_wrapped, wrapped)] = opened
                yield row.info(), open_record(opened, self._ctx(row), row.nonce, row.ciphertext)

    def research_digests(
        self,
        pids: Iterable[str],
        digester: Digester,
        categories: Iterable[str],
        *,
        keys: ReadKeys | None = None,
        prefetch: Iterable[str] = (),
    ) -> Iterator[tuple[str, list[Any]]]:
        """Per patient of `pids` with own records here, in the order given: the facts
        `digester` made of each latest own record version of these consent `categories` (rids
        in order; [] when none is of them). Copies never; an erased patient, or a pid never
        seen, gives nothing.

        Read from the patient's sealed research digest (vault/digest.py): its index and its
        rows of these categories only, one unwrapped key per patient; the rows of any other
        category are not read, let alone decrypted. A category whose row is missing or stale
        (the index fails to open for the own records' current state, or was made by another
        digester version; the row fails its tag) is rebuilt from the records of the types it
        can hold (`digester.types_in`), exactly as `latest_records` reads them, and stored
        for the next reader. What a patient's rows hold is read after their set's state, so a
        row stored while a writer changed the records is indexed for the older state: it
        never opens for the newer one. `keys`: the patient keys unwrapped, shared with the
        caller's next reading (as `latest_records` shares them); with `prefetch`, the rows of
        these categories are fetched too, unopened, and a next reading of them only (of
        some of these patients, with the same `keys`) opens them as fetched, without reading
        the store again: the same state as this reading's."""
        order = list(dict.fromkeys(self._pid(pid) for pid in pids))
        asked = sorted(set(categories))
        keys = ReadKeys() if keys is None else keys
        patients, indexes = keys.patients, keys.indexes
        fetching = [INDEX, *asked, *sorted(set(prefetch) - set(asked))]
        reuse = bool(keys.fetched) and set(asked) <= keys.fetched
        if not reuse and len(fetching) > len(asked) + 1:
            keys.digests, keys.fetched, keys.asked = {}, frozenset(fetching), set(order)
        version = digester.version
        for start in range(0, len(order), LATEST_CHUNK):
            chunk = order[start : start + LATEST_CHUNK]
            unseen = [pid for pid in chunk if pid not in keys.asked] if reuse else chunk
            sources = [keys.digests[pid] for pid in chunk if pid in keys.digests] if reuse else []
            if unseen:
                with self._lock:
                    sources += self._backend.digest_sources(unseen, fetching)
                if not reuse and len(fetching) > len(asked) + 1:
                    keys.digests.update((source[0], source) for source in sources)
            found: dict[str, Entries] = {}
            stale: dict[str, _Stale] = {}
            for pid, generation, wrapped, kid, manifest, n_records, sealed in sources:
                if not n_records:
                    continue
                unwrapped = patients.get((pid, generation, wrapped))
                if unwrapped is None:
                    unwrapped = self._keyring.unwrap(pid, generation, wrapped)
                    patients[(pid, generation, wrapped)] = unwrapped
                state = (pid, generation, kid, manifest, version)
                index = indexes.get(state)
                if index is None:
                    aad = index_aad(unwrapped, kid, manifest, version)
                    index = open_index(unwrapped, aad, sealed.get(INDEX))
                    if index is not None:
                        indexes[state] = index
                entries = found[pid] = {}
                need = []
                for category in asked:
                    got = (
                        None
                        if index is None
                        else open_row(unwrapped, index, category, sealed.get(category), version)
                    )
                    if got is None:
                        need.append(category)
                    else:
                        entries.update(got)
                if need:
                    aad = index_aad(unwrapped, kid, manifest, version)
                    stale[pid] = _Stale(unwrapped, generation, aad, index, need, state)
            if stale:
                for pid, entries in self._rebuild_digests(stale, digester).items():
                    found[pid].update(entries)
                for s in stale.values():  # as stored: the next reading's (their tags)
                    if s.index is not None:
                        indexes[s.state] = s.index
            for pid in chunk:
                if pid in found:
                    yield pid, [found[pid][rid][1] for rid in sorted(found[pid])]

    def own_states(self, pids: Iterable[str]) -> dict[str, tuple[int, str, bytes]]:
        """Per patient of `pids` with own records here: the state of those records (key
        generation, own set, its manifest), what a research digest is bound to. A reading of
        the digests made while the state was the same gives the same facts (`research.answer`
        takes a query's facts read ahead only then)."""
        order = list(dict.fromkeys(self._pid(pid) for pid in pids))
        with self._lock:
            return self._backend.own_states(order)

    def _rebuild_digests(self, stale: dict[str, _Stale], digester: Digester) -> dict[str, Entries]:
        """The rows of these patients' `need`ed categories, from their latest own records of
        the types those can hold, stored sealed (the index for the state read before); the
        facts of a record of another category are dropped unused."""
        needed = sorted({category for s in stale.values() for category in s.need})
        types = digester.types_in(needed)
        listed = None if types is None else sorted(types)
        built: dict[str, dict[str, Entries]] = {
            pid: {category: {} for category in s.need} for pid, s in stale.items()
        }
        for info, data in self.latest_records(list(stale), decrypt=listed, types=listed):
            assert data is not None
            category, facts = digester(orjson.loads(data))
            entries = built[info.pid].get(category)
            if entries is not None:
                entries[info.rid] = [info.version, facts]
        version = digester.version
        sealed: dict[str, tuple[dict[str, str | None], dict[str, bytes | None]]] = {}
        for pid, s in stale.items():
            tags = {
                category: new_tag() if entries else None for category, entries in built[pid].items()
            }
            sealed[pid] = (
                tags,
                {
                    category: None
                    if tag is None
                    else seal_digest(
                        s.keys, row_aad(s.keys, category, tag, version), built[pid][category]
                    )
                    for category, tag in tags.items()
                },
            )
        # one transaction, unless it would hold a key row lock while waiting for another
        batches = [[pid] for pid in stale] if self._backend.row_locks else [list(stale)]
        for batch in batches:
            with self._lock, self._backend.transaction(durable=False):
                for pid in batch:
                    stale[pid].index = self._store_rebuilt(pid, stale[pid], *sealed[pid])
        return {
            pid: {rid: e for entries in by.values() for rid, e in entries.items()}
            for pid, by in built.items()
        }

    def _store_rebuilt(
        self, pid: str, s: _Stale, tags: dict[str, str | None], rows: dict[str, bytes | None]
    ) -> Index | None:
        """Store a patient's rebuilt rows (category -> tag, sealed; None: empty) and their
        index, in the caller's transaction, under the patient's key row lock as writers take
        it (on SQLite the transaction's write lock is the store's), only if the own records
        are still in the state they were read in (else a writer's fresher rows stay): on the
        index stored now if it opens for that state (another reader's rows stay listed).
        The index stored, or None when nothing was."""
        _, generation, kid, manifest, _ = s.state
        key = self._backend.lock_key(pid)
        own = None if key is None or key.generation != generation else self._backend.read_set(kid)
        if own is None or own.manifest != manifest:
            return None
        current = self._backend.read_digests(pid, generation, [INDEX]).get(INDEX)
        index = open_index(s.keys, s.aad, current)
        only = index is None
        index = Index() if index is None else index
        for category, tag in tags.items():
            index.build(category, tag)
        self._backend.put_digests(
            pid, generation, {**rows, INDEX: seal_index(s.keys, s.aad, index)}, only=only
        )
        return index

    def digest_count(self) -> int:
        """How many patients' research digests are stored (derived rows: see
        `research_digests`)."""
        with self._lock:
            return self._backend.count_digests()

    def _unwrap_for_read(
        self,
        row: RecordRow,
        wrapped: bytes,
        set_wrapped: bytes,
        patients: dict[tuple[str, int, bytes], PatientKeys],
    ) -> RecordKeys:
        """A record's key set, unwrapped from the live wrapped keys read with it (the patient
        key through `patients`, a caller's cache for one listing)."""
        custodian, is_copy = self._scope(row.custodian, row.is_copy)
        try:
            patient = patients.get((row.pid, row.generation, wrapped))
            if patient is None:
                patient = self._keyring.unwrap(row.pid, row.generation, wrapped)
                patients[(row.pid, row.generation, wrapped)] = patient
            return patient.unwrap_set_key(custodian, is_copy, row.kid, set_wrapped)
        except VaultIntegrityError as exc:
            raise VaultIntegrityError(
                f"record {row.rid} version {row.version}: {exc}", rid=row.rid, version=row.version
            ) from None

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

    # -- replication (vault/replication.py; the replicator and restore use these) ----------
    def journal_head(self) -> int:
        """The last change's sequence number in the replication journal (0: none)."""
        with self._lock:
            return self._backend.journal_head()

    def changes(self, after: int, limit: int = 1000) -> list[tuple[int, str, float]]:
        """(seq, item name, time) of the changes after `after`, oldest first."""
        with self._lock:
            return self._backend.changes(after, limit)

    def replication_lag(self, after: int) -> tuple[int, float | None]:
        """How many changes follow `after`, and the time of the oldest of them."""
        with self._lock:
            return self._backend.lag(after)

    def prune_journal(self, upto: int) -> None:
        """Forget the changes up to `upto` (every replica peer acknowledged them)."""
        with self._lock, self._backend.transaction():
            self._backend.prune_journal(upto)

    def replica_peers(self) -> dict[str, tuple[int, float, int]]:
        """peer -> (last change acknowledged, when (epoch s), bytes it holds of ours)."""
        with self._lock:
            return self._backend.replica_peers()

    def set_replica_peer(self, peer: str, acked_seq: int, acked_at: float, held: int) -> None:
        with self._lock, self._backend.transaction():
            self._backend.set_replica_peer(peer, acked_seq, acked_at, held)

    def item_names(self) -> list[str]:
        """Every replicated item held now (for a peer's first full copy)."""
        with self._lock:
            return self._backend.item_names()

    def read_items(self, names: list[str]) -> dict[str, dict[str, list[list[Any]]] | None]:
        """Each item's rows ({table: [row]}), None for an item deleted since."""
        with self._lock:
            return {name: self._backend.read_item(name) for name in names}

    def write_items(self, items: dict[str, dict[str, list[list[Any]]]]) -> None:
        """Write restored items' rows, all in one transaction (a fresh vault: restore)."""
        with self._lock, self._backend.transaction():
            for name, rows in items.items():
                self._backend.write_item(name, rows)

    def replace_items(self, items: dict[str, dict[str, list[list[Any]]]]) -> None:
        """Put other versions of restored items in place of theirs, in one transaction (a
        restore picking the version that matches the chain); cached keys are forgotten."""
        with self._lock, self._backend.transaction():
            for name, rows in items.items():
                self._backend.delete_item(name)
                self._backend.write_item(name, rows)
            self._unwrapped.clear()
            self._unwrapped_sets.clear()

    def patients(self) -> list[str]:
        """Pids with live (not erased) key material, sorted."""
        with self._lock:
            return [p for p in self._backend.patients() if p != self.hospital_pid]

    def has_patients(self) -> bool:
        """`bool(self.patients())` without listing them: asked twice a second by the
        replicator, on a vault of any size."""
        with self._lock:
            return self._backend.has_patient_besides(self.hospital_pid)

    def is_erased(self, pid: str) -> bool:
        """True when the patient's latest key was erased and not reinstated."""
        pid = self._pid(pid)
        with self._lock:
            if self._backend.read_key(pid) is not None:
                return False
            return self._backend.latest_erasure(pid) is not None

    def copies_refused(self, pid: str, custodian: str) -> datetime | None:
        """When the copies of `custodian`'s records of a live patient were shredded apart
        here and not reinstated since (new ones are refused): the latest shredding's time.
        None otherwise (never shredded, reinstated, or the patient erased as a whole)."""
        pid = self._pid(pid)
        _check(_CUSTODIAN_RE, custodian, "custodian")
        with self._lock:
            key = self._backend.read_key(pid)
            if key is None:
                return None
            if any(
                s.is_copy and s.custodian == custodian
                for s in self._backend.sets_of(pid, key.generation)
            ):
                return None
            done = self._backend.copy_erasures(pid, key.generation, custodian)
        return datetime.fromisoformat(max(r.erased_at for r in done)) if done else None

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
        self._refuse_own_records(pid)
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
                    self._backend.delete_digest(pid)
                    receipt = self._write_erasure(
                        pid, key.generation, key.wrapped, key.n_records, key.n_copies, key.manifest
                    )
            self._compact_due = True
            self._forget_cached(pid)
            if purge:
                self._purge(only_pid=pid)
        return receipt

    def erase_copies(
        self, pid: str, custodian: str | None = None, *, purge: bool = False
    ) -> ErasureReceipt:
        """Crypto-shred the copies held of `custodian`'s records of a patient (of every
        custodian when None), apart from this hospital's own records.

        One transaction: each copy set's key row is deleted (from then on its records and
        the custodian's salts cannot be decrypted), a tombstone keeps the set's digest, and
        the patient's counters and manifest account for it. The own records and the other
        custodians' copies stay readable. The ciphertext rows go with purge_pending(), or at
        once with `purge=True`. The work grows with the number of custodians, not records.

        The receipt covers every copy set of the patient (of that custodian) shredded at
        this key generation, so calling again returns the same receipt: a crash between
        this and the attestation on chain is repaired by simply retrying. Raises
        PatientErased if the whole patient was erased (nothing is left to shred apart).
        """
        pid = self._pid(pid)
        self._refuse_own_records(pid)
        if custodian is not None:
            _check(_CUSTODIAN_RE, custodian, "custodian")
        self._refuse_in_batch("erase_copies")
        with self._lock:
            shredded: set[str] = set()
            with self._backend.transaction():
                key = self._backend.lock_key(pid)
                if key is None:
                    if self._backend.latest_erasure(pid) is not None:
                        raise PatientErased(pid)
                    return self._copies_receipt(pid, 0, custodian, [])
                manifest, n_copies = key.manifest, key.n_copies
                erased_at = datetime.now(UTC).isoformat(timespec="microseconds")
                for key_set in self._backend.sets_of(pid, key.generation):
                    if not key_set.is_copy or custodian not in (None, key_set.custodian):
                        continue
                    if not self._backend.delete_set(key_set.kid):  # the commit point
                        raise VaultError(f"the key set {key_set.kid} could not be deleted")
                    tombstone = self._copy_erasure(key_set, erased_at)
                    self._backend.insert_copy_erasure(tombstone)
                    manifest = copies_erased_in_manifest(manifest, tombstone.digest)
                    n_copies -= key_set.n_records
                    shredded.add(key_set.kid)
                if shredded:
                    self._backend.update_key_counters(
                        pid, key.generation, key.n_records, n_copies, manifest
                    )
                done = self._backend.copy_erasures(pid, key.generation, custodian)
                receipt = self._copies_receipt(pid, key.generation, custodian, done)
            if shredded:
                self._compact_due = True
                self._forget_cached(pid, shredded)
            if purge:
                self._purge(only_pid=pid)
        return receipt

    def _copy_erasure(self, key_set: SetRow, erased_at: str) -> CopyErasureRow:
        digest = hashlib.sha256(
            encode_fields(
                _LABEL_COPY_SET_ERASURE,
                self.hospital_id,
                key_set.pid,
                key_set.generation,
                key_set.custodian,
                key_set.kid,
                key_set.n_records,
                erased_at,
                hashlib.sha256(key_set.wrapped).digest(),
                key_set.manifest,
            )
        ).digest()
        return CopyErasureRow(
            kid=key_set.kid,
            pid=key_set.pid,
            generation=key_set.generation,
            custodian=key_set.custodian,
            erased_at=erased_at,
            n_copies=key_set.n_records,
            digest=digest,
            purged=False,
        )

    def _copies_receipt(
        self, pid: str, generation: int, custodian: str | None, done: list[CopyErasureRow]
    ) -> ErasureReceipt:
        """One receipt for the copy sets shredded at this generation (of one custodian)."""
        done = sorted(done, key=lambda r: r.kid)
        parts: list[bytes | str | int] = [_LABEL_COPIES_RECEIPT, self.hospital_id, pid]
        parts += [generation, custodian or ""]
        for row in done:
            parts += [row.custodian, row.kid, row.digest]
        erased_at = max((r.erased_at for r in done), default=None)
        return ErasureReceipt(
            hospital_id=self.hospital_id,
            pid=pid,
            generation=generation,
            records_shredded=0,
            copies_shredded=sum(r.n_copies for r in done),
            erased_at=datetime.fromisoformat(erased_at) if erased_at else datetime.now(UTC),
            digest=hashlib.sha256(encode_fields(*parts)).digest(),
            copies_of=tuple(sorted({r.custodian for r in done})),
        )

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
        sets = [k for k, p in self._backend.pending_copy_erasures() if only_pid in (None, p)]
        for kid in sets:
            with self._backend.transaction():
                deleted += self._backend.purge_set(kid)
        compacted = True
        if pending or sets or self._compact_due:
            compacted = self._backend.compact()
            self._compact_due = not compacted
        return PurgeReport(
            patients=len(pending),
            rows_deleted=deleted,
            storage_compacted=compacted,
            copy_sets=len(sets),
        )

    def reinstate(self, pid: str, *, custodian: str | None = None) -> int:
        """Give an erased patient a new key generation, for new data only; returns it.

        With `custodian`, accept copies of that custodian's records of the patient again
        after erase_copies (a new key set); returns the patient's generation. Purges what
        is left of the erased data first. Nothing erased becomes readable again, and
        erased rids stay unusable.
        """
        pid = self._pid(pid)
        if custodian is not None:
            _check(_CUSTODIAN_RE, custodian, "custodian")
        self._refuse_in_batch("reinstate")
        with self._lock:
            self._purge(only_pid=pid)
            with self._backend.transaction():
                key = self._backend.lock_key(pid)
                if key is not None:
                    if custodian is not None and (
                        self._backend.lock_set(pid, key.generation, custodian, True) is None
                    ):
                        self._create_set(key, custodian, True)
                    return key.generation
                previous = self._backend.latest_erasure(pid)
                generation = 1 if previous is None else previous.generation + 1
                return self._create_key(pid, generation).generation
