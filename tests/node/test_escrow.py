"""A hospital's keys escrowed at its peers (node/escrow.py), without the network: split and
sealed per holder, released only as sealed to the new key, checked against the chain."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from nacl.public import PrivateKey

from medledger.node import escrow
from medledger.node.escrow import EscrowError
from medledger.vault import shamir

HOLDERS = ["aphp-paris", "chu-bordeaux", "chu-lille"]


def _world(threshold: int = 2) -> tuple[dict[str, PrivateKey], dict[str, Any], bytes, Any]:
    boxes = {org: PrivateKey.generate() for org in HOLDERS}
    status = {"holders": HOLDERS, "threshold": threshold, "record": None}
    secret = escrow.secret_of(secrets.token_bytes(32), secrets.token_bytes(32))
    prepared = escrow.prepare(status, {o: bytes(k.public_key) for o, k in boxes.items()}, secret)
    # what the contract makes of the deposit (contracts/escrow.py)
    record = {
        "org": "chu-lyon",
        "epoch": prepared.epoch,
        "threshold": threshold,
        "holders": [
            {"org": h, "x": x, "sha256": d}
            for x, (h, d) in enumerate(zip(HOLDERS, prepared.deposit.hashes, strict=True))
        ],
    }
    return boxes, record, secret, prepared


def _released(boxes, record, prepared, holder: str, to: PrivateKey) -> bytes:
    return escrow.release(
        record, holder, bytes(boxes[holder]), prepared.sealed[holder], bytes(to.public_key)
    )


def test_two_holders_release_to_the_new_key_and_the_keys_come_back() -> None:
    boxes, record, secret, prepared = _world()
    assert prepared.deposit.holders == HOLDERS and prepared.epoch == 1
    new_box = PrivateKey.generate()  # the fresh machine's
    good = {
        h: escrow.check_released(
            record, h, _released(boxes, record, prepared, h, new_box), bytes(new_box)
        )
        for h in HOLDERS[1:]
    }
    kek, backup_key = escrow.keys_of(escrow.rebuild(record, good))
    assert kek + backup_key == secret


def test_a_holder_learns_one_share_and_nothing_of_the_keys() -> None:
    boxes, record, secret, prepared = _world()
    mine = shamir.Share.from_bytes(
        escrow.check_released(
            record,
            HOLDERS[0],
            _released(boxes, record, prepared, HOLDERS[0], boxes[HOLDERS[0]]),
            bytes(boxes[HOLDERS[0]]),
        ).to_bytes()
    )
    assert mine.y != secret and secret[:32] not in mine.y and secret[32:] not in mine.y
    # its box key opens no other holder's share
    with pytest.raises(EscrowError, match="does not open"):
        escrow.release(
            record, HOLDERS[0], bytes(boxes[HOLDERS[0]]), prepared.sealed[HOLDERS[1]], b"\x01" * 32
        )
    # and k-1 = 1 share gives nothing: "rebuilding" from it is refused, and interpolating
    # anyway yields a value that is not the keys
    with pytest.raises(EscrowError, match="1 good share"):
        escrow.rebuild(record, {HOLDERS[0]: mine})
    assert shamir.combine([mine]) != secret


def test_a_corrupt_share_is_named_and_missing_holders_are_listed() -> None:
    boxes, record, _, prepared = _world(threshold=3)
    new_box = PrivateKey.generate()
    honest = _released(boxes, record, prepared, HOLDERS[0], new_box)
    share = escrow.check_released(record, HOLDERS[0], honest, bytes(new_box))
    # a holder sends someone else's share, or garbage sealed to us: its name is in the error
    swapped = _released(boxes, record, prepared, HOLDERS[1], new_box)
    with pytest.raises(EscrowError, match=f"^{HOLDERS[2]}: .*does not match its hash"):
        escrow.check_released(record, HOLDERS[2], swapped, bytes(new_box))
    from nacl.public import SealedBox

    garbage = SealedBox(new_box.public_key).encrypt(b"\x02" + b"\x00" * 64)
    with pytest.raises(EscrowError, match=f"^{HOLDERS[2]}:"):
        escrow.check_released(record, HOLDERS[2], garbage, bytes(new_box))
    with pytest.raises(EscrowError, match=f"missing from: {HOLDERS[1]}, {HOLDERS[2]}"):
        escrow.rebuild(record, {HOLDERS[0]: share})


def test_a_holder_whose_stored_share_was_altered_refuses_to_release_it() -> None:
    boxes, record, _, prepared = _world()
    from nacl.public import SealedBox

    altered = SealedBox(boxes[HOLDERS[0]].public_key).encrypt(b"\x00" + b"\x07" * 64)
    with pytest.raises(EscrowError, match="does not match its hash on the chain"):
        escrow.release(record, HOLDERS[0], bytes(boxes[HOLDERS[0]]), altered, b"\x01" * 32)


def test_no_escrow_without_enough_peers() -> None:
    status = {"holders": ["aphp-paris"], "threshold": 2, "record": None}
    with pytest.raises(EscrowError, match="1 peers can hold shares"):
        escrow.prepare(status, {"aphp-paris": b"\x01" * 32}, b"\x00" * 64)
