"""Review of issue 15 (session 6): replicas, custody and escrow under attack, in process on a
solo sandbox whose gateways speak real TLS on 127.0.0.1.

The attackers: a thief holding the wiped hospital's old keys before the vote executes, a
replica peer that lies, a member filling a peer's disk, and a crash at the worst moment."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.contracts import queries
from medledger.contracts.escrow import Deposit
from medledger.exchange.client import ExchangeClient, ExchangeError
from medledger.exchange.service import HospitalExchange
from medledger.host.secretfile import write_secret
from medledger.interop.synth import generate
from medledger.node import shredding
from medledger.node.custody import CustodyRefused, CustodyStore, Item
from medledger.node.ingest import Ingestor
from medledger.node.replicas import describe_gaps, ensure_backup_key, replica_peers, restore_vault
from medledger.node.wallet import TxRejected
from medledger.provisioning.recovery import RecoveryReport, recover_keys
from medledger.vault import Vault
from medledger.vault.keys import load_kek
from medledger.vault.replication import ReplicaKeys, item_name
from tests.exchange.conftest import A, B, Sandbox, wait_for
from tests.exchange.test_recovery import _escrow, _fresh_home, _ingest, _keys, _rebind, _wipe
from tests.exchange.test_replicas import replicated

WIPED = "aphp-paris"  # in `four`: not the hospital that runs the solo engine


def test_a_thief_with_the_old_key_cannot_replace_the_escrow_before_the_vote(
    four: Sandbox,
) -> None:
    """The thief of the old machine still signs for the org until the rebinding executes. A
    new escrow epoch of its making (hashes of shares nobody holds) must not become what the
    holders release: the recovery would then find no share at all."""
    sandbox = four
    old_keys = _keys(sandbox.h[WIPED].node.config.home)
    record = _escrow(sandbox, WIPED)
    status = queries.escrow_status(sandbox.root.engine, WIPED)
    forged = Deposit(
        holders=list(status["holders"]),
        hashes=[hashlib.sha256(b"nothing %d" % i).digest() for i in range(len(status["holders"]))],
        threshold=int(record["threshold"]),
        epoch=int(record["epoch"]) + 1,
    )
    thief = sandbox.h[WIPED].node
    with contextlib.suppress(TxRejected):  # refused: what the recovery needs
        thief.wallet.send_message(forged)
    config = _wipe(sandbox, WIPED)
    request = _fresh_home(config)
    _rebind(sandbox, WIPED, request, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    node = sandbox.root.sibling(config.home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        kek, backup_key, _ = recover_keys(node, client, RecoveryReport(WIPED))
    finally:
        client.close()
    assert (kek, backup_key) == old_keys


def test_a_fresh_home_started_before_its_recovery_leaves_the_replicas_at_the_peers(
    four: Sandbox,
) -> None:
    """The new machine's node is started (by hand, or by the shipped units at boot) once the
    vote has executed but before `recover run`: its vault is empty and its backup key new.
    Its replicator must not take every replica at the peers for a stray and drop it."""
    sandbox = four
    _ingest(sandbox, WIPED, 3)
    wait_for(lambda: replicated(sandbox, WIPED), what="the replicas at the peers")
    peers = replica_peers(sandbox.root.engine, WIPED)
    held = {p: sandbox.x(p).custody.usage(WIPED).items for p in peers}
    assert all(held.values())
    config = _wipe(sandbox, WIPED)
    request = _fresh_home(config)
    _rebind(sandbox, WIPED, request, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    node = sandbox.root.sibling(config.home)
    vault = Vault.open(node.config.vault_config())
    exchange = HospitalExchange(node, vault, directory=sandbox.directory, port=0).start(sync=False)
    try:
        exchange.replicator.sync()  # the first round of the fresh node's replicator
    finally:
        exchange.stop()
        vault.close()
    assert {p: sandbox.x(p).custody.usage(WIPED).items for p in peers} == held


def test_a_patient_erased_while_the_peers_did_not_hear_of_it_stays_erased_after_restore(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """A shreds a patient while its replicator is not running (its peers down, or the machine
    lost before the next round): the peers still hold the wrapped key and the records, and no
    tombstone. The chain knows (records.shredded): the restore must not bring them back."""
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    pid = pids[0]
    sandbox.x(A).stop()
    hosp.exchange = None
    shredding.shred(hosp.node, hosp.vault, pid)
    assert queries.shredded(sandbox.root.engine, A, pid) is not None
    hosp.vault.close()
    path = Path(hosp.node.config.vault_config().path or "")
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    home = hosp.node.config.home
    client = ExchangeClient(hosp.node, directory=sandbox.directory)
    try:
        report = restore_vault(
            home,
            ensure_backup_key(home),
            load_kek(home / "keys" / "vault.kek"),
            client,
            replica_peers(sandbox.root.engine, A),
        )
    finally:
        client.close()
    hosp.vault = Vault.open(hosp.node.config.vault_config())
    assert pid not in hosp.vault.patients(), "an erased patient came back from the replicas"
    assert report.erased_left_out > 0


def _lying(client: ExchangeClient, monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[str]:
    calls: list[str] = []

    def post(org: str, name: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
        calls.append(name)
        if len(calls) > 100:
            raise AssertionError(f"still asking {org} after 100 {name} answers")
        return answer(payload), ""

    monkeypatch.setattr(client, "post", post)
    return calls


def test_a_peer_listing_the_same_page_for_ever_does_not_hang_the_restore(
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = sandbox.x(A).client
    item = {"id": "a" * 64, "version": 1, "sha256": "00" * 32, "size": 1}
    _lying(client, monkeypatch, lambda _p: {"items": [item], "more": True, "usage": 1})
    with pytest.raises(ExchangeError) as refused:
        client.custody_list(B)
    assert refused.value.org == B


def test_a_peer_answering_later_for_ever_does_not_hang_the_restore(
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = sandbox.x(A).client
    blob = b"x"
    one = {"id": "b" * 64, "version": 1, "sha256": hashlib.sha256(blob).hexdigest(), "blob": "eA=="}
    _lying(client, monkeypatch, lambda p: {"items": [one], "later": list(p["ids"]), "missing": []})
    with pytest.raises(ExchangeError) as refused:
        client.custody_get(B, ["c" * 64, "d" * 64])
    assert refused.value.org == B


def test_custody_counts_every_item_against_the_quota(tmp_path: Path) -> None:
    """Empty blobs cost rows, ids and hashes on the holder's disk: a member must not store an
    unbounded number of them under a quota counted in blob bytes only."""
    store = CustodyStore(tmp_path / "custody.db")
    try:
        empty = hashlib.sha256(b"").digest()
        items = [Item(f"{i:064x}", 1, empty, b"") for i in range(1000)]
        with pytest.raises(CustodyRefused) as refused:
            store.put(B, items, quota_bytes=64 * 1024)
        assert refused.value.status == 507
        assert store.usage(B).items == 0
    finally:
        store.close()


def test_erasure_reaches_a_peer_that_held_replicas_before_the_params_changed(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """backup_replicas goes from 2 to 1: the peer left out still holds every replica it had,
    wrapped keys included. Crypto-shredding a patient afterwards must drop the wrapped key
    there too, or a copy of it outlives the erasure."""
    sandbox, pids = ingested
    engine = sandbox.root.engine
    before = replica_peers(engine, A)
    committed = sandbox.h[A].node.wallet.send(
        "governance.propose",
        {"action": "set_param", "args": {"name": "backup_replicas", "value": 1}},
    )
    (created,) = [e for e in committed.result.events if e.type == "proposal.created"]
    sandbox.h[B].node.wallet.send(
        "governance.vote", {"proposal": int(created.get("id") or 0), "approve": True}
    )
    (kept,) = replica_peers(engine, A)
    (left,) = [p for p in before if p != kept]
    replicator = sandbox.x(A).replicator
    wait_for(lambda: replicator.peers() == [kept], what="A's replicator seeing one peer")
    hosp = sandbox.h[A]
    pid = pids[0]
    key_id = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A).item_id(item_name("key", pid))
    assert sandbox.x(left).custody.get(A, [key_id]) != []  # what it held stays there
    shredding.shred(hosp.node, hosp.vault, pid)
    assert sandbox.x(kept).custody.get(A, [key_id]) == []
    assert sandbox.x(left).custody.get(A, [key_id]) == [], f"{left} still holds the erased key"


def test_a_thief_with_the_old_key_cannot_destroy_the_replicas_before_the_vote(
    four: Sandbox,
) -> None:
    """Ransomware takes the machine and its keys, then erases the backups: with the old org
    key (valid until the rebinding executes) it asks every replica peer to drop every item.
    The records must still come back once the members voted."""
    sandbox = four
    rids = _ingest(sandbox, WIPED, 3)
    wait_for(lambda: replicated(sandbox, WIPED), what="the replicas at the peers")
    record = _escrow(sandbox, WIPED)
    assert record["epoch"] == 1
    thief = sandbox.x(WIPED).client
    for peer in replica_peers(sandbox.root.engine, WIPED):
        listed, _ = thief.custody_list(peer)
        ids = [i.id for i in listed if len(i.id) == 64]
        for i in range(0, len(ids), 500):
            with contextlib.suppress(ExchangeError):  # refused: what the recovery needs
                thief.custody_drop(peer, ids[i : i + 500])
    config = _wipe(sandbox, WIPED)
    request = _fresh_home(config)
    _rebind(sandbox, WIPED, request, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    node = sandbox.root.sibling(config.home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        kek, backup_key, _ = recover_keys(node, client, RecoveryReport(WIPED))
        report = restore_vault(
            config.home,
            backup_key,
            kek,
            client,
            replica_peers(sandbox.root.engine, WIPED),
            engine=sandbox.root.engine,
        )
    finally:
        client.close()
    assert report.complete and report.records >= len(rids), describe_gaps(report)


def test_a_restore_that_finds_nothing_does_not_say_complete(
    ingested: tuple[Sandbox, list[str]],
) -> None:
    """The peers hold none of A's replicas any more (dropped by a thief, lost with a peer's
    disk, never sent): the chain still lists A's records. `complete` (the exit status of
    `recover run`, "every record came back") must not be true, and the records must be
    named as missing."""
    sandbox, pids = ingested
    hosp = sandbox.h[A]
    client = sandbox.x(A).client
    for peer in replica_peers(sandbox.root.engine, A):
        listed, _ = client.custody_list(peer)
        ids = [i.id for i in listed]
        for i in range(0, len(ids), 500):
            client.custody_drop(peer, ids[i : i + 500])
        sandbox.x(peer).custody.purge_expired(float("inf"))  # and the grace period passed
    expected = {
        e["rid"] for pid in pids for e in queries.records_of_patient(sandbox.root.engine, pid, A)
    }
    sandbox.x(A).stop()
    hosp.exchange = None
    hosp.vault.close()
    path = Path(hosp.node.config.vault_config().path or "")
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    home = hosp.node.config.home
    restorer = ExchangeClient(hosp.node, directory=sandbox.directory)
    try:
        report = restore_vault(
            home,
            ensure_backup_key(home),
            load_kek(home / "keys" / "vault.kek"),
            restorer,
            replica_peers(sandbox.root.engine, A),
        )
    finally:
        restorer.close()
        hosp.vault = Vault.open(hosp.node.config.vault_config())
    assert report.records == 0
    assert not report.complete, "nothing came back, and the report says complete"
    assert {m.split(" ")[0] for m in report.missing} >= expected


def test_a_fresh_home_that_admits_a_patient_before_its_recovery_keeps_the_replicas(
    four: Sandbox,
) -> None:
    """The new machine cannot wait for the recovery to take in a new admission: one patient
    is ingested on it, then its replicator's first round runs. Under its new backup key the
    old replicas are all strangers' ids: they must stay at the peers for `recover run`."""
    sandbox = four
    _ingest(sandbox, WIPED, 3)
    wait_for(lambda: replicated(sandbox, WIPED), what="the replicas at the peers")
    peers = replica_peers(sandbox.root.engine, WIPED)
    held = {p: sandbox.x(p).custody.usage(WIPED).items for p in peers}
    config = _wipe(sandbox, WIPED)
    request = _fresh_home(config)
    _rebind(sandbox, WIPED, request, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    # what `medledger join` fetched once the vote made it a member again
    pseudonym = sandbox.h["chu-lyon"].node.config.pseudonym_key()
    write_secret(config.home / "keys" / "pseudonym.key", pseudonym.hex() + "\n", overwrite=True)
    node = sandbox.root.sibling(config.home)
    vault = Vault.open(node.config.vault_config())
    exchange = HospitalExchange(node, vault, directory=sandbox.directory, port=0).start(sync=False)
    try:
        admitted = generate(1, list(sandbox.h) + [WIPED], seed=41)[WIPED][0]
        result = Ingestor(node, vault).ingest_bytes(orjson.dumps(admitted), "admission.json")
        assert result.rejections == []
        exchange.replicator.sync()
    finally:
        exchange.stop()
        vault.close()
    assert all(sandbox.x(p).custody.usage(WIPED).items >= held[p] for p in peers)


def test_a_fresh_home_that_admits_a_patient_before_its_recovery_keeps_its_escrow(
    four: Sandbox,
) -> None:
    """Same day, same new machine: its escrow keeper sees a rebinding pending and a vault with
    a patient, takes its fresh keys for the recovered ones and deposits them. The shares of
    the keys that open the old replicas must still be released to `recover run`."""
    from medledger.exchange.escrow import EscrowKeeper

    sandbox = four
    old_keys = _keys(sandbox.h[WIPED].node.config.home)
    _escrow(sandbox, WIPED)
    config = _wipe(sandbox, WIPED)
    request = _fresh_home(config)
    _rebind(sandbox, WIPED, request, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    pseudonym = sandbox.h["chu-lyon"].node.config.pseudonym_key()
    write_secret(config.home / "keys" / "pseudonym.key", pseudonym.hex() + "\n", overwrite=True)
    node = sandbox.root.sibling(config.home)
    vault = Vault.open(node.config.vault_config())
    exchange = HospitalExchange(node, vault, directory=sandbox.directory, port=0).start(sync=False)
    try:
        admitted = generate(1, list(sandbox.h) + [WIPED], seed=41)[WIPED][0]
        assert Ingestor(node, vault).ingest_bytes(orjson.dumps(admitted), "a.json").pids
        keeper = EscrowKeeper(node, exchange.client, *_keys(config.home), vault)
        with contextlib.suppress(Exception):  # refusing is right
            keeper.check()
        kek, backup_key, _ = recover_keys(node, exchange.client, RecoveryReport(WIPED))
    finally:
        exchange.stop()
        vault.close()
    assert (kek, backup_key) == old_keys
