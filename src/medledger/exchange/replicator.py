"""The replicator: this hospital's vault changes, sealed, to its replica peers' custody stores.

A thread of the running node (started with the sync agent). Every `interval` it compares the
vault's replication journal (written in the same transaction as each change, vault/sql.py)
with what each replica peer (node/replicas.py's `replica_peers`) acknowledged, reads the items
changed since, seals them (vault/replication.py) and sends them with `custody-put`; an item
deleted since becomes a `custody-drop`. A peer's acknowledged sequence moves only once the
peer answered, so a peer that is down is retried on the next round and catches up when it
returns (a crash of this node loses nothing either: the journal and the cursors are in the
vault). A peer seen for the first time gets a full copy, and loses the replica items it held
that the vault no longer has. The journal is pruned up to what every replica peer has. A
fresh home rebound by vote sends nothing until its vault is recovered (`awaiting_recovery`).

Peers keep what is dropped or replaced in a trash for custody_grace_days (node/custody.py):
an erasure purges the shredded patient's wrapped key there at once instead, with the chain's
`records.shredded` statement and the proof that the item is that key (`purge_shredded`);
peers that did not answer are retried every round (`<home>/replicas/purges-pending.json`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from medledger.contracts import queries
from medledger.exchange.client import ExchangeClient, ExchangeError
from medledger.exchange.escrow import pending_recovery
from medledger.exchange.events import block_events
from medledger.node.custody import MAX_ITEMS, Item, ItemInfo
from medledger.node.replicas import (
    PENDING_PURGES,
    TRASH_TO_EMPTY,
    ensure_backup_key,
    read_pending,
    replica_peers,
    write_pending,
)
from medledger.vault.replication import ReplicaKeys, item_name

if TYPE_CHECKING:
    from medledger.ledger.results import BlockRecord
    from medledger.node import Node
    from medledger.vault import Vault

log = logging.getLogger(__name__)

#: Changes read from the journal per round and peer; blob bytes per custody-put.
CHANGES_PER_ROUND = 5000
PUT_BYTES = 4 * 1024 * 1024


#: How long the replica peers computed from the chain are reused (membership changes by vote).
PEERS_TTL_S = 5.0
#: A replica peer failing this long is logged as a warning (before: info).
WARN_AFTER_S = 30.0
#: Longest wait before a failing peer is tried again (the wait doubles from `interval`).
MAX_BACKOFF_S = 30.0
#: Wait before an erasure's purge that failed at a peer is tried again.
PURGE_RETRY_S = 5.0
#: The events after which `pending_recovery` may answer otherwise (escrow's `release_check`
#: reads the org's escrow record, its membership and the executed proposals).
REBIND_EVENTS = frozenset(
    {"escrow.deposited", "proposal.executed", "member.rebound", "member.removed"}
)


@dataclass(frozen=True)
class PeerFailure:
    """A replica peer that failed: why, since when, and when it is tried again."""

    peer: str
    reason: str
    since: float
    attempts: int
    retry_at: float
    warned: bool = False


class Replicator:
    """Sends one hospital's vault changes to its replica peers; see the module's doc."""

    def __init__(
        self, node: Node, vault: Vault, client: ExchangeClient, *, interval: float = 0.5
    ) -> None:
        self.node = node
        self.vault = vault
        self.client = client
        self.org = node.config.org
        self.interval = interval
        self.keys = ReplicaKeys(ensure_backup_key(node.config.home), self.org)
        self.failures: dict[str, PeerFailure] = {}
        #: Seconds from a change's commit in the vault to a peer's acknowledgement, per change
        #: and peer (the latest ones; `medledger bench replicas` reads them).
        self.lags: deque[float] = deque(maxlen=100_000)
        self._receipts = node.config.home / "replicas" / "drop-receipts.jsonl"
        self._purges = node.config.home / PENDING_PURGES
        self._purge_lock = threading.Lock()
        self._purge_wait: dict[str, float] = {}  # peer -> when its pending purges are retried
        self._last_version = 0
        self._peers: tuple[float, list[str]] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._held_back = False
        self._rebind_seen: tuple[int, bool] | None = None  # (height, rebind pending there)
        self._rebind_stale = True  # a block committed since that may have changed it
        if node.app is not None:
            node.app.add_commit_listener(self._committed)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Replicator:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"replicator-{self.org}")
        self._thread.daemon = True
        self._thread.start()
        self.node.replica_drop = self.drop_now
        self.node.replica_purge = self.purge_shredded
        return self

    def stop(self) -> None:
        self.node.replica_drop = None
        self.node.replica_purge = None
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wake(self) -> None:
        """Run a round now (tests, after an ingestion) rather than at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - the next round retries; the node goes on
                log.exception("%s: replication round failed", self.org)
            self._wake.wait(self.interval)
            self._wake.clear()

    # -- a round ------------------------------------------------------------------------------
    def peers(self) -> list[str]:
        """The replica peers per the chain, asked again at most every PEERS_TTL_S."""
        now = time.monotonic()
        if self._peers is None or now - self._peers[0] > PEERS_TTL_S:
            self._peers = (now, replica_peers(self.node.engine, self.org))
        return self._peers[1]

    def awaiting_recovery(self) -> bool:
        """True while this org was rebound to a fresh home whose vault is still empty: its
        first full copy would drop at every peer the replicas `recover run` needs (a node
        started before the recovery, by hand or by a supervisor). Nothing is sent then.

        Asked every round (twice a second): the vault is asked whether it holds any patient
        (one row, not the list), and the chain for a pending rebind only after a committed
        block with one of `REBIND_EVENTS` (nothing else changes it; once per height when this
        node has no in-process app to tell it of commits)."""
        if self.vault.has_patients() or not self._rebind_pending():
            return False
        if not self._held_back:
            log.warning(
                "%s: rebound and the vault is empty: replication held back until "
                "`medledger recover run` restores it (stop this node first)",
                self.org,
            )
            self._held_back = True
        return True

    def _committed(self, record: BlockRecord) -> None:
        """After each commit (the ABCI thread): a block that may change whether a rebind is
        pending (an escrow deposited, a proposal executed) makes the next round ask again."""
        if block_events(record, REBIND_EVENTS):
            self._rebind_stale = True

    def _rebind_pending(self) -> bool:
        height = self.node.engine.height()
        if self.node.app is not None:  # told of each commit: ask only after one that matters
            stale = self._rebind_stale or self._rebind_seen is None
        else:
            stale = self._rebind_seen is None or self._rebind_seen[0] != height
        if stale:
            self._rebind_stale = False  # before asking: a commit meanwhile marks it again
            self._rebind_seen = (height, pending_recovery(self.node) is not None)
        assert self._rebind_seen is not None
        return self._rebind_seen[1]

    def sync(self) -> None:
        """One round: every replica peer brought up to the journal's head (or tried)."""
        if self.awaiting_recovery():
            return
        if self._purges.exists():
            self.purge_shredded()
        peers = self.peers()
        for peer in peers:
            failed = self.failures.get(peer)
            if failed is not None and time.monotonic() < failed.retry_at:
                continue  # backing off: a peer down or over quota is not hammered
            try:
                while self.sync_peer(peer):
                    pass
                self.failures.pop(peer, None)
            except ExchangeError as exc:
                since = time.time() if failed is None else failed.since
                # A peer restarting is routine: said once it has lasted WARN_AFTER_S.
                warn = time.time() - since >= WARN_AFTER_S and not (failed and failed.warned)
                if failed is None or warn:
                    level = logging.WARNING if warn else logging.INFO
                    log.log(level, "%s: replica peer %s: %s", self.org, peer, exc.reason)
                attempts = 1 if failed is None else failed.attempts + 1
                wait = min(self.interval * 2**attempts, MAX_BACKOFF_S)
                self.failures[peer] = PeerFailure(
                    peer,
                    exc.reason,
                    since,
                    attempts,
                    time.monotonic() + wait,
                    warned=warn or (failed is not None and failed.warned),
                )
        acked = self.vault.replica_peers()
        if peers and all(p in acked for p in peers):
            self.vault.prune_journal(min(acked[p][0] for p in peers))

    def sync_peer(self, peer: str) -> bool:
        """Send `peer` what it has not acknowledged; True when more changes are waiting."""
        with self._send_lock:
            state = self.vault.replica_peers().get(peer)
            if state is None:
                head = self.vault.journal_head()  # read first: later changes are sent later
                names = self.vault.item_names()
                there, _ = self.client.custody_list(peer)  # before ours arrive
                held = self._send(peer, names)
                held = self._drop_strays(peer, {self.keys.item_id(n) for n in names}, there, held)
                self._empty_lost_key_trash(peer)
                self.vault.set_replica_peer(peer, head, time.time(), held)
                return False
            acked, _, held = state
            changes = self.vault.changes(acked, CHANGES_PER_ROUND)
            if not changes:
                return False
            names = list(dict.fromkeys(name for _, name, _ in changes))
            held = self._send(peer, names, held)
            now = time.time()
            self.vault.set_replica_peer(peer, changes[-1][0], now, held)
            self.lags.extend(now - at for _, _, at in changes)
            return len(changes) == CHANGES_PER_ROUND

    def _version(self) -> int:
        """A version that rises with every item sealed here (microseconds of the clock)."""
        self._last_version = max(self._last_version + 1, int(time.time() * 1_000_000))
        return self._last_version

    def _send(self, peer: str, names: list[str], held: int = 0) -> int:
        """Seal and put the items that exist, drop those deleted; returns the bytes held."""
        for chunk in _chunks(names, MAX_ITEMS):
            contents = self.vault.read_items(chunk)
            puts: list[Item] = []
            size = 0
            drops: list[str] = []
            for name, rows in contents.items():
                if rows is None:
                    drops.append(self.keys.item_id(name))
                    continue
                sealed = self.keys.seal(name, rows, self._version())
                if puts and size + len(sealed.blob) > PUT_BYTES:
                    held = self.client.custody_put(peer, puts)
                    puts, size = [], 0
                puts.append(Item(sealed.id, sealed.version, sealed.sha256, sealed.blob))
                size += len(sealed.blob)
            if puts:
                held = self.client.custody_put(peer, puts)
            if drops:
                self._record_receipt(peer, drops, self.client.custody_drop(peer, drops))
        return held

    def _drop_strays(self, peer: str, ours: set[str], there: list[ItemInfo], held: int) -> int:
        """Replica items at `peer` that this vault no longer has (a restored vault's first
        round). Only replica ids (64 hex): other items, such as escrow shares, stay. When not
        one item there is ours (an empty vault, or a fresh home's new backup key, whose ids
        are all strangers'), nothing is dropped: they are what its recovery needs."""
        replicas = [i.id for i in there if len(i.id) == 64]
        if not replicas:
            return held
        if not ours.intersection(replicas):
            log.warning(
                "%s: none of the %d replica items at %s is under this backup key: left alone "
                "(a recovery pending?)",
                self.org,
                len(replicas),
                peer,
            )
            return held
        strays = [i for i in replicas if i not in ours]
        for chunk in _chunks(strays, MAX_ITEMS):
            self._record_receipt(peer, chunk, self.client.custody_drop(peer, chunk))
            held = self.client.custody_list(peer)[1]
        return held

    def drop_now(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """Drop items at every replica peer at once (an erased patient's wrapped key):
        (peers whose signed receipt came back, peers that did not answer). Members that
        held replicas before the params or the members changed get the drop too: their copy
        of a wrapped key must not outlive the erasure."""
        dropped, pending = [], []
        for peer in self._holders():
            try:
                self._record_receipt(peer, ids, self.client.custody_drop(peer, ids))
                dropped.append(peer)
            except ExchangeError as exc:
                log.warning("%s: drop at %s pending: %s", self.org, peer, exc.reason)
                pending.append(peer)
        return dropped, pending

    def _empty_lost_key_trash(self, peer: str) -> None:
        """After a complete recovery, once `peer` has this vault again: its trash of what
        the lost key sent goes (node/replicas.py's empty_lost_key_trash_later)."""
        path = self.node.config.home / TRASH_TO_EMPTY
        todo = read_pending(path)
        if peer in todo.get("lost-key", []):
            try:
                purged = self.client.custody_empty_trash(peer)
                log.info(
                    "%s: %s emptied %d trashed item(s) the lost key sent", self.org, peer, purged
                )
            except ExchangeError as exc:  # not worth holding the copy back: the trash expires
                log.warning("%s: %s kept its trash: %s", self.org, peer, exc.reason)
            todo["lost-key"].remove(peer)
            write_pending(path, {k: v for k, v in todo.items() if v})

    def _holders(self) -> list[str]:
        """The replica peers, and the members that held replicas before the params or the
        members changed."""
        members = set(queries.member_orgs(self.node.engine))
        former = [p for p in self.vault.replica_peers() if p in members and p != self.org]
        return list(dict.fromkeys([*self.peers(), *former]))

    def purge_shredded(self, pid: str | None = None) -> tuple[list[str], list[str]]:
        """Purge `pid`'s wrapped key item (the chain states it shredded) at every holder,
        trash included, and retry the purges still pending: (holders that purged `pid`,
        holders where it is pending)."""
        with self._purge_lock:
            pending = read_pending(self._purges)
            if pid is not None:
                pending[pid] = self._holders()
            members = set(queries.member_orgs(self.node.engine))
            done: list[str] = []
            now = time.monotonic()
            for shredded, holders in list(pending.items()):
                if queries.shredded(self.node.engine, self.org, shredded) is None:
                    continue  # the statement is not committed (yet): no peer would purge
                if queries.shred_in_force(self.node.engine, self.org, shredded) is None:
                    del pending[shredded]  # the patient came back: its new key stays
                    continue
                left = []
                for peer in holders:
                    if peer not in members:
                        continue  # gone: it holds nothing the consortium can reach
                    if pid is None and self._purge_wait.get(peer, 0.0) > now:
                        left.append(peer)  # failed lately: tried again in a while
                        continue
                    proof = self.keys.key_proof(shredded)
                    try:
                        receipt, _ = self.client.custody_purge(peer, shredded, proof)
                    except ExchangeError as exc:
                        if peer not in self._purge_wait:
                            log.warning("%s: purge at %s pending: %s", self.org, peer, exc.reason)
                        self._purge_wait[peer] = now + PURGE_RETRY_S
                        left.append(peer)
                        continue
                    self._purge_wait.pop(peer, None)
                    key_id = self.keys.item_id(item_name("key", shredded))
                    self._record_receipt(peer, [key_id], receipt)
                    if shredded == pid:
                        done.append(peer)
                if left:
                    pending[shredded] = left
                else:
                    del pending[shredded]
            write_pending(self._purges, pending)
            return done, pending.get(pid, []) if pid is not None else []

    def _record_receipt(self, peer: str, ids: list[str], receipt: bytes) -> None:
        """Keep each holder's signed drop receipt (opaque ids only) as evidence."""
        self._receipts.parent.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "holder": peer, "ids": ids, "receipt": receipt.hex()}
        with open(self._receipts, "ab") as out:
            out.write(orjson.dumps(line) + b"\n")


def _chunks(names: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(names), n):
        yield names[i : i + n]
