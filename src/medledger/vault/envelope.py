"""Record encryption: AES-256-GCM under the record key of the record's key set.

Each record version is sealed with a fresh random 96-bit nonce. The associated
data binds the ciphertext to everything the vault stores in clear next to it
(hospital, pid, rid, version, resource type, custodian, copy flag): moving a
ciphertext to another row, or editing one of those clear columns, makes the
tag check fail, and the failure names the rid and version concerned.

A key set encrypts at most a few thousand records in practice, far below
the 2**32 messages per key that random 96-bit nonces allow.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.vault.errors import VaultIntegrityError
from medledger.vault.keys import NONCE_SIZE, RecordKeys, encode_fields

_LABEL_RECORD_AAD = b"medledger/vault/v1/record-aad"
_LABEL_SALT_AAD = b"medledger/vault/v1/salt-aad"
_LABEL_MANIFEST = b"medledger/vault/v1/manifest"
_LABEL_WITHDRAWN = b"medledger/vault/v1/withdrawn"
_LABEL_COPIES_ERASED = b"medledger/vault/v2/copies-erased"

EMPTY_MANIFEST = hashlib.sha256(_LABEL_MANIFEST).digest()
_RECORD_AAD_LABEL = encode_fields(_LABEL_RECORD_AAD)
_LENGTH = struct.Struct(">I").pack
_INT_LENGTH = _LENGTH(8)
_TRUE, _FALSE = encode_fields(True), encode_fields(False)


@dataclass(frozen=True, slots=True)
class RecordContext:
    """The clear-text attributes of one stored record version, all bound into its AAD."""

    hospital_id: str
    pid: str
    rid: str
    version: int
    resource_type: str
    custodian: str
    is_copy: bool

    def aad(self) -> bytes:
        """Associated data for the record's AES-GCM ciphertext: `encode_fields` of the label
        and the attributes, spelt out (it is built for every record read)."""
        h, p, r = self.hospital_id.encode(), self.pid.encode(), self.rid.encode()
        t, c = self.resource_type.encode(), self.custodian.encode()
        return b"".join(
            (
                _RECORD_AAD_LABEL,
                _LENGTH(len(h)),
                h,
                _LENGTH(len(p)),
                p,
                _LENGTH(len(r)),
                r,
                _INT_LENGTH,
                self.version.to_bytes(8, "big", signed=True),
                _LENGTH(len(t)),
                t,
                _LENGTH(len(c)),
                c,
                _TRUE if self.is_copy else _FALSE,
            )
        )


def seal_record(keys: RecordKeys, ctx: RecordContext, plaintext: bytes) -> tuple[bytes, bytes]:
    """Encrypt one record version; returns (nonce, ciphertext with its 16-byte tag)."""
    nonce = os.urandom(NONCE_SIZE)  # what secrets.token_bytes returns, without its wrappers
    return nonce, keys.record_aead().encrypt(nonce, plaintext, ctx.aad())


def open_record(keys: RecordKeys, ctx: RecordContext, nonce: bytes, ciphertext: bytes) -> bytes:
    """Decrypt one record version, or raise VaultIntegrityError naming its rid and version."""
    try:
        if len(nonce) != NONCE_SIZE:
            raise InvalidTag
        return keys.record_aead().decrypt(nonce, ciphertext, ctx.aad())
    except InvalidTag:
        raise VaultIntegrityError(
            f"record {ctx.rid} version {ctx.version} failed authentication: its ciphertext, "
            "nonce or associated data (rid, version, type, custodian) was altered",
            rid=ctx.rid,
            version=ctx.version,
        ) from None


def seal_salt(keys: RecordKeys, ctx: RecordContext, salt: bytes) -> bytes:
    """Encrypt a salt received with a copy (the custodian's), bound to the record: nonce || ct."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    aad = encode_fields(_LABEL_SALT_AAD, ctx.aad())
    return nonce + AESGCM(keys.salt_value_key()).encrypt(nonce, salt, aad)


def open_salt(keys: RecordKeys, ctx: RecordContext, sealed: bytes) -> bytes:
    """Decrypt a stored copy salt, or raise VaultIntegrityError."""
    aad = encode_fields(_LABEL_SALT_AAD, ctx.aad())
    try:
        return AESGCM(keys.salt_value_key()).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        raise VaultIntegrityError(
            f"the salt of record {ctx.rid} version {ctx.version} failed authentication",
            rid=ctx.rid,
            version=ctx.version,
        ) from None


def extend_manifest(manifest: bytes, ctx: RecordContext, ciphertext: bytes) -> bytes:
    """Fold one stored version into the patient's running manifest hash.

    The manifest commits to every (rid, version, copy flag, ciphertext digest)
    stored under a patient key (and, separately, under each key set), in order.
    Kept on the key rows, it lets erase() and erase_copies() produce a digest of
    everything they destroy without reading the records.
    """
    return fold_manifest(manifest, manifest_item(ctx, ciphertext))


def manifest_item(ctx: RecordContext, ciphertext: bytes) -> bytes:
    """What `extend_manifest` folds in for one stored version (made once, folded into the
    patient's manifest and its key set's)."""
    return encode_fields(ctx.rid, ctx.version, ctx.is_copy, hashlib.sha256(ciphertext).digest())


def fold_manifest(manifest: bytes, item: bytes) -> bytes:
    """The manifest with one `manifest_item` folded in."""
    return hashlib.sha256(manifest + item).digest()


def withdraw_from_manifest(manifest: bytes, ctx: RecordContext, ciphertext: bytes) -> bytes:
    """Fold the withdrawal of one stored version (its registration failed) into the manifest.

    A running hash cannot forget an item, so the manifest records that the version was
    removed again: it stays a faithful, ordered account of what this key protected.
    """
    item = encode_fields(
        _LABEL_WITHDRAWN, ctx.rid, ctx.version, ctx.is_copy, hashlib.sha256(ciphertext).digest()
    )
    return hashlib.sha256(manifest + item).digest()


def copies_erased_in_manifest(manifest: bytes, set_digest: bytes) -> bytes:
    """Fold the shredding of one copy set (the digest of its receipt) into the patient manifest.

    The patient key's manifest keeps covering everything it ever protected, so the
    receipt of a later erasure of the whole patient still commits to those copies
    and to the fact that they were shredded apart first.
    """
    return hashlib.sha256(manifest + encode_fields(_LABEL_COPIES_ERASED, set_digest)).digest()
