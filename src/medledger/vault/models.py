"""Public value types returned by the vault, and the row types backends exchange with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What the vault may say about a record without decrypting it.

    Only pseudonymous or structural attributes: the pid (already an HMAC
    pseudonym), the record id and version, the FHIR resource type, the
    custodian hospital and whether this vault holds a copy of another
    hospital's record.
    """

    pid: str
    rid: str
    version: int
    resource_type: str
    custodian: str
    is_copy: bool


@dataclass(frozen=True, slots=True)
class StoredRecord(RecordInfo):
    """Result of a put: the record's attributes plus the salt for its chain commitment.

    `salt` is secret (it is what keeps the commitment from being brute-forced):
    hand it to the chain index code, never log it.
    """

    salt: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """One record version to store (`Vault.put_many`): `put`'s arguments, and the aliases
    `remember` would keep for it."""

    pid: str
    rid: str
    version: int
    data: bytes  # the resource's JSON, exactly as it is to be stored
    resource_type: str
    custodian: str
    is_copy: bool = False
    salt: bytes | None = field(default=None, repr=False)
    aliases: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    """Proof, for the erasure contract, that a patient's key material was destroyed.

    Of the whole patient (Vault.erase, `copies_of` empty): `records_shredded`
    and `copies_shredded` count the record versions (own records and copies
    held for other custodians) that became undecryptable when the patient key
    row was deleted; their ciphertext rows are then removed by
    Vault.purge_pending() (or at once with erase(pid, purge=True)).
    `digest` = SHA-256 over the hospital, pid, key generation, counts, erasure
    time, the fingerprint of the destroyed wrapped key and the manifest hash of
    every ciphertext it protected: a fixed commitment to what was destroyed,
    fit to be attested on chain.

    Of copies only (Vault.erase_copies): `copies_of` names the custodians whose
    copies were shredded (their key sets destroyed), `records_shredded` is 0,
    and `digest` commits to each destroyed set (custodian, set id, count, time,
    wrapped set key fingerprint, manifest); the own records are untouched.
    """

    hospital_id: str
    pid: str
    generation: int
    records_shredded: int
    copies_shredded: int
    erased_at: datetime
    digest: bytes
    copies_of: tuple[str, ...] = ()

    @property
    def digest_hex(self) -> str:
        """The digest as lowercase hex, the form the chain attestation uses."""
        return self.digest.hex()


@dataclass(frozen=True, slots=True)
class ProvisionalUnit:
    """Record versions stored on condition that their registration elsewhere succeeds.

    The vault does not know what the registration is (for ingestion, a signed ledger tx,
    kept in `claim` once made). Until `Vault.confirm` or `Vault.withdraw` settles it, the
    unit survives crashes, so whoever resumes can find out how the registration ended.
    """

    unit: str
    claim: bytes | None = field(repr=False)
    records: tuple[tuple[str, int], ...]
    updated_at: float  # seconds since the epoch, when held or last claimed


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What Vault.purge_pending() removed."""

    patients: int
    rows_deleted: int
    storage_compacted: bool
    copy_sets: int = 0  # sets of copies shredded apart (Vault.erase_copies) purged


# ------------------------------------------------------------- backend rows


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A patient's wrapped patient key, with the running counters kept beside it."""

    pid: str
    generation: int
    wrapped: bytes = field(repr=False)
    n_records: int
    n_copies: int
    manifest: bytes


@dataclass(frozen=True, slots=True)
class SetRow:
    """One key set: a patient's own records, or the copies held of one custodian's records.

    `wrapped` is the set key wrapped under the patient key; `kid` (random) names the
    set, so records of a set shredded earlier never mix with a later set of the same
    custodian.
    """

    kid: str
    pid: str
    generation: int
    custodian: str  # this hospital for its own records
    is_copy: bool
    wrapped: bytes = field(repr=False)
    n_records: int
    manifest: bytes


@dataclass(frozen=True, slots=True)
class CopyErasureRow:
    """A tombstone: the copy set `kid` (copies of `custodian`'s records) was shredded."""

    kid: str
    pid: str
    generation: int
    custodian: str
    erased_at: str
    n_copies: int
    digest: bytes
    purged: bool


@dataclass(frozen=True, slots=True)
class ErasureRow:
    """A tombstone: this (pid, generation) was erased, and whether its rows are purged yet."""

    pid: str
    generation: int
    erased_at: str
    n_records: int
    n_copies: int
    digest: bytes
    purged: bool


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One stored record version as it sits in the database."""

    rid: str
    version: int
    pid: str
    generation: int
    resource_type: str
    custodian: str
    is_copy: bool
    nonce: bytes
    ciphertext: bytes = field(repr=False)
    salt_ct: bytes | None = field(default=None, repr=False)
    kid: str = ""  # the key set whose key encrypts it

    def info(self) -> RecordInfo:
        """What may be said of this version without decrypting it."""
        return RecordInfo(
            pid=self.pid,
            rid=self.rid,
            version=self.version,
            resource_type=self.resource_type,
            custodian=self.custodian,
            is_copy=self.is_copy,
        )


@dataclass(frozen=True, slots=True)
class RidState:
    """Owner, key generation, key set and latest version of a rid, for put's checks."""

    pid: str
    generation: int
    max_version: int
    kid: str
