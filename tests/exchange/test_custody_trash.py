"""A thief holding a hospital's old keys cannot destroy its replicas: peers keep what the
owner's key drops or replaces in a trash for custody_grace_days (counted in the quota), a
restore takes it back and the chain's commitments decide which version, and only an erasure
the chain states purges at once."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest

from medledger.exchange.client import ExchangeClient, ExchangeError
from medledger.exchange.replicator import Replicator
from medledger.node import shredding
from medledger.node.custody import CustodyRefused, CustodyStore, Item, Usage
from medledger.node.replicas import (
    PENDING_PURGES,
    TRASH_TO_EMPTY,
    ensure_backup_key,
    replica_peers,
)
from medledger.vault import Vault
from medledger.vault.replication import ReplicaKeys, item_name

from . import test_replicas
from .conftest import A, Sandbox, wait_for
from .test_recovery import _ingest, _lose_and_rebind, _recover, _replicated, four
from .test_replicas import snapshot, wipe_and_restore

ingested = test_replicas.ingested  # A's vault with four patients, at its replica peers
four_hospitals = four  # four hospitals, keys escrowed 2 of 3

THIEF_KEY, REBOUND_KEY = b"\x01" * 32, b"\x02" * 32


def _listed(client: ExchangeClient, peer: str) -> list[str]:
    return [i.id for i in client.custody_list(peer)[0]]


def _key_id(sandbox: Sandbox, pid: str) -> str:
    keys = ReplicaKeys(ensure_backup_key(sandbox.h[A].node.config.home), A)
    return keys.item_id(item_name("key", pid))


def test_a_thief_dropping_every_replica_does_not_stop_the_restore(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, _ = ingested
    before = snapshot(sandbox.h[A].vault)
    thief = sandbox.x(A).client  # the old machine's key, stolen with it
    for peer in replica_peers(sandbox.root.engine, A):
        ids = _listed(thief, peer)
        for i in range(0, len(ids), 500):
            thief.custody_drop(peer, ids[i : i + 500])
        assert thief.custody_list(peer) == ([], 0)
        assert len(thief.custody_list(peer, trash=True)[0]) >= len(ids)
    report, vault = wipe_and_restore(sandbox, A, require_complete=True)
    assert report.complete and not report.lost and not report.corrupt
    assert report.from_trash >= report.items > 0
    assert snapshot(vault) == before


def test_a_thief_replacing_replicas_with_garbage_leaves_the_committed_versions(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """Garbage of the same sizes under the same ids and newer versions: the live copies at
    every peer are the thief's. The restore takes the versions the peers kept, names nothing
    lost, and does not call the peers corrupt for keeping what the owner's key sent."""
    sandbox, _ = ingested
    before = snapshot(sandbox.h[A].vault)
    thief = sandbox.x(A).client
    peers = replica_peers(sandbox.root.engine, A)
    for peer in peers:
        listed, _ = thief.custody_list(peer)
        garbage = [
            Item(i.id, i.version + 10**12, hashlib.sha256(g).digest(), g)
            for i in listed
            for g in [secrets.token_bytes(i.size)]
        ]
        for i in range(0, len(garbage), 200):
            thief.custody_put(peer, garbage[i : i + 200])
    report, vault = wipe_and_restore(sandbox, A, require_complete=True)
    assert report.complete and report.lost == [] and report.corrupt == {}
    assert sorted(report.replaced) == sorted(peers)
    assert snapshot(vault) == before


