"""Review of session 7's custody trash (issue 15, branch `thief`): what a thief holding the
wiped hospital's current signing key can still destroy at the replica peers before the
rebinding vote executes."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from medledger.exchange.client import ExchangeError
from medledger.node import shredding
from medledger.node.custody import CustodyStore, Item
from medledger.node.replicas import ensure_backup_key, replica_peers
from medledger.vault import Vault
from medledger.vault.replication import ReplicaKeys, item_name
from tests.exchange.conftest import A, Sandbox, bundles, wait_for
from tests.exchange.test_replicas import replicated, snapshot, wipe_and_restore

OLDER_KEY = b"\x07" * 32  # the hospital's signing key before a routine `--rotate signing`


def _history(sandbox: Sandbox, peer: str, put_by: bytes) -> None:
    """What the peer's custody file says put A's items: `b""` for items stored before the
    trash existed (the column's default when an older custody.db is opened), or an older
    signing key of A's (items put before A rotated its key are not sent again)."""
    db = sqlite3.connect(sandbox.x(peer).custody.path)
    with db:
        db.execute("UPDATE items SET put_by = ? WHERE owner = ?", (put_by, A))
    db.close()


@pytest.mark.parametrize("put_by", [b"", OLDER_KEY], ids=["before-the-trash", "rotated-key"])
def test_a_thief_cannot_empty_the_trash_of_what_an_older_key_put(
    ingested: tuple[Sandbox, list[str]], put_by: bytes
) -> None:
    """`custody-empty-trash` destroys the trashed versions that a key other than the caller's
    put, meant for the member rebound by vote. But the rebound key is not the only key other
    than the one that put an item: every item a peer stored before the trash existed (put_by
    empty), and every item put before the member's last key rotation, qualifies too; and the
    thief can make the second case itself, with no precondition: `member update --rotate
    signing` needs only the current key. It drops every item (to the trash), rotates, and
    empties the trash: nothing is left for the recovery."""
    sandbox, _ = ingested
    thief = sandbox.x(A).client  # A's current signing key, taken with the machine
    peers = replica_peers(sandbox.root.engine, A)
    for peer in peers:
        _history(sandbox, peer, put_by)
        ids = [i.id for i in thief.custody_list(peer)[0]]
        for i in range(0, len(ids), 500):
            thief.custody_drop(peer, ids[i : i + 500])
        held = sandbox.x(peer).custody.usage(A).trash_items
        assert held >= len(ids) > 0
        with contextlib.suppress(ExchangeError):  # refused: only a key a rebinding gave
            thief.custody_empty_trash(peer)
        assert sandbox.x(peer).custody.usage(A).trash_items == held, (
            f"{peer}: the thief emptied the trash of what {A}'s older key put"
        )


def test_an_old_shred_statement_does_not_purge_the_key_of_a_patient_who_came_back(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """`custody-purge` checks that the chain holds the owner's `records.shredded` of the pid,
    but the statement stays for ever, and a patient erased at a hospital may come back to it
    (a new generation of their keys, a new custody: records.py). The wrapped key's item id
    is the pid's in every generation, so whoever holds the owner's key (a thief, before the
    rebinding vote) purges the returned patient's current key at every peer, trash included,
    without a new statement on the chain: nothing shows it, and the recovery cannot read the
    patient's records again."""
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    pid = pids[0]
    shredding.shred(hosp.node, hosp.vault, pid)
    hosp.vault.reinstate(pid)  # `medledger vault reinstate`: the patient came back
    back = bundles(3)[0]  # the same patient comes back to A: new records, a new generation
    again, _ = sandbox.ingest(A, back)
    assert again == pid
    wait_for(lambda: replicated(sandbox, A), what="the returned patient's replicas")
    keys = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A)
    key_id = keys.item_id(item_name("key", pid))
    peer = replica_peers(sandbox.root.engine, A)[0]
    assert sandbox.x(peer).custody.get(A, [key_id]), "the returned patient's key is at the peer"
    thief = sandbox.x(A).client
    with contextlib.suppress(ExchangeError):  # refused: the statement predates the return
        thief.custody_purge(peer, pid, keys.key_proof(pid))
    store = sandbox.x(peer).custody
    live = [i.id for i in store.get(A, [key_id])]
    trashed = [i.id for i in store.trash_listing(A) if i.id == key_id]
    assert live or trashed, "an old shred statement purged the current key of a returned patient"


def test_a_forged_erasure_tombstone_does_not_leave_a_patient_out_of_the_restore(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """The thief holds the backup key: it seals an erasure tombstone for a patient the
    hospital never erased and puts it at every peer (a new item: nothing is replaced). The
    restore lets tombstones win over everything, so the patient's records, still live at
    the peers, are left out; the chain holds no shred statement of them and still names
    them, so the report calls them missing and nothing brings them back."""
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    vault = hosp.vault
    victim, erased = pids[0], pids[2]
    before = {k: v for k, v in snapshot(vault).items() if k[0] in _rids(vault, victim)}
    shredding.shred(hosp.node, vault, erased)  # a real erasure: its tombstone is the model
    wait_for(lambda: replicated(sandbox, A), what="the erasure at the replica peers")
    keys = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A)
    (model,) = vault.read_items([item_name("erasure", erased, 1)]).values()
    assert model is not None, "the real erasure's tombstone"
    forged = {
        table: [[victim if v == erased else v for v in row] for row in rows]
        for table, rows in model.items()
    }
    sealed = keys.seal(item_name("erasure", victim, 1), forged, 1)
    thief = sandbox.x(A).client
    for peer in replica_peers(sandbox.root.engine, A):
        thief.custody_put(peer, [Item(sealed.id, sealed.version, sealed.sha256, sealed.blob)])
    report, restored = wipe_and_restore(sandbox, A)
    assert not report.missing, f"left out under a forged tombstone: {report.missing[:3]}"
    assert {k: v for k, v in snapshot(restored).items() if k in before} == before


def _rids(vault: Vault, pid: str) -> set[str]:
    return {info.rid for info in vault.records_of(pid)}


DAY = 86_400.0


def test_a_version_dropped_again_is_kept_the_grace_period_from_its_last_drop(
    tmp_path: Path,
) -> None:
    """The thief has had the key for a while before it wipes the machine (intruders often
    wait weeks). Thirty days ahead it drops every item and puts it straight back (the same
    bytes, fetched from the trash): the hospital sees nothing, its items are live. The day it
    wipes the machine it drops them again. The trash keeps one row per (owner, id, sha256)
    and ignores the second: the version counts as trashed since the first drop and is purged
    a day later, before the members can vote the rebinding."""
    store = CustodyStore(tmp_path / "custody.db")
    try:
        quota = 10_000
        blob = b"the good version" * 10
        good = Item("a" * 64, 1, hashlib.sha256(blob).digest(), blob)
        store.put(A, [good], quota, by_key=b"k")
        store.drop(A, [good.id], now=0.0)  # day 0: dropped...
        (back,) = store.get_trashed(A, [i.trash for i in store.trash_listing(A)]).values()
        store.put(A, [back], quota, by_key=b"k")  # ...and put back at once
        assert [i.id for i in store.get(A, [good.id])] == [good.id]
        store.drop(A, [good.id], now=29 * DAY)  # day 29: the machine is wiped, all dropped
        grace = 30 * DAY
        store.purge_expired(before=30 * DAY - grace + 1)  # day 30: the node's hourly purge
        store.purge_expired(before=31 * DAY - grace)  # day 31
        kept = [i.id for i in store.trash_listing(A)]
        assert kept == [good.id], "dropped on day 29, purged by day 31"
    finally:
        store.close()
