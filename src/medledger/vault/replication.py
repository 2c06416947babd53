"""The replication format: a vault as opaque items that peers keep without reading them.

Everything needed to rebuild a vault (wrapped patient keys, key sets, ciphertexts with their
sealed salts and aliases, erasure tombstones, the provisional-unit journal) is cut into
*items*, one per row or per record version (sql.py's `_ITEM_TABLES`), named in clear inside
the owner only (`key\\t<pid>`, `record\\t<rid>\\t<version>`, ...). What leaves the hospital:

- the item id: `HMAC-SHA256(K_id, name)` in hex, `K_id = HKDF(backup key, "…/item-id")`, so
  a peer cannot tell a key from a record, nor link an id to a pid or rid; a patient's
  wrapped key is the one exception in form, not in what it shows: its id is
  `SHA-256(CBOR [label, owner, pid, proof])` with `proof = HMAC-SHA256(K_id, name)`, so that
  once the chain states the patient shredded (`records.shredded`) the owner can show a peer
  which item is that key (pid and proof) and the peer purges it at once, trash included,
  while a thief holding the old keys cannot pass another item off as an erased patient's;
- the blob: `nonce (12) || AES-256-GCM(K_seal, pad(CBOR [name, rows]), ad)`, with
  `K_seal = HKDF(backup key, "…/seal")` and `ad = CBOR [label, owner, item id, version]`,
  so a blob cannot be moved to another id, another owner or passed off as another version;
  the plaintext is padded (ISO/IEC 7816-4) to the next power of two from 512 bytes, so a
  peer learns an item's size only to within a factor of two;
- the version: a number that rises with each send of the item (the owner's clock, in
  microseconds), which lets a restore keep the newest of the copies it gets back.

The backup key is 32 random bytes in `keys/backup.key`; peers never have it (it is escrowed
with Shamir shares, see docs/recovery.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.vault.keys import hkdf

LABEL = "medledger/replica/v1"
KEY_ITEM_LABEL = f"{LABEL}/key-item"
NONCE_SIZE = 12
MIN_BUCKET = 512
_KINDS = frozenset({"key", "set", "copy-erasure", "erasure", "record", "shredded", "unit"})
_INT_KEYS = {("erasure", 1), ("record", 1)}  # (kind, position) of the integer key parts


class ReplicaError(ValueError):
    """A blob that does not open under this owner's backup key as the item it claims to be."""


def item_name(kind: str, *key: Any) -> str:
    """The item's name in clear (never leaves the owner): kind and key, tab-separated
    (no vault id holds a tab: rids, pids and units are printable ASCII)."""
    return "\t".join([kind, *(str(k) for k in key)])


def parse_item_name(name: str) -> tuple[str, tuple[Any, ...]]:
    """(kind, key) of an item name, integer parts as ints."""
    kind, *parts = name.split("\t")
    if kind not in _KINDS or not parts:
        raise ReplicaError(f"item name {name[:40]!r}: unknown kind")
    key = tuple(int(p) if (kind, i) in _INT_KEYS else p for i, p in enumerate(parts))
    return kind, key


def bucket(size: int) -> int:
    """The padded size of a plaintext of `size` bytes (+1 for the padding marker)."""
    padded = MIN_BUCKET
    while padded < size + 1:
        padded *= 2
    return padded


def _pad(data: bytes) -> bytes:
    return data + b"\x80" + b"\x00" * (bucket(len(data)) - len(data) - 1)


def _unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\x00")
    if not end.endswith(b"\x80"):
        raise ReplicaError("bad padding")
    return end[:-1]


def key_item_id(owner: str, pid: str, proof: bytes) -> str:
    """The id of `owner`'s item holding patient `pid`'s wrapped key, from its proof: what a
    peer computes to purge that item when the chain says the patient was shredded."""
    return hashlib.sha256(cbor2.dumps([KEY_ITEM_LABEL, owner, pid, proof])).hexdigest()


@dataclass(frozen=True)
class Sealed:
    id: str
    version: int
    blob: bytes

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.blob).digest()


class ReplicaKeys:
    """One owner's item ids and seals, derived from its backup key."""

    def __init__(self, backup_key: bytes, owner: str) -> None:
        if len(backup_key) != 32:
            raise ValueError("the backup key must be 32 bytes")
        self.owner = owner
        self._id_key = hkdf(backup_key, f"{LABEL}/item-id".encode())
        self._aead = AESGCM(hkdf(backup_key, f"{LABEL}/seal".encode()))

    def item_id(self, name: str) -> str:
        kind, _, pid = name.partition("\t")
        if kind == "key":
            return key_item_id(self.owner, pid, self.key_proof(pid))
        return self._hmac(name).hex()

    def key_proof(self, pid: str) -> bytes:
        """What shows a peer that an id is `pid`'s wrapped key (see key_item_id)."""
        return self._hmac(item_name("key", pid))

    def _hmac(self, name: str) -> bytes:
        return hmac.new(self._id_key, name.encode(), hashlib.sha256).digest()

    def _ad(self, item_id: str, version: int) -> bytes:
        return cbor2.dumps([LABEL, self.owner, item_id, version])

    def seal(self, name: str, rows: dict[str, list[list[Any]]], version: int) -> Sealed:
        item_id = self.item_id(name)
        nonce = secrets.token_bytes(NONCE_SIZE)
        plaintext = _pad(cbor2.dumps([name, rows]))
        blob = nonce + self._aead.encrypt(nonce, plaintext, self._ad(item_id, version))
        return Sealed(item_id, version, blob)

    def open(self, item_id: str, version: int, blob: bytes) -> tuple[str, dict[str, Any]]:
        """(name, rows) of a blob held under `item_id` at `version`; ReplicaError when the
        tag fails (corrupted, another owner's, moved or re-versioned) or the name inside is
        not the one the id stands for."""
        try:
            plaintext = self._aead.decrypt(
                blob[:NONCE_SIZE], blob[NONCE_SIZE:], self._ad(item_id, version)
            )
            name, rows = cbor2.loads(_unpad(plaintext))
        except (InvalidTag, ValueError, TypeError, cbor2.CBORDecodeError):
            raise ReplicaError(f"item {item_id[:16]}…: does not open (AES-GCM tag)") from None
        # a wrapped key sealed before key ids were provable keeps its plain HMAC id
        ids: tuple[str, ...] = (
            (self.item_id(name), self._hmac(name).hex()) if isinstance(name, str) else ()
        )
        if not isinstance(rows, dict) or item_id not in ids:
            raise ReplicaError(f"item {item_id[:16]}…: holds another item than its id")
        return name, rows
