"""medledger.vault: each hospital's off-chain, encrypted record store.

Records are AES-256-GCM ciphertexts under key sets: per patient, one set key
for the hospital's own records and one per custodian for the copies held of
other hospitals' records, each wrapped under the patient key, itself wrapped
by the hospital's key-encryption key (see keys.py). Erasing a patient destroys
their one wrapped patient key (crypto-shredding, constant time);
`erase_copies` destroys copy sets' keys apart, so copies go while the own
records under legal retention stay. Records that are no patient's (a hospital's
Practitioners, Medications...) live under `Vault.hospital_pid`, out of every
erasure; `remember`/`recall` keep opaque aliases (HMACs computed by the caller)
that find a record again; `research_digests` reads each patient's sealed research digest
(digest.py: the facts of their latest own records, one row per consent category, only
the asked ones read; rebuilt when stale). SQLite and
PostgreSQL backends share one SQL body
(`sql`). Knows nothing of the ledger.

May import: host only (and never consensus or interop, its siblings).
"""

from medledger.vault.errors import (
    InsecureKeyFileError,
    KeyFileError,
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
from medledger.vault.keys import create_kek_file, load_kek
from medledger.vault.models import (
    ErasureReceipt,
    NewRecord,
    ProvisionalUnit,
    PurgeReport,
    RecordInfo,
    StoredRecord,
)
from medledger.vault.vault import ReadKeys, Vault, VaultConfig

__all__ = [
    "ErasureReceipt",
    "InsecureKeyFileError",
    "KeyFileError",
    "NewRecord",
    "PatientErased",
    "ProvisionalUnit",
    "PurgeReport",
    "ReadKeys",
    "RecordConflict",
    "RecordInfo",
    "RecordNotFound",
    "StoredRecord",
    "UnitSettled",
    "UnknownPatient",
    "Vault",
    "VaultConfig",
    "VaultConfigError",
    "VaultError",
    "VaultIntegrityError",
    "WrongKEKError",
    "create_kek_file",
    "load_kek",
]