def test_an_erasure_purges_the_wrapped_key_at_once_trash_included(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    pid = pids[0]
    key_id = _key_id(sandbox, pid)
    peers = replica_peers(sandbox.root.engine, A)
    assert all(sandbox.x(p).custody.get(A, [key_id]) for p in peers)
    result = shredding.shred(hosp.node, hosp.vault, pid)
    assert sorted(result.key_purged) == sorted(peers) and result.key_purge_pending == ()
    for peer in peers:
        store = sandbox.x(peer).custody
        assert store.get(A, [key_id]) == []
        assert key_id not in {i.id for i in store.trash_listing(A)}, f"{peer} kept the key"


def test_a_purge_without_the_chains_shred_statement_is_refused(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """A thief can name a pid and compute its proof (it has the backup key); the peer purges
    only when the chain says the owner shredded that patient, and only that patient's key:
    it computes the id from the pid itself."""
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    keys = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A)
    peer = replica_peers(sandbox.root.engine, A)[0]
    kept = _key_id(sandbox, pids[1])
    with pytest.raises(ExchangeError) as refused:
        sandbox.x(A).client.custody_purge(peer, pids[1], keys.key_proof(pids[1]))
    assert refused.value.status == 409 and "records.shredded" in refused.value.reason
    shredding.shred(hosp.node, hosp.vault, pids[0])
    # a real statement (pids[0]) with another patient's proof purges nothing of theirs
    _, held = sandbox.x(A).client.custody_purge(peer, pids[0], keys.key_proof(pids[1]))
    assert not held
    assert [i.id for i in sandbox.x(peer).custody.get(A, [kept])] == [kept]


def test_a_peer_down_at_the_erasure_purges_the_key_when_it_returns(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    down = replica_peers(sandbox.root.engine, A)[1]
    key_id = _key_id(sandbox, pids[0])
    sandbox.x(down).stop()
    sandbox.h[down].exchange = None
    result = shredding.shred(hosp.node, hosp.vault, pids[0])
    assert result.key_purge_pending == (down,)
    assert (hosp.node.config.home / PENDING_PURGES).exists()
    store = sandbox.start(down).custody
    sandbox.x(A).replicator.wake()

    def gone() -> bool:
        trashed = {i.id for i in store.trash_listing(A)}
        return not store.get(A, [key_id]) and key_id not in trashed

    wait_for(gone, timeout=60, what=f"the erased key purged at {down}")
    wait_for(lambda: not (hosp.node.config.home / PENDING_PURGES).exists(), what="no purge left")


def _blob(n: int, fill: bytes) -> Item:
    blob = fill * n
    return Item("a" * 64, 1, hashlib.sha256(blob).digest(), blob)


def test_the_trash_counts_in_the_quota_and_nothing_is_evicted_for_room(tmp_path: Path) -> None:
    store = CustodyStore(tmp_path / "custody.db")
    try:
        quota = 2000
        store.put(A, [_blob(600, b"o")], quota, by_key=THIEF_KEY)  # the original
        store.put(A, [_blob(600, b"g")], quota, by_key=THIEF_KEY)  # the thief's garbage
        assert store.usage(A) == Usage(600, 1, 600, 1)
        extra = Item("b" * 64, 1, hashlib.sha256(b"x" * 100).digest(), b"x" * 100)
        with pytest.raises(CustodyRefused) as full:
            store.put(A, [extra], quota, by_key=REBOUND_KEY)
        assert full.value.status == 507 and "in its trash" in full.value.reason
        # Refused, and nothing live or trashed went to make room.
        (live,) = store.get(A, ["a" * 64])
        assert live.blob == b"g" * 600
        (original,) = store.get_trashed(A, [i.trash for i in store.trash_listing(A)]).values()
        assert original.blob == b"o" * 600
        # The key that put it cannot empty the trash; the member's new key can.
        assert store.empty_trash(A, THIEF_KEY) == 0
        assert store.empty_trash(A, REBOUND_KEY) == 1
        store.put(A, [extra], quota, by_key=REBOUND_KEY)
        # The grace period: what was dropped before `before` is purged by the running node.
        store.drop(A, ["b" * 64], now=1000.0)
        assert store.purge_expired(before=999.0) == 0
        assert store.purge_expired(before=1001.0) == 1
        assert store.usage(A) == Usage(600, 1, 0, 0)
    finally:
        store.close()


def test_versions_forged_with_the_stolen_backup_key_lose_to_the_chains_commitments(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """The thief also holds the backup key: it seals a record with other bytes, and another
    patient's wrapped key with other bytes, both valid seals with the newest versions, and does
    it ten times over (each put trashes the one before). The restore tries every other version
    the peers kept, however many, until the commitments on the chain match."""
    sandbox, pids = ingested
    vault = sandbox.h[A].vault
    before = snapshot(vault)
    keys = ReplicaKeys(ensure_backup_key(sandbox.h[A].node.config.home), A)
    info = vault.records_of(pids[0])[0]
    record = item_name("record", info.rid, info.version)
    key = item_name("key", pids[1])
    forged = {n: rows for n, rows in vault.read_items([record, key]).items() if rows}
    assert sorted(forged) == sorted([record, key])
    row = forged[record]["records"][0]
    wrapped = forged[key]["patient_keys"][0]
    thief = sandbox.x(A).client
    for attempt in range(10):
        row[8] = bytes(b ^ (0x5A + attempt) for b in row[8])  # the ciphertext
        wrapped[2] = secrets.token_bytes(len(wrapped[2]))
        for peer in replica_peers(sandbox.root.engine, A):
            sealed = [keys.seal(name, rows, 10**18 + attempt) for name, rows in forged.items()]
            thief.custody_put(peer, [Item(s.id, s.version, s.sha256, s.blob) for s in sealed])
    report, restored = wipe_and_restore(sandbox, A, require_complete=True)
    assert report.complete and report.mismatched == [] and report.corrupt == {}
    assert snapshot(restored) == before


def test_a_complete_recovery_empties_the_trash_the_lost_key_filled(
    four_hospitals: Sandbox,
) -> None:
    """The thief dropped everything; the members voted; `recover run` restored every record
    from the peers' trash. Once the new node's replicator has sent the peers the vault again,
    their trash of what the lost key sent goes: it no longer fills the quota."""
    sandbox, wiped = four_hospitals, "aphp-paris"
    _ingest(sandbox, wiped, patients=3)
    wait_for(lambda: _replicated(sandbox, wiped), timeout=60, what="the replicas at the peers")
    peers = replica_peers(sandbox.root.engine, wiped)
    thief = sandbox.x(wiped).client
    for peer in peers:
        ids = [i.id for i in thief.custody_list(peer)[0] if len(i.id) == 64]
        for i in range(0, len(ids), 500):
            thief.custody_drop(peer, ids[i : i + 500])
    home, _ = _lose_and_rebind(sandbox, wiped, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    report = _recover(sandbox, home)
    assert report.complete and report.restore is not None and report.restore.from_trash > 0
    assert (home / TRASH_TO_EMPTY).exists()
    node = sandbox.root.sibling(home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        with Vault.open(node.config.vault_config()) as vault:
            Replicator(node, vault, client).sync()
    finally:
        client.close()
    for peer in peers:
        usage = sandbox.x(peer).custody.usage(wiped)
        assert usage.items > 0 and usage.trash_items == 0, f"{peer}: {usage}"
    assert not (home / TRASH_TO_EMPTY).exists()


def test_an_erasure_made_offline_is_purged_at_the_peers_when_the_node_runs(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """No exchange running (offline, or the node died right after the statement committed):
    the purge waits in the home, and the running node's replicator does it."""
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    key_id = _key_id(sandbox, pids[0])
    peers = replica_peers(sandbox.root.engine, A)
    sandbox.x(A).stop()
    hosp.exchange = None
    result = shredding.shred(hosp.node, hosp.vault, pids[0])
    assert result.key_purged == () and sorted(result.key_purge_pending) == sorted(peers)
    assert all(sandbox.x(p).custody.get(A, [key_id]) for p in peers)  # not even dropped yet
    sandbox.start(A)

    def purged() -> bool:
        return all(
            not sandbox.x(p).custody.get(A, [key_id])
            and key_id not in {i.id for i in sandbox.x(p).custody.trash_listing(A)}
            for p in peers
        )

    wait_for(purged, timeout=60, what="the erased key purged at every peer")
    wait_for(lambda: not (hosp.node.config.home / PENDING_PURGES).exists(), what="no purge left")


def test_only_a_key_bound_by_a_rebinding_vote_empties_the_trash(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """The member's current key, never voted in (the founding one, or one it rotated by
    itself): it may be a thief's, and the trash is what the restore needs."""
    sandbox, _ = ingested
    thief = sandbox.x(A).client
    peer = replica_peers(sandbox.root.engine, A)[0]
    ids = _listed(thief, peer)[:10]
    thief.custody_drop(peer, ids)
    with pytest.raises(ExchangeError) as refused:
        thief.custody_empty_trash(peer)
    assert refused.value.status == 403 and "rebind_member" in refused.value.reason
    assert set(ids) <= {i.id for i in sandbox.x(peer).custody.trash_listing(A)}
