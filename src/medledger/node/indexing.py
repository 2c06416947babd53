"""The custodian's side of the shared records index: commitments and sealed metadata.

The chain only ever sees `commitment = HMAC-SHA256(salt, resource bytes)` and `meta_ct`, the
record's metadata encrypted (AES-256-GCM) under a key of the record's category, bound to the
record id and version. The custodian keeps one metadata key per patient (vault/keys.py); each
category has its own key derived from it, `HKDF-SHA256(metadata key, info="medledger/meta/v2/
category/" || category)`. The custodian reads every entry (it derives all sixteen); another
hospital is sealed only the keys of the categories `authorize` grants it (exchange/gateway.py
`metadata_key`): a consent for labs opens the labs entries and nothing else. Nothing on the
chain says an entry's category: a holder tries its few keys (at most sixteen), and AES-GCM's
tag tells which one opens it; the category inside must be the key's. Once the patient's
metadata key is shredded nobody can derive any of them.

Epochs. A key, once sealed to a hospital, cannot be taken back; so the keys also depend on
the patient's epoch, the count of their entitlements that have ended (revoked or expired
consents, withdrawn enrolments, cancelled or past referrals, past emergency openings:
`authorize.meta_epoch`, computed from chain state and time). The custodian seals under the
epoch current when it registers, written in clear as the first 4 bytes of the nonce (the
number of ended entitlements tells nothing of health). The gateway seals a hospital the keys
of the epochs of the entries it holds, and of the current one, only for the categories
`authorize` grants it now: a hospital whose consent was revoked keeps the keys it had, so
it still opens the entries registered before, but not those registered after.

Padding. A ciphertext is as long as its plaintext, and the metadata of one kind of record has
one length ("Heart failure" always sealed to the same size): every member could read the
diagnosis from the length alone. So the canonical CBOR of the metadata is padded, ISO/IEC
7816-4 style (one 0x80 byte, then zeros), to the smallest of the fixed sizes
`records.META_BUCKETS` (256 or 1024 bytes) that holds it; the contract refuses any other
length. Opening strips the padding: the last non-zero byte must be the 0x80 marker, anything
else is refused as tampered. A metadata too long for the largest bucket has its title (a
display string only) shortened, with an ellipsis, until it fits; if even an empty title does
not fit (a code or type kilobytes long), sealing refuses with `MetadataError` naming the
record: such a value has no business in the index.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medledger.contracts.categories import CATEGORIES, CATEGORY_SET
from medledger.contracts.records import META_BUCKETS

_NONCE = 12
_MARK = b"\x80"


class MetadataError(ValueError):
    """meta_ct does not open under this key (wrong key, shredded key, or tampered bytes)."""


def commitment(salt: bytes, resource: bytes) -> bytes:
    return hmac.new(salt, resource, hashlib.sha256).digest()


def check_commitment(salt: bytes, resource: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(commitment(salt, resource), expected)


#: Sealed without a category (never by ingestion, which classifies every record): "other".
DEFAULT_CATEGORY = "other"
#: The epoch is the nonce's first 4 bytes (big-endian); the other 8 are random. A key of one
#: (patient, category, epoch) seals a handful of entries: 64 random bits never repeat there.
_EPOCH = 4
MAX_EPOCH = 2**32 - 1

#: A holder's keys: {epoch: {category: key}}.
MetaKeys = Mapping[int, Mapping[str, bytes]]


def _aad(rid: str, version: int) -> bytes:
    return f"medledger/meta/v2/{rid}/{version}".encode()


def category_key(meta_key: bytes, category: str, epoch: int = 0) -> bytes:
    """The key that seals the metadata of the patient's records of `category` in `epoch`."""
    if category not in CATEGORY_SET:
        raise MetadataError(f"category {category!r}: not in the consent vocabulary")
    if not 0 <= epoch <= MAX_EPOCH:
        raise MetadataError(f"epoch {epoch}: 0..{MAX_EPOCH}")
    info = f"medledger/meta/v2/category/{category}/epoch/{epoch}".encode()
    return HKDF(hashes.SHA256(), 32, None, info).derive(meta_key)


def category_keys(
    meta_key: bytes,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    epochs: list[int] | tuple[int, ...] = (0,),
) -> dict[int, dict[str, bytes]]:
    """{epoch: {category: key}} for the given categories and epochs."""
    return {e: {c: category_key(meta_key, c, e) for c in categories} for e in epochs}


class CustodianKeys(Mapping[int, Mapping[str, bytes]]):
    """Every category's keys of every epoch, derived from the patient's metadata key when
    first asked (the custodian opens whatever epoch an entry names)."""

    def __init__(self, meta_key: bytes) -> None:
        self._meta_key = meta_key
        self._derived: dict[int, dict[str, bytes]] = {}

    def __getitem__(self, epoch: int) -> Mapping[str, bytes]:
        if not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
            raise KeyError(epoch)
        if epoch not in self._derived:
            self._derived[epoch] = category_keys(self._meta_key, epochs=(epoch,))[epoch]
        return self._derived[epoch]

    def __iter__(self) -> Any:
        return iter(self._derived)

    def __len__(self) -> int:
        return len(self._derived)


