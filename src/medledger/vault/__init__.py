"""medledger.vault: each hospital's off-chain, encrypted record store.

Records are AES-256-GCM ciphertexts under per-patient data keys wrapped by the
hospital's key-encryption key; erasing a patient destroys their one wrapped
key (crypto-shredding). SQLite and PostgreSQL backends. Knows nothing of the
ledger.
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
    ProvisionalUnit,
    PurgeReport,
    RecordInfo,
    StoredRecord,
)
from medledger.vault.vault import Vault, VaultConfig

__all__ = [
    "ErasureReceipt",
    "InsecureKeyFileError",
    "KeyFileError",
    "PatientErased",
    "ProvisionalUnit",
    "PurgeReport",
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
