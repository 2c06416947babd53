"""Pairwise masks: each hospital's answer is hidden from everyone, the sum is not.

Every pair of answering hospitals (i, j) shares a seed without talking: the X25519 agreement
of i's box secret with j's box public key (both members' box keys are on the chain), the same
number on both sides. For a query, i adds to each cell c of its answer the stream

    PRG(s_ij, query, c) = SHAKE-256("medledger/study-mask" 0 s_ij 0 query)[8c : 8c+8]

for every other answerer j, with the sign + when i's org sorts before j's and - otherwise, all
mod 2^64. Summed over every answerer the masks cancel pair by pair, so the contract's sum of
the masked vectors is the plain sum, while one hospital's vector alone is uniformly random to
whoever does not hold one of its pair seeds. A missing answerer leaves its pairs' masks in
the sum: the query is then incomplete and publishes nothing.

Pure (no I/O): `seed` and `mask` are deterministic functions of their arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

MOD = 2**64
_DOMAIN = b"medledger/study-mask\x00"


def seed(box_secret: bytes, peer_box_public: bytes) -> bytes:
    """s_ij: the X25519 shared secret of this hospital's box key and a peer's public one."""
    private = X25519PrivateKey.from_private_bytes(box_secret)
    return private.exchange(X25519PublicKey.from_public_bytes(peer_box_public))


def seed_pairs(
    org: str, box_secret: bytes, box_publics: Mapping[str, bytes], answerers: Iterable[str]
) -> list[tuple[int, bytes]]:
    """(sign, s_ij) for every other answerer j: +1 when org < j, -1 otherwise."""
    return [
        (1 if org < other else -1, seed(box_secret, box_publics[other]))
        for other in sorted(set(answerers))
        if other != org
    ]


def mask(pairs: Iterable[tuple[int, bytes]], query_id: str, n_cells: int) -> list[int]:
    """The mask vector (n_cells integers in [0, 2^64)) of one answerer for one query."""
    total = [0] * n_cells
    for sign, pair_seed in pairs:
        stream = hashlib.shake_256(_DOMAIN + pair_seed + b"\x00" + query_id.encode()).digest(
            8 * n_cells
        )
        for c in range(n_cells):
            total[c] += sign * int.from_bytes(stream[8 * c : 8 * c + 8], "big")
    return [x % MOD for x in total]


def masked(cells: list[int], mask_vector: list[int]) -> list[int]:
    """An answer as posted: (tally + mask) mod 2^64, cell by cell (a negative tally wraps)."""
    if len(cells) != len(mask_vector):
        raise ValueError(f"{len(cells)} cells but a mask of {len(mask_vector)}")
    return [(c + m) % MOD for c, m in zip(cells, mask_vector, strict=True)]


def unmask_sum(answers: Iterable[list[int]]) -> list[int]:
    """What the contract computes: the sum mod 2^64, as signed integers (tests, checks)."""
    vectors = list(answers)
    if not vectors:
        return []
    sums = [sum(col) % MOD for col in zip(*vectors, strict=True)]
    return [s - MOD if s >= MOD // 2 else s for s in sums]