def epoch_of(sealed: bytes) -> int:
    """The epoch a `meta_ct` was sealed in (in clear in its framing: not sensitive)."""
    return int.from_bytes(sealed[:_EPOCH], "big")


def category_of(meta: Mapping[str, Any]) -> str:
    category = meta.get("category") or DEFAULT_CATEGORY
    if category not in CATEGORY_SET:
        raise MetadataError(f"category {category!r}: not in the consent vocabulary")
    return str(category)


def _encode(meta: dict[str, Any]) -> bytes:
    return cbor2.dumps({k: v for k, v in meta.items() if v is not None}, canonical=True)


def pad(plain: bytes, rid: str = "?") -> bytes:
    """`plain` + 0x80 + zeros, to the smallest bucket that holds it (ISO/IEC 7816-4)."""
    for size in META_BUCKETS:
        if len(plain) < size:  # at least one byte for the 0x80 marker
            return plain + _MARK + bytes(size - len(plain) - 1)
    raise MetadataError(
        f"metadata of record {rid}: {len(plain)} bytes, more than the largest padded size "
        f"({META_BUCKETS[-1] - 1})"
    )


def unpad(padded: bytes) -> bytes:
    """The inverse of `pad`; refuses anything `pad` cannot have produced."""
    if len(padded) not in META_BUCKETS:
        raise ValueError(f"padded metadata of {len(padded)} bytes is not a bucket size")
    end = len(padded.rstrip(b"\x00"))
    if end == 0 or padded[end - 1 : end] != _MARK:
        raise ValueError("padded metadata has no 0x80 marker")
    return padded[: end - 1]


def fit(meta: dict[str, Any], rid: str = "?") -> bytes:
    """The metadata's padded plaintext, its title shortened if that is what it takes to fit."""
    plain = _encode(meta)
    title = meta.get("title")
    if len(plain) < META_BUCKETS[-1] or not isinstance(title, str):
        return pad(plain, rid)
    over = len(plain) - META_BUCKETS[-1] + 1
    cut = title.encode()[: max(0, len(title.encode()) - over - len("…".encode()))]
    short = cut.decode(errors="ignore") + "…" if cut else ""
    return pad(_encode({**meta, "title": short}), rid)


def seal_meta(
    meta_key: bytes,
    rid: str,
    version: int,
    meta: dict[str, Any],
    epoch: int = 0,
    derived: dict[tuple[bytes, str, int], bytes] | None = None,
) -> bytes:
    """The index's `meta_ct`: nonce + AES-GCM(padded metadata), a length from META_CT_SIZES.

    `meta_key` is the patient's metadata key at the custodian; the entry is sealed under the
    key of its category and of the patient's current `epoch` (`authorize.meta_epoch`), which
    the nonce's first bytes carry, so only that category's key holders of that epoch open it.
    `derived`: the caller's cache of category keys (one ingested unit: a patient's records
    share a few categories), kept no longer than the caller keeps the metadata key.
    """
    category = category_of(meta)
    if derived is None:
        key = category_key(meta_key, category, epoch)
    else:
        found = derived.get((meta_key, category, epoch))
        if found is None:
            found = derived[(meta_key, category, epoch)] = category_key(meta_key, category, epoch)
        key = found
    nonce = epoch.to_bytes(_EPOCH, "big") + os.urandom(_NONCE - _EPOCH)
    return nonce + AESGCM(key).encrypt(nonce, fit(meta, rid), _aad(rid, version))


def open_meta(keys: bytes | MetaKeys, rid: str, version: int, sealed: bytes) -> dict[str, Any]:
    """The entry's metadata, opened with the patient's metadata key (bytes: the custodian,
    who derives every key) or with the keys a holder was sealed ({epoch: {category: key}});
    `MetadataError` when none opens it (a category or epoch not granted, a key shredded or
    rotated, tampered bytes)."""
    if isinstance(keys, bytes | bytearray):
        keys = CustodianKeys(bytes(keys))
    aad = _aad(rid, version)
    for category, key in keys.get(epoch_of(sealed), {}).items():
        try:
            padded = AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
        except (InvalidTag, ValueError):
            continue  # not this category's key: try the next one
        try:
            meta: dict[str, Any] = cbor2.loads(unpad(padded))
        except (ValueError, cbor2.CBORDecodeError):
            break
        if not isinstance(meta, dict) or category_of(meta) != category:
            break  # sealed under another category's key than it says: refused as tampered
        return meta
    raise MetadataError(f"metadata of record {rid} v{version} does not open")
