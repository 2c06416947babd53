"""A hospital's keys escrowed at its peers: split, sealed, released, checked, rebuilt.

The secret is what a wiped hospital cannot get back from anyone else: its vault KEK (the
replicas' wrapped keys open under it) and its backup key (the replicas' blobs open under
it), 64 bytes. `prepare` splits it k of n (vault.shamir) for the holders the escrow contract
names and seals each share to that holder's box key; the holder keeps the sealed share in
its custody store and, once the members voted the hospital's rebinding, `release` reseals it
to the hospital's *new* box key. `check_released` verifies each share against its SHA-256 on
the chain, so a holder that corrupts its share is named, and `rebuild` refuses (naming who is
missing) unless k good shares are there.

This module does no I/O: the exchange carries the blobs (exchange/escrow.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from medledger.contracts.escrow import Deposit
from medledger.vault import shamir

KEY_SIZE = 32
#: Custody item ids of shares: `escrow-share-<epoch>-<its hash, 16 hex>`, so that no deposit,
#: even one racing another or retried, overwrites a share of another.
ITEM_PREFIX = "escrow-share-"


class EscrowError(Exception):
    """A share cannot be made, released or used; the message names the holder and why."""


def item_id(epoch: int, digest: bytes) -> str:
    """The custody item id of the share of `epoch` whose SHA-256 is `digest`: a holder finds
    it from the record on the chain alone."""
    return f"{ITEM_PREFIX}{epoch}-{digest.hex()[:16]}"


def share_hash(share: bytes) -> bytes:
    return hashlib.sha256(share).digest()


def secret_of(kek: bytes, backup_key: bytes) -> bytes:
    if len(kek) != KEY_SIZE or len(backup_key) != KEY_SIZE:
        raise EscrowError("the vault KEK and the backup key must be 32 bytes each")
    return kek + backup_key


def keys_of(secret: bytes) -> tuple[bytes, bytes]:
    """(KEK, backup key) from a rebuilt secret."""
    return secret[:KEY_SIZE], secret[KEY_SIZE:]


@dataclass(frozen=True)
class Prepared:
    """A deposit ready to go: the chain's message and each holder's sealed share."""

    deposit: Deposit
    epoch: int
    sealed: dict[str, bytes]


def prepare(status: Mapping[str, Any], box_keys: Mapping[str, bytes], secret: bytes) -> Prepared:
    """Split `secret` for the holders and threshold `status` (queries.escrow_status) names,
    each share sealed to its holder's box key (`box_keys`, org -> X25519 public key)."""
    holders: list[str] = list(status["holders"])
    threshold = int(status["threshold"])
    if threshold < 2 or len(holders) < threshold:
        raise EscrowError(
            f"{len(holders)} peers can hold shares, escrow_threshold is {threshold}: "
            "the consortium needs more members (or other params) for an escrow"
        )
    shares = shamir.split(secret, threshold, len(holders))
    sealed, hashes = {}, []
    for holder, share in zip(holders, shares, strict=True):
        box_key = box_keys.get(holder)
        if not box_key:
            raise EscrowError(f"{holder} has no box key on the chain")
        plain = share.to_bytes()
        sealed[holder] = SealedBox(PublicKey(box_key)).encrypt(plain)
        hashes.append(share_hash(plain))
    previous = status.get("record")
    epoch = 1 if previous is None else int(previous["epoch"]) + 1
    return Prepared(Deposit(holders, hashes, threshold, epoch), epoch, sealed)


def _holder_entry(record: Mapping[str, Any], holder: str) -> Mapping[str, Any]:
    for entry in record["holders"]:
        if entry["org"] == holder:
            return dict(entry)
    raise EscrowError(f"{holder} holds no share of {record['org']}'s escrow")


def release(
    record: Mapping[str, Any], holder: str, holder_box_private: bytes, sealed: bytes, to: bytes
) -> bytes:
    """The holder's side: open its sealed share, check it against the chain, reseal it to
    `to` (the member's current box key). The holder sees its one share, as it always could."""
    entry = _holder_entry(record, holder)
    try:
        plain = SealedBox(PrivateKey(holder_box_private)).decrypt(sealed)
    except CryptoError:
        raise EscrowError(f"{holder}: the share it keeps does not open with its box key") from None
    if share_hash(plain) != bytes(entry["sha256"]):
        raise EscrowError(f"{holder}: the share it keeps does not match its hash on the chain")
    return SealedBox(PublicKey(to)).encrypt(plain)


def check_released(
    record: Mapping[str, Any], holder: str, sealed: bytes, box_private: bytes
) -> shamir.Share:
    """The recovering member's side: open a released share and check it against its hash
    and its x on the chain; EscrowError names the holder otherwise."""
    entry = _holder_entry(record, holder)
    try:
        plain = SealedBox(PrivateKey(box_private)).decrypt(sealed)
    except CryptoError:
        raise EscrowError(f"{holder}: released a share not sealed to our new box key") from None
    if share_hash(plain) != bytes(entry["sha256"]):
        raise EscrowError(f"{holder}: released a share that does not match its hash on the chain")
    share = shamir.Share.from_bytes(plain)
    if share.x != int(entry["x"]) or len(share.y) != 2 * KEY_SIZE:
        raise EscrowError(f"{holder}: released a share of the wrong place or size")
    return share


def rebuild(record: Mapping[str, Any], good: Mapping[str, shamir.Share]) -> bytes:
    """The secret from the good shares (holder -> share), or EscrowError saying how many more
    are needed and from whom."""
    threshold = int(record["threshold"])
    if len(good) < threshold:
        others = [h["org"] for h in record["holders"] if h["org"] not in good]
        raise EscrowError(
            f"{len(good)} good share(s) of {threshold} needed; missing from: {', '.join(others)}"
        )
    return shamir.combine([good[h] for h in sorted(good)][:threshold])
