"""Shamir's secret sharing over GF(256) (vault/shamir.py): published vectors and properties."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.vault import shamir
from medledger.vault.shamir import Share, combine, interpolate, split

VECTORS = Path(__file__).parents[1] / "data" / "slip39" / "vectors.json"


def test_field_arithmetic_matches_fips_197() -> None:
    # FIPS-197 (AES) section 4.2: {57} * {83} = {c1}, {57} * {13} = {fe}; 4.2.1's xtime chain
    assert shamir.mul(0x57, 0x83) == 0xC1
    assert shamir.mul(0x57, 0x13) == 0xFE
    assert [shamir.mul(0x57, 1 << i) for i in range(4)] == [0x57, 0xAE, 0x47, 0x8E]
    # the multiplicative inverse of {53} is {ca} (the AES S-box's construction, 5.1.1)
    assert shamir.inverse(0x53) == 0xCA
    assert all(shamir.mul(a, shamir.inverse(a)) == 1 for a in range(1, 256))


def _slip39_master_secret(mnemonics: list[str]) -> bytes:
    """Decode SLIP-0039 mnemonics with the reference library, combine with OUR interpolation
    (both levels: members into a group secret, groups into the encrypted master secret), and
    decrypt with the reference cipher."""
    cipher = pytest.importorskip("shamir_mnemonic.cipher")
    share_mod = pytest.importorskip("shamir_mnemonic.share")
    decoded = [share_mod.Share.from_mnemonic(m) for m in mnemonics]
    groups: dict[int, list[Any]] = defaultdict(list)
    for s in decoded:
        groups[s.group_index].append(s)
    group_secrets = []
    for index, members in sorted(groups.items()):
        threshold = members[0].member_threshold
        if len(members) < threshold:
            continue  # an incomplete group (the vector gives more than enough groups)
        points = [Share(m.index, m.value) for m in members[:threshold]]
        group_secrets.append(Share(index, combine(points) if threshold > 1 else points[0].y))
    first = decoded[0]
    chosen = group_secrets[: first.group_threshold]
    ems = combine(chosen) if first.group_threshold > 1 else chosen[0].y
    secret: bytes = cipher.decrypt(
        ems, b"TREZOR", first.iteration_exponent, first.identifier, first.extendable
    )
    return secret


@pytest.mark.parametrize("index", range(9))
def test_slip39_published_vectors(index: int) -> None:
    mnemonics, expected = json.loads(VECTORS.read_text())["vectors"][index]
    assert _slip39_master_secret(mnemonics).hex() == expected


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    threshold=st.integers(1, 5),
    extra=st.integers(0, 3),
)
def test_any_threshold_shares_rebuild_the_secret(secret: bytes, threshold: int, extra: int) -> None:
    shares = split(secret, threshold, threshold + extra)
    for subset in itertools.combinations(shares, threshold):
        assert combine(list(subset)) == secret


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=8, max_size=8),
    other=st.binary(min_size=8, max_size=8),
    threshold=st.integers(2, 4),
)
def test_fewer_shares_are_consistent_with_every_secret(
    secret: bytes, other: bytes, threshold: int
) -> None:
    """k-1 shares of `secret` fit `other` just as well: through them and (SECRET_X, other)
    passes a polynomial of the same degree, whose k-th share rebuilds `other` with them."""
    shares = split(secret, threshold, threshold + 1)
    known = shares[: threshold - 1]
    fitted = [*known, Share(shamir.SECRET_X, other)]
    forged = Share(shares[-1].x, interpolate(fitted, shares[-1].x))
    assert combine([*known, forged]) == other
    assert combine([*known, shares[-1]]) == secret


def test_a_share_alone_is_uniform_whatever_the_secret() -> None:
    """With k = 2 every value of a one-byte share is as likely for secret 0 as for 255."""
    for x in range(3):
        for secret in (b"\x00", b"\xff"):
            seen = {split(secret, 2, 3)[x].y[0] for _ in range(3000)}
            assert len(seen) > 240  # 256 values, 3000 draws: all but a few turn up


def test_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="threshold"):
        split(b"k", 3, 2)
    with pytest.raises(ValueError, match="empty"):
        split(b"", 1, 1)
    a, b = split(b"secret", 2, 2)
    with pytest.raises(ValueError, match="same x"):
        combine([a, a])
    with pytest.raises(ValueError, match="same length"):
        combine([a, Share(b.x, b.y[:-1])])
    assert Share.from_bytes(a.to_bytes()) == a
