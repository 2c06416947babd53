"""Custody at peers: a member keeps another's sealed items in custody.db, apart from its vault,
always under the owner that the signed, mTLS-authenticated call names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medledger.exchange.client import ExchangeError
from medledger.node.custody import CustodyRefused, CustodyStore, Item, Usage

from .conftest import A, B, C, Sandbox


def item(item_id: str, blob: bytes, version: int = 1) -> Item:
    return Item(item_id, version, hashlib.sha256(blob).digest(), blob)


def test_a_member_stores_lists_gets_and_drops_its_items_at_a_peer(sandbox: Sandbox) -> None:
    client = sandbox.x(A).client
    blobs = {f"{i:064x}": bytes([i]) * (100 + i) for i in range(3)}
    usage = client.custody_put(B, [item(k, v) for k, v in blobs.items()])
    assert usage == sum(len(v) for v in blobs.values())

    listed, held = client.custody_list(B)
    assert [i.id for i in listed] == sorted(blobs)
    assert held == usage
    got = client.custody_get(B, [*sorted(blobs), "f" * 64])
    assert {i.id: i.blob for i in got} == blobs

    receipt = client.custody_drop(B, [f"{0:064x}"])  # checked against B's key on the chain
    assert len(receipt) == 64
    assert [i.id for i in client.custody_list(B)[0]] == sorted(blobs)[1:]


def test_a_peer_keeps_items_apart_per_owner_and_out_of_its_vault(sandbox: Sandbox) -> None:
    a, c = sandbox.x(A).client, sandbox.x(C).client
    a.custody_put(B, [item("a" * 64, b"sealed by chu-lyon")])
    # Another member names the same id: it reads, lists and drops only its own.
    assert c.custody_get(B, ["a" * 64]) == []
    assert c.custody_list(B) == ([], 0)
    c.custody_drop(B, ["a" * 64])
    assert [i.blob for i in a.custody_get(B, ["a" * 64])] == [b"sealed by chu-lyon"]
    # The holder's vault has nothing new: the blob is no patient's record there.
    assert sandbox.h[B].vault.patients() == []


def test_custody_refusals_name_the_item_and_the_reason(sandbox: Sandbox) -> None:
    client = sandbox.x(A).client
    with pytest.raises(ExchangeError) as bad_id:
        client.custody_put(B, [item("Not/An/Id", b"x")])
    assert bad_id.value.status == 400 and "items[0].id: bad item id" in bad_id.value.reason
    wrong = Item("b" * 64, 1, hashlib.sha256(b"other").digest(), b"x")
    with pytest.raises(ExchangeError) as bad_hash:
        client.custody_put(B, [wrong])
    assert "items[0].sha256: does not match" in bad_hash.value.reason
    assert client.custody_list(B) == ([], 0)  # nothing half-written


def test_only_the_hospitals_own_key_reaches_its_custody(sandbox: Sandbox) -> None:
    from medledger.ledger.keys import SigningKey

    doctor = SigningKey.generate()
    sandbox.h[A].node.wallet.send(
        "identity.register",
        {"practitioner": "dr-martin", "key": doctor.public_key, "roles": ["physician"]},
    )
    client = sandbox.x(A).client
    client.custody_put(B, [item("a" * 64, b"sealed")])
    with pytest.raises(ExchangeError) as practitioner:
        client.with_signer(doctor).custody_get(B, ["a" * 64])
    assert practitioner.value.status == 403
    assert "only the hospital's own key" in practitioner.value.reason
    with pytest.raises(ExchangeError) as unknown:
        client.with_signer(SigningKey.generate()).custody_list(B)
    assert unknown.value.status == 401


def test_the_quota_bounds_what_one_owner_keeps(tmp_path: Path) -> None:
    store = CustodyStore(tmp_path / "custody.db")
    store.put(A, [item("a1", b"x" * 600)], quota_bytes=1300)
    with pytest.raises(CustodyRefused) as over:
        store.put(A, [item("a2", b"y" * 600)], quota_bytes=1300)
    assert over.value.status == 507 and "custody_quota_mb" in over.value.reason
    # Replacing an item keeps the old bytes in the owner's trash: both count (the owner's
    # key may be a thief's); another owner has its own quota.
    with pytest.raises(CustodyRefused):
        store.put(A, [item("a1", b"z" * 900, version=2)], quota_bytes=1300)
    store.put(A, [item("a1", b"z" * 900, version=2)], quota_bytes=2100)
    store.put(C, [item("a2", b"y" * 600)], quota_bytes=1300)
    assert store.usage(A) == Usage(900, 1, 600, 1) and store.usage(C).bytes == 600
    assert store.drop(A, ["a1", "zz"]) == (["a1"], ["zz"])
    assert store.usage(A) == Usage(0, 0, 1500, 2)
    store.close()
