"""Encrypted replicas at peers: a hospital's vault reaches its replica peers' custody stores,
comes back whole from them after the vault file is lost, and erasure reaches them too."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from medledger.contracts import queries
from medledger.exchange.client import ExchangeClient
from medledger.interop.synth import as_document, generate
from medledger.node import shredding
from medledger.node.custody import Item
from medledger.node.replicas import (
    RestoreRefused,
    RestoreReport,
    ensure_backup_key,
    replica_peers,
    restore_vault,
)
from medledger.vault import Vault
from medledger.vault.keys import load_kek
from medledger.vault.replication import ReplicaError, ReplicaKeys, item_name

from .conftest import A, B, C, Sandbox, bundles, wait_for


def replicated(sandbox: Sandbox, org: str) -> bool:
    """Every replica peer of `org` has acknowledged its journal's head."""
    vault = sandbox.h[org].vault
    head = vault.journal_head()
    acked = vault.replica_peers()
    peers = replica_peers(sandbox.root.engine, org)
    return all(p in acked and acked[p][0] >= head for p in peers)


def snapshot(vault: Vault) -> dict[tuple[str, int], bytes]:
    """Every record version's bytes, own records and copies."""
    return {
        (info.rid, info.version): vault.get(info.rid, info.version)
        for pid in vault.patients()
        for info in vault.records_of(pid)
    }


def wipe_and_restore(
    sandbox: Sandbox, org: str, require_complete: bool = False
) -> tuple[RestoreReport, Vault]:
    """Stop the hospital's exchange, delete its vault file, restore it from its peers."""
    hosp = sandbox.h[org]
    home = hosp.node.config.home
    exchange = hosp.exchange
    assert exchange is not None
    exchange.stop()
    hosp.exchange = None
    hosp.vault.close()
    path = Path(hosp.node.config.vault_config().path or "")
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    client = ExchangeClient(hosp.node, directory=sandbox.directory)
    try:
        report = restore_vault(
            home,
            ensure_backup_key(home),
            load_kek(home / "keys" / "vault.kek"),
            client,
            replica_peers(sandbox.root.engine, org),
            require_complete=require_complete,
        )
    finally:
        client.close()
    hosp.vault = Vault.open(hosp.node.config.vault_config())
    return report, hosp.vault


@pytest.fixture
def ingested(sandbox: Sandbox) -> Iterator[tuple[Sandbox, list[str]]]:
    pids = [sandbox.ingest(A, b)[0] for b in bundles(3)]
    # An IPS-shaped document too: its author and custodian Organization are supporting
    # resources, held under the hospital's own owner and never registered on the chain.
    pids.append(sandbox.ingest(A, as_document(generate(8, [A, B, C], seed=8)[A][-1]))[0])
    wait_for(lambda: replicated(sandbox, A), what="A's vault at its replica peers")
    yield sandbox, pids


def test_the_replica_peers_are_chosen_the_same_everywhere(sandbox: Sandbox) -> None:
    peers = replica_peers(sandbox.root.engine, A)
    assert len(peers) == 2 and A not in peers
    assert replica_peers(sandbox.h[C].node.engine, A) == peers


