"""Exceptions raised by the vault.

Every failure that matters to a caller has its own class, so that an ingestion
pipeline can tell "this patient was erased" (expected, report it) from "a
ciphertext was changed on disk" (an incident, stop and alert) without parsing
messages.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base class of every error the vault raises on purpose."""


class VaultConfigError(VaultError):
    """The vault's configuration is incomplete or inconsistent."""


class KeyFileError(VaultError):
    """The key-encryption key could not be loaded (missing, malformed)."""


class InsecureKeyFileError(KeyFileError):
    """The key file is readable by group or others, so it is refused.

    A KEK readable by other local accounts defeats the whole envelope scheme:
    refusing to start is the only safe reaction (like ssh does for private keys).
    """


class WrongKEKError(VaultError):
    """The KEK given does not match the one this vault was created with."""


class VaultIntegrityError(VaultError):
    """A ciphertext, its nonce or its associated data failed authentication.

    This means the stored bytes were changed (or moved to another row) after
    they were written: treat it as a security incident, never retry silently.
    """

    def __init__(self, message: str, *, rid: str | None = None, version: int | None = None):
        super().__init__(message)
        self.rid = rid
        self.version = version


class PatientErased(VaultError):
    """The patient's key was destroyed by an erasure: their data is gone for good."""

    def __init__(self, pid: str, message: str | None = None):
        super().__init__(message or f"patient {pid} was erased (crypto-shredded)")
        self.pid = pid


class UnknownPatient(VaultError, LookupError):
    """No key exists for this pid: nothing was ever stored for this patient."""

    def __init__(self, pid: str):
        super().__init__(f"unknown patient {pid}: nothing is stored for this pid")
        self.pid = pid


class RecordNotFound(VaultError, LookupError):
    """No record with this rid (and version, when one was asked) is stored."""

    def __init__(self, rid: str, version: int | None = None):
        which = f"{rid} version {version}" if version is not None else rid
        super().__init__(f"record {which} not found")
        self.rid = rid
        self.version = version


class RecordConflict(VaultError):
    """A put would overwrite a version, go backwards, or move a rid to another patient.

    Stored versions are immutable: the chain holds commitments to them, so a
    second, different content for the same (rid, version) must never exist.
    """

    def __init__(self, message: str, *, rid: str, version: int):
        super().__init__(message)
        self.rid = rid
        self.version = version


class UnitSettled(VaultError):
    """A provisional unit is gone (settled by someone else) or its claim changed meanwhile."""
