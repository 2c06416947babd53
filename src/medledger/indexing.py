"""The custodian's side of the shared records index: commitments and sealed metadata.

The chain only ever sees `commitment = HMAC-SHA256(salt, resource bytes)` and `meta_ct`, the
record's metadata encrypted (AES-256-GCM) under the custodian's metadata key for that patient,
bound to the record id and version. Whoever holds that key (the custodian, or a hospital it
was sealed to after a consent) reads the index; once the key is shredded nobody can.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


class MetadataError(ValueError):
    """meta_ct does not open under this key (wrong key, shredded key, or tampered bytes)."""


def commitment(salt: bytes, resource: bytes) -> bytes:
    return hmac.new(salt, resource, hashlib.sha256).digest()


def check_commitment(salt: bytes, resource: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(commitment(salt, resource), expected)


def _aad(rid: str, version: int) -> bytes:
    return f"medledger/meta/v1/{rid}/{version}".encode()


def seal_meta(key: bytes, rid: str, version: int, meta: dict[str, Any]) -> bytes:
    nonce = os.urandom(_NONCE)
    plain = cbor2.dumps({k: v for k, v in meta.items() if v is not None}, canonical=True)
    return nonce + AESGCM(key).encrypt(nonce, plain, _aad(rid, version))


def open_meta(key: bytes, rid: str, version: int, sealed: bytes) -> dict[str, Any]:
    try:
        plain = AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _aad(rid, version))
    except (InvalidTag, ValueError):
        raise MetadataError(f"metadata of record {rid} v{version} does not open") from None
    meta: dict[str, Any] = cbor2.loads(plain)
    return meta