def test_new_records_reach_the_peers_sealed_and_unreadable_to_them(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, _ = ingested
    for peer in (B, C):
        store = sandbox.x(peer).custody
        listed = store.listing(A)
        assert listed, f"{peer} holds nothing of {A}"
        blobs = store.get(A, [i.id for i in listed])
        # The peer's own keys open nothing: not its backup key, not as its own items.
        own = ReplicaKeys(ensure_backup_key(sandbox.h[peer].node.config.home), peer)
        as_if_mine = ReplicaKeys(ensure_backup_key(sandbox.h[peer].node.config.home), A)
        for blob in blobs[:20]:
            for keys in (own, as_if_mine):
                with pytest.raises(ReplicaError):
                    keys.open(blob.id, blob.version, blob.blob)
            assert b"resourceType" not in blob.blob and b"Patient" not in blob.blob
            # sizes are power-of-two buckets (plus nonce and tag)
            padded = len(blob.blob) - 28
            assert padded >= 512 and padded & (padded - 1) == 0
        # Nothing of A's entered the peer's vault.
        assert not set(sandbox.h[peer].vault.patients()) & set(sandbox.h[A].vault.patients())


def test_a_wiped_vault_comes_back_whole_from_the_peers(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, pids = ingested
    before = snapshot(sandbox.h[A].vault)
    report, vault = wipe_and_restore(sandbox, A, require_complete=True)
    assert report.complete and report.records == len(before) + report.unregistered
    assert report.unregistered > 0 and report.checked == len(before)
    assert snapshot(vault) == before
    supporting = vault.records_of(vault.hospital_pid)
    assert len(supporting) == report.unregistered
    assert all(vault.get(i.rid, i.version) for i in supporting)
    assert sorted(vault.patients()) == sorted(set(pids))


def test_a_corrupt_copy_is_named_and_the_other_peer_serves_it(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, _ = ingested
    before = snapshot(sandbox.h[A].vault)
    store = sandbox.x(B).custody
    victim = store.listing(A)[0]
    (held,) = store.get(A, [victim.id])
    bad = bytearray(held.blob)
    bad[40] ^= 0xFF
    # B alters the blob, states its hash and claims a newer version (so that it is the copy
    # tried first): only the AES-GCM tag can tell.
    forged = Item(victim.id, victim.version + 10**9, hashlib.sha256(bad).digest(), bytes(bad))
    store.put(A, [forged], quota_bytes=1 << 40)
    store.purge_expired(float("inf"))  # in place: B keeps no good version in its trash
    report, vault = wipe_and_restore(sandbox, A)
    assert report.corrupt == {B: [victim.id]}
    assert report.complete
    assert snapshot(vault) == before


def test_one_peer_down_the_other_restores_everything(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, _ = ingested
    before = snapshot(sandbox.h[A].vault)
    sandbox.x(C).stop()
    sandbox.h[C].exchange = None
    report, vault = wipe_and_restore(sandbox, A)
    assert report.unreachable == [C] and report.complete
    assert snapshot(vault) == before


def test_restore_refuses_to_overwrite_a_vault_and_to_start_without_peers(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, _ = ingested
    home = sandbox.h[A].node.config.home
    client = ExchangeClient(sandbox.h[A].node, directory=sandbox.directory)
    try:
        with pytest.raises(RestoreRefused, match="exists: move it away"):
            restore_vault(home, ensure_backup_key(home), b"k" * 32, client, [B])
    finally:
        client.close()


def test_erasure_drops_the_wrapped_key_at_the_peers_and_stays_after_restore(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    pid = pids[0]
    result = shredding.shred(hosp.node, hosp.vault, pid)
    statement = queries.shredded(sandbox.root.engine, A, pid)
    assert statement is not None
    assert sorted(statement["replicas_dropped"]) == sorted(replica_peers(hosp.node.engine, A))
    assert "replicas_pending" not in statement
    key_id = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A).item_id(item_name("key", pid))
    for peer in (B, C):
        assert sandbox.x(peer).custody.get(A, [key_id]) == []
    assert result.records > 0
    wait_for(lambda: replicated(sandbox, A), what="the purge at the peers")
    report, vault = wipe_and_restore(sandbox, A)
    assert vault.is_erased(pid)
    assert pid not in vault.patients()
    assert report.complete


def test_a_peer_down_at_erasure_is_named_pending_and_gets_the_drop_on_return(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    pid = pids[1]
    sandbox.x(C).stop()
    sandbox.h[C].exchange = None
    shredding.shred(hosp.node, hosp.vault, pid)
    statement = queries.shredded(sandbox.root.engine, A, pid)
    assert statement is not None
    assert statement["replicas_dropped"] == [B] and statement["replicas_pending"] == [C]
    key_id = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A).item_id(item_name("key", pid))
    sandbox.start(C)
    wait_for(
        lambda: replicated(sandbox, A) and sandbox.x(C).custody.get(A, [key_id]) == [],
        what="the drop at C once back",
    )


def test_backup_status_shows_each_peers_lag_and_what_it_holds(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    from typer.testing import CliRunner

    from medledger.cli import app
    from medledger.node.replicas import backup_status

    sandbox, _ = ingested
    vault = sandbox.h[A].vault
    peers = replica_peers(sandbox.root.engine, A)
    lags = backup_status(vault, peers)
    assert [lag.peer for lag in lags] == peers
    assert all(lag.synced and lag.changes == 0 and lag.held_bytes > 0 for lag in lags)

    # A peer down: the changes since wait for it, and their age shows.
    sandbox.x(C).stop()
    sandbox.h[C].exchange = None
    sandbox.ingest(A, bundles(4, seed=11)[3])
    wait_for(
        lambda: backup_status(vault, [B])[0].changes == 0, what="B acknowledging the new record"
    )
    behind = backup_status(vault, [C])[0]
    assert behind.changes > 0 and behind.seconds >= 0

    shown = CliRunner().invoke(
        app, ["backup", "status", "--home", str(sandbox.h[A].node.config.home)]
    )
    assert shown.exit_code == 0, shown.output
    assert B in shown.output and C in shown.output and "MB" in shown.output
