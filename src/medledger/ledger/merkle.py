"""Merkle roots and inclusion proofs over tx ids (RFC 6962 style, domain-separated).

Leaves are hashed with a 0x00 prefix and inner nodes with 0x01, so a leaf can never pass for
an inner node. An odd node is promoted unchanged, like CometBFT's simple Merkle tree split.
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(item: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + item).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than n (RFC 6962)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(items: list[bytes]) -> bytes:
    """The root over items: level by level, pairing neighbours and promoting an odd last
    node, which builds the same tree as RFC 6962's split (`_root`) without its recursion and
    slices (a block's tx root hashes every tx id on every node)."""
    if not items:
        return EMPTY_ROOT
    sha = hashlib.sha256
    level = [sha(b"\x00" + i).digest() for i in items]
    while len(level) > 1:
        paired = [
            sha(b"\x01" + level[j] + level[j + 1]).digest() for j in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _root(hashes: list[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return inner_hash(_root(hashes[:k]), _root(hashes[k:]))


def proof(items: list[bytes], index: int) -> list[tuple[str, bytes]]:
    """Audit path for items[index]: a list of (side, sibling hash), leaf to root."""
    if not 0 <= index < len(items):
        raise IndexError("index out of range")
    return _proof([leaf_hash(i) for i in items], index)


def _proof(hashes: list[bytes], index: int) -> list[tuple[str, bytes]]:
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*_proof(hashes[:k], index), ("R", _root(hashes[k:]))]
    return [*_proof(hashes[k:], index - k), ("L", _root(hashes[:k]))]


def verify_proof(item: bytes, path: list[tuple[str, bytes]], expected_root: bytes) -> bool:
    h = leaf_hash(item)
    for side, sibling in path:
        if side == "R":
            h = inner_hash(h, sibling)
        elif side == "L":
            h = inner_hash(sibling, h)
        else:
            return False
    return h == expected_root
