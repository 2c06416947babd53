"""Shamir's secret sharing over GF(256), byte by byte: k of n shares rebuild a secret.

Why here and not a library: the maintained GF(256) implementation on PyPI (SatoshiLabs'
`shamir-mnemonic`, SLIP-0039) exposes only its mnemonic layer; its split and recover are
private functions. This module is the same arithmetic as SLIP-0039 (Rijndael's field,
x^8 + x^4 + x^3 + x + 1; the secret is the polynomial's value at x = 255, the shares its
values at x = 0..n-1, the first k-1 of them drawn at random), so SLIP-0039's published test
vectors check it (tests/vault/test_shamir.py) with the library only as the tests' mnemonic
decoder. It carries no digest share: the escrow checks each share against its SHA-256 on the
chain instead, which also names the holder of a bad one.

Any k shares give the secret; k-1 shares are consistent with every secret (each byte of a
missing share is uniform), so k-1 holders together learn nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

#: Where the polynomial holds the secret (SLIP-0039's convention).
SECRET_X = 255
#: The largest number of shares (their x are 0..MAX_SHARES-1, apart from SECRET_X).
MAX_SHARES = 16


def _tables() -> tuple[list[int], list[int]]:
    """Powers of the generator 3 and their logarithms in GF(2^8) mod 0x11B."""
    exp, log = [0] * 255, [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value ^= (value << 1) ^ (0x11B if value & 0x80 else 0)  # value * 3
        value &= 0xFF
    return exp, log


_EXP, _LOG = _tables()


def mul(a: int, b: int) -> int:
    """a * b in GF(256)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[(_LOG[a] + _LOG[b]) % 255]


def inverse(a: int) -> int:
    """1 / a in GF(256) (a != 0)."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(256)")
    return _EXP[(255 - _LOG[a]) % 255]


@dataclass(frozen=True)
class Share:
    """One share: the polynomial's value `y` (as long as the secret) at `x`."""

    x: int
    y: bytes

    def to_bytes(self) -> bytes:
        return bytes([self.x]) + self.y

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) < 2:
            raise ValueError("a share is its x byte and at least one value byte")
        return cls(data[0], data[1:])


def interpolate(points: Sequence[Share], x: int) -> bytes:
    """The value at `x` of the lowest-degree polynomial through `points` (Lagrange)."""
    xs = [p.x for p in points]
    if not points:
        raise ValueError("no shares")
    if len(set(xs)) != len(xs):
        raise ValueError("two shares have the same x")
    if len({len(p.y) for p in points}) != 1:
        raise ValueError("the shares are not all of the same length")
    for p in points:
        if p.x == x:
            return p.y
    out = bytearray(len(points[0].y))
    for i, p in enumerate(points):
        # basis_i(x) = prod_{j != i} (x - x_j) / (x_i - x_j); subtraction is xor
        weight = 1
        for j, other in enumerate(xs):
            if j != i:
                weight = mul(weight, mul(x ^ other, inverse(p.x ^ other)))
        for n, byte in enumerate(p.y):
            out[n] ^= mul(weight, byte)
    return bytes(out)


def split(secret: bytes, threshold: int, count: int) -> list[Share]:
    """`count` shares of `secret`, any `threshold` of which rebuild it."""
    if not secret:
        raise ValueError("the secret is empty")
    if not 1 <= threshold <= count <= MAX_SHARES:
        raise ValueError(f"need 1 <= threshold <= count <= {MAX_SHARES}")
    if threshold == 1:
        return [Share(x, secret) for x in range(count)]
    drawn = [Share(x, secrets.token_bytes(len(secret))) for x in range(threshold - 1)]
    base = [*drawn, Share(SECRET_X, secret)]
    return drawn + [Share(x, interpolate(base, x)) for x in range(threshold - 1, count)]


def combine(shares: Sequence[Share]) -> bytes:
    """The secret from `threshold` (or more) shares; fewer give a wrong value, not an error:
    whoever combines checks the result (the escrow checks each share's hash first)."""
    return interpolate(shares, SECRET_X)
