"""A hospital's vault replicated at peers, and rebuilt from them after a loss.

Which peers: `replica_peers` picks `backup_replicas` (consortium parameter, default 2) other
members by rendezvous hashing of (owner, member), so every node computes the same answer from
the chain, and a member joining or leaving moves only the replicas it takes or held.

What travels: vault/replication.py (opaque ids, AES-GCM blobs under `keys/backup.key`, padded
to power-of-two sizes). The replicator that sends changes runs in the exchange
(exchange/replicator.py); `restore_vault` is the way back: it pulls every item from the peers,
checks each copy (the sha256 the peer states, the AES-GCM tag, the name inside), takes a good
copy from another peer when one is bad and names the peer that served the bad one, rebuilds
the vault in a fresh file, checks every restored record against its commitment on the chain,
and moves the file into place only when all of that is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from medledger.contracts import governance, queries
from medledger.contracts.queries import Queryable
from medledger.host.secretfile import SecretFileExists, read_hex_secret, write_secret
from medledger.ledger.store import StateView
from medledger.node.custody import Item, ItemInfo
from medledger.node.indexing import check_commitment
from medledger.vault import Vault
from medledger.vault.replication import ReplicaError, ReplicaKeys, item_name, parse_item_name

if TYPE_CHECKING:
    from medledger.node import Node

BACKUP_KEY = Path("keys") / "backup.key"
#: Items asked of a peer in one custody-get.
GET_BATCH = 500


def backup_key_path(home: Path) -> Path:
    return home / BACKUP_KEY


def ensure_backup_key(home: Path) -> bytes:
    """The hospital's backup key (32 random bytes, hex, mode 0600), made if the home has none
    (homes made before replication, or by an older `init`)."""
    path = backup_key_path(home)
    if not path.exists():
        with contextlib.suppress(SecretFileExists):  # another process made it first
            write_secret(path, secrets.token_bytes(32).hex() + "\n")
    return read_hex_secret(path, what="backup key")


def replica_peers(source: Queryable | StateView, org: str) -> list[str]:
    """The members that hold `org`'s replicas, from the chain (`source`: an engine, or a
    StateView of committed state): `backup_replicas` of the others, ranked by
    SHA-256(org, member) (rendezvous hashing: the same on every node, stable as members come
    and go)."""
    if isinstance(source, StateView):
        n = governance.params(source)["backup_replicas"]
        members = [str(m["org"]) for m in governance.members(source)]
    else:
        n = int(queries.governance_params(source).get("backup_replicas", 2))
        members = queries.member_orgs(source)
    others = [m for m in members if m != org]
    ranked = sorted(others, key=lambda m: hashlib.sha256(f"{org}\x00{m}".encode()).digest())
    return ranked[: max(n, 0)]


def drop_erased(
    node: Node, vault: Vault, since: int, names: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """Drop at the replica peers, now, what an erasure deleted from the vault: the items
    `names` and those the journal shows deleted after `since` (a patient's wrapped key, or
    the copy key sets). Returns (peers that signed a receipt, peers pending). Offline (no
    running exchange) every peer is pending: the replicator sends the drops from the journal
    when the node runs, as it does for a peer that is down."""
    org = node.config.org
    changed = set(names) | {name for _, name, _ in vault.changes(since, 100_000)}
    gone = sorted(n for n, rows in vault.read_items(sorted(changed)).items() if rows is None)
    keys = ReplicaKeys(ensure_backup_key(node.config.home), org)
    ids = [keys.item_id(name) for name in gone]
    if not ids:
        return [], []
    if node.replica_drop is None:
        return [], replica_peers(node.engine, org)
    return node.replica_drop(ids)


#: Shredded patients whose wrapped key some peers have not purged yet: {pid: [peer]}.
PENDING_PURGES = Path("replicas") / "purges-pending.json"
#: After a complete recovery: peers whose trash holds what the lost key sent (a thief's
#: drops and garbage too), emptied once this vault's full copy is there: {"lost-key": [peer]}.
TRASH_TO_EMPTY = Path("replicas") / "trash-to-empty.json"


def purge_later(node: Node, pid: str, peers: list[str] | None = None) -> list[str]:
    """Note in the home that `pid`'s wrapped key is to be purged at `peers` (default: the
    replica peers): written before the shred statement is sent, so that a crash after it
    commits still purges. The replicator retries it once the statement is committed."""
    peers = replica_peers(node.engine, node.config.org) if peers is None else peers
    path = node.config.home / PENDING_PURGES
    pending = read_pending(path)
    pending[pid] = sorted(set(pending.get(pid, [])) | set(peers))
    write_pending(path, pending)
    return peers


def forget_purge(node: Node, pid: str) -> None:
    """The shred statement was refused: nothing to purge for `pid`."""
    path = node.config.home / PENDING_PURGES
    pending = read_pending(path)
    if pending.pop(pid, None) is not None:
        write_pending(path, pending)


def purge_erased(node: Node, pid: str) -> tuple[list[str], list[str]]:
    """Once the chain states `pid` shredded here: purge its wrapped key item at the replica
    peers (and former ones), trash included, with the proof that the item is that key
    (vault/replication.py). Returns (peers that purged, peers pending). Pending ones stay in
    the home and are retried by the running node's replicator; offline, every peer is."""
    if node.replica_purge is not None:
        return node.replica_purge(pid)
    return [], purge_later(node, pid)


def empty_lost_key_trash_later(home: Path, peers: list[str]) -> None:
    """A recovery restored every record: the trash the lost key filled at `peers` is emptied
    by the replicator once it has sent them this vault (its first full copy)."""
    write_pending(home / TRASH_TO_EMPTY, {"lost-key": sorted(peers)})


def read_pending(path: Path) -> dict[str, list[str]]:
    """A home's list of what is still to do at which peers ({what: [peer]})."""
    if not path.exists():
        return {}
    data = orjson.loads(path.read_bytes())
    return {str(pid): [str(p) for p in peers] for pid, peers in dict(data).items()}


def write_pending(path: Path, pending: dict[str, list[str]]) -> None:
    """Written whole and moved into place: a crash leaves the old list or the new one."""
    if not pending:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(pending, option=orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


@dataclass(frozen=True)
class PeerLag:
    """How far one replica peer is behind this hospital's vault."""

    peer: str
    synced: bool  # False: no full copy acknowledged yet (all changes count as behind)
    changes: int  # journal changes it has not acknowledged
    seconds: float  # age of the oldest of them (0 when none)
    held_bytes: int  # what it holds of ours, as it last said
    last_ack: float | None  # when it last acknowledged (epoch seconds)


def backup_status(vault: Vault, peers: list[str], now: float | None = None) -> list[PeerLag]:
    """Each replica peer's lag, from the vault's journal and the acknowledgements recorded."""
    now = time.time() if now is None else now
    acked = vault.replica_peers()
    out = []
    for peer in peers:
        seq, at, held = acked.get(peer, (0, 0.0, 0))
        changes, oldest = vault.replication_lag(seq)
        if peer not in acked:
            changes = max(changes, len(vault.item_names()))
        out.append(
            PeerLag(
                peer=peer,
                synced=peer in acked,
                changes=changes,
                seconds=0.0 if oldest is None else max(now - oldest, 0.0),
                held_bytes=held,
                last_ack=at if peer in acked else None,
            )
        )
    return out


class CustodyClient(Protocol):
    """What restore needs of the exchange client (exchange/client.py's ExchangeClient)."""

    @property
    def node(self) -> Node: ...

    def custody_list(self, holder: str, *, trash: bool = False) -> tuple[list[ItemInfo], int]: ...

    def custody_get(self, holder: str, ids: list[str]) -> list[Item]: ...

    def custody_get_trashed(self, holder: str, numbers: list[int]) -> dict[int, Item]: ...


class RestoreRefused(ValueError):
    """Restore cannot start, or would leave less than asked; the vault in place is untouched."""


@dataclass
class RestoreReport:
    """What a restore did; every problem names a record id or a peer."""

    path: Path
    items: int = 0  # items restored
    records: int = 0  # record versions restored
    checked: int = 0  # of which matched their commitment on the chain
    unregistered: int = 0  # supporting resources (never on the chain): AES-GCM-checked only
    missing: list[str] = field(default_factory=list)  # "rid vN" on the chain, not restored
    mismatched: list[str] = field(default_factory=list)  # restored, not matching the chain
    pending: list[str] = field(default_factory=list)  # provisional, not on the chain yet
    erased_left_out: int = 0  # items of erased patients found at peers and not restored
    patients_missing: list[str] = field(default_factory=list)  # in custody, nothing restored
    unreachable: list[str] = field(default_factory=list)  # peers that did not answer
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # peer -> item ids bad there
    # peer -> item ids whose live copy there does not open while the version it kept in its
    # trash does: replaced by the owner's key (a thief's, before the rebinding), not the peer
    replaced: dict[str, list[str]] = field(default_factory=dict)
    from_trash: int = 0  # items restored from a version a peer kept in its trash
    lost: list[str] = field(default_factory=list)  # item ids with no good copy anywhere
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of the restoring thread (the peers' serving not counted)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.mismatched or self.lost or self.patients_missing)

    @property
    def rate(self) -> float:
        """Record versions restored and checked per second."""
        return self.records / self.seconds if self.seconds else 0.0


def restore_vault(
    home: Path,
    backup_key: bytes,
    kek: bytes,
    client: CustodyClient,
    peers: list[str],
    *,
    engine: Queryable | None = None,
    require_complete: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RestoreReport:
    """Rebuild `home`'s vault from the replicas held by `peers` (see the module's doc).

    The vault file must not exist (a wiped home). The new vault is written to a temporary
    file beside it and moved into place once restored and checked; with `require_complete`
    it is moved only when nothing is missing, else RestoreRefused says what is.
    """
    from medledger.node.config import load_config

    started, cpu = time.perf_counter(), time.thread_time()
    say = progress or (lambda _msg: None)
    config = load_config(home)
    org = config.org
    engine = engine or client.node.engine
    vault_config = config.vault_config()
    if vault_config.backend != "sqlite" or vault_config.path is None:
        raise RestoreRefused("restore writes a SQLite vault; this home's vault is not SQLite")
    final = Path(vault_config.path)
    if final.exists():
        raise RestoreRefused(f"{final} exists: move it away first (restore never overwrites)")
    report = RestoreReport(path=final)
    keys = ReplicaKeys(backup_key, org)

    # 1. What each peer says it holds, live and in its trash (what the owner's key dropped
    # or replaced: maybe a thief's doing before the rebinding vote).
    listings: dict[str, dict[tuple[str, int], ItemInfo]] = {}
    for peer in peers:
        try:
            found, _ = client.custody_list(peer)
        except Exception as exc:  # noqa: BLE001 - an unreachable peer is reported, not fatal
            report.unreachable.append(peer)
            say(f"{peer}: unreachable ({exc})")
            continue
        try:
            trashed, _ = client.custody_list(peer, trash=True)
        except Exception as exc:  # noqa: BLE001 - its live items still count
            trashed = []
            say(f"{peer}: trash not listed ({exc})")
        listings[peer] = {(i.id, i.trash): i for i in [*found, *trashed] if _is_replica_id(i.id)}
        say(f"{peer}: {len(found)} items, {len(trashed)} in its trash")
    if not listings:
        raise RestoreRefused(f"no replica peer answered ({', '.join(peers) or 'none given'})")

    # 2. Fetch each item from the peer listing its newest live version; on a bad copy, the
    # next; the trashed versions last (newest first).
    ranked: dict[str, list[tuple[bool, int, int, str, int]]] = defaultdict(list)
    for peer, listed in listings.items():
        for info in listed.values():
            rank = (info.trash > 0, -info.version, peers.index(peer))
            ranked[info.id].append((*rank, peer, info.trash))
    # item id -> [(peer, trash number: 0 for the live item)], in the order to try them
    options = {item_id: [(r[3], r[4]) for r in sorted(rs)] for item_id, rs in ranked.items()}
    opened: dict[str, tuple[int, str, dict[str, Any]]] = {}  # item id -> (version, name, rows)
    todo = {item_id: 0 for item_id in options}  # item id -> index of the option to try
    chosen: dict[str, int] = {}  # item id -> index of the option that opened
    while todo:
        by_peer: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for item_id, k in todo.items():
            peer, number = options[item_id][k]
            by_peer[peer].append((item_id, number))
        retry: dict[str, int] = {}
        for peer, wanted in by_peer.items():
            got = _fetch(client, peer, wanted, report, say)
            for item_id, number in wanted:
                stated = listings[peer][(item_id, number)]
                item = got.get((item_id, number))
                try:
                    if item is None:
                        raise ReplicaError("not served")
                    if (
                        hashlib.sha256(item.blob).digest() != stated.sha256
                        or item.sha256 != stated.sha256
                        or item.version != stated.version
                        or item.id != item_id
                    ):
                        raise ReplicaError("not the sha256 or version listed")
                    name, rows = keys.open(item_id, item.version, item.blob)
                except ReplicaError:
                    # a trashed version that does not open is what was replaced before it
                    if number == 0 and (item is not None or peer not in report.unreachable):
                        report.corrupt.setdefault(peer, []).append(item_id)
                    k = todo[item_id] + 1
                    if k < len(options[item_id]):
                        retry[item_id] = k
                    else:
                        report.lost.append(item_id)
                    continue
                opened[item_id] = (item.version, name, rows)
                chosen[item_id] = todo[item_id]
                report.from_trash += number > 0
        todo = retry
    # A live copy that does not open at a peer whose trash holds a version that does: the
    # owner's key replaced it (a thief's, before the rebinding); the peer did its duty.
    for peer, ids in list(report.corrupt.items()):
        bad = set(ids)
        wanted = [(i, n) for i, n in listings[peer] if n and i in bad]
        opens: set[str] = set()
        for (item_id, _), item in _fetch(client, peer, wanted, report, say).items():
            with contextlib.suppress(ReplicaError):
                keys.open(item_id, item.version, item.blob)
                opens.add(item_id)
        if opens:
            report.replaced[peer] = [i for i in ids if i in opens]
            report.corrupt[peer] = [i for i in ids if i not in opens]
    report.corrupt = {peer: ids for peer, ids in report.corrupt.items() if ids}
    say(f"{len(opened)} items opened ({report.from_trash} from the peers' trash)")

    # 3. Erasure tombstones win: nothing of an erased (pid, generation) comes back. A
    # tombstone counts only with this hospital's shred statement of the pid on the chain:
    # the old key's thief holds the backup key and can seal one for any patient.
    contents = {name: rows for _, name, rows in opened.values()}
    on_chain: dict[str, bool] = {}

    def shred_stated(pid: str) -> bool:
        if pid not in on_chain:
            on_chain[pid] = queries.shredded(engine, org, pid) is not None
        return on_chain[pid]

    erased = {
        (str(row[0]), int(row[1]))
        for name, rows in contents.items()
        if parse_item_name(name)[0] == "erasure"
        for row in rows.get("erasures", [])
        if shred_stated(str(row[0]))
    }
    erased |= _erased_on_chain(contents, engine, org)
    # copies shredded apart (their key sets may be back from a peer's trash: not the copies)
    copies_erased = {
        str(row[0])
        for name, rows in contents.items()
        if parse_item_name(name)[0] == "copy-erasure"
        for row in rows.get("copy_erasures", [])
    }
    kept: dict[str, dict[str, Any]] = {}
    for name, rows in contents.items():
        if _of_erased(name, rows, erased, copies_erased):
            report.erased_left_out += 1
        else:
            kept[name] = rows

    # 4. A fresh vault, written whole, checked, then moved into place.
    tmp = final.with_name(final.name + ".restoring")
    for leftover in _sqlite_files(tmp):
        leftover.unlink(missing_ok=True)
    vault = Vault.open(dataclasses.replace(vault_config, path=tmp, kek=kek, kek_path=None))
    try:
        vault.write_items(kept)
        report.items = len(kept)
        _check_records(vault, kept, engine, org, report)
        if report.mismatched:
            versions = _Versions(client, keys, listings, options, chosen, report, say)
            _pick_by_commitment(vault, kept, versions, keys, engine, org, report)
    finally:
        vault.close()
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.thread_time() - cpu
    if require_complete and not report.complete:
        for leftover in _sqlite_files(tmp):
            leftover.unlink(missing_ok=True)
        raise RestoreRefused(describe_gaps(report))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    for leftover in _sqlite_files(tmp):
        leftover.unlink(missing_ok=True)
    return report


class _Versions:
    """The versions of each item the peers hold beyond the one restored, fetched and opened
    on demand, in the order of `options` (live first, newest first)."""

    def __init__(
        self,
        client: CustodyClient,
        keys: ReplicaKeys,
        listings: dict[str, dict[tuple[str, int], ItemInfo]],
        options: dict[str, list[tuple[str, int]]],
        chosen: dict[str, int],
        report: RestoreReport,
        say: Callable[[str], None],
    ) -> None:
        self.client, self.keys, self.listings, self.options = client, keys, listings, options
        self.report, self.say = report, say
        self.next = {item_id: k + 1 for item_id, k in chosen.items()}

    def more(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The next version that opens of each item of `ids` (left out: none is left)."""
        out: dict[str, dict[str, Any]] = {}
        todo = set(ids)
        while todo:
            by_peer: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for item_id in sorted(todo):
                k = self.next.get(item_id, 0)
                if k >= len(self.options.get(item_id, [])):
                    todo.discard(item_id)
                    continue
                self.next[item_id] = k + 1
                peer, number = self.options[item_id][k]
                by_peer[peer].append((item_id, number))
            for peer, wanted in by_peer.items():
                got = _fetch(self.client, peer, wanted, self.report, self.say)
                for item_id, number in wanted:
                    item = got.get((item_id, number))
                    stated = self.listings[peer][(item_id, number)]
                    if item is None or hashlib.sha256(item.blob).digest() != stated.sha256:
                        continue
                    with contextlib.suppress(ReplicaError):
                        out[item_id] = self.keys.open(item_id, item.version, item.blob)[1]
                        todo.discard(item_id)
        return out


def _pick_by_commitment(
    vault: Vault,
    kept: dict[str, dict[str, Any]],
    versions: _Versions,
    keys: ReplicaKeys,
    engine: Queryable,
    org: str,
    report: RestoreReport,
) -> None:
    """Records that do not match their commitment on the chain: the newest version that
    opened may be a thief's, sealed with the stolen backup key before the rebinding. The
    chain decides: try the other versions the peers hold (live or trashed) of the record;
    once none is left, of its patient's key, then of its key set; until the commitments
    match or nothing is left: every version, however many a thief sealed (each round, one
    custody-get per peer and one check of the records; the peers' quotas bound the versions).
    What still does not match stays named in `mismatched`."""
    while True:
        suspects: dict[str, list[str]] = {}  # record item's name -> [key's, set's]
        for gap in report.mismatched:
            rid, version = gap.rsplit(" v", 1)
            name = item_name("record", rid, int(version))
            rows = kept.get(name, {}).get("records")
            if rows:
                suspects[name] = [item_name("key", rows[0][2]), item_name("set", rows[0][10])]
        changes = _next_versions(versions, keys, list(suspects))
        for name, (key_name, set_name) in suspects.items():
            if name in changes:
                continue  # another version of the record itself first
            for other in (key_name, set_name):
                if other in changes:
                    break  # already another version this round (another record's suspect)
                if other in kept:
                    changes.update(_next_versions(versions, keys, [other]))
                    if other in changes:
                        break
        if not changes:
            return
        vault.replace_items(changes)
        kept.update(changes)
        report.records = report.checked = report.unregistered = 0
        report.missing, report.mismatched, report.pending = [], [], []
        _check_records(vault, kept, engine, org, report)
        if not report.mismatched:
            return


def _next_versions(
    versions: _Versions, keys: ReplicaKeys, names: list[str]
) -> dict[str, dict[str, Any]]:
    by_id = {keys.item_id(name): name for name in names}
    return {by_id[item_id]: rows for item_id, rows in versions.more(list(by_id)).items()}


def _fetch(
    client: CustodyClient,
    peer: str,
    wanted: list[tuple[str, int]],
    report: RestoreReport,
    say: Callable[[str], None],
) -> dict[tuple[str, int], Item]:
    """The items `wanted` of `peer` ((id, trash number), 0: live), as it serves them."""
    got: dict[tuple[str, int], Item] = {}
    live = [item_id for item_id, number in wanted if not number]
    trashed = [number for _, number in wanted if number]
    try:
        for i in range(0, len(live), GET_BATCH):
            got.update({(it.id, 0): it for it in client.custody_get(peer, live[i : i + GET_BATCH])})
        for i in range(0, len(trashed), GET_BATCH):
            batch = client.custody_get_trashed(peer, trashed[i : i + GET_BATCH])
            got.update({(it.id, number): it for number, it in batch.items()})
    except Exception as exc:  # noqa: BLE001 - the other peers may have them
        say(f"{peer}: custody-get failed ({exc})")
        if peer not in report.unreachable:
            report.unreachable.append(peer)
    return got


def describe_gaps(report: RestoreReport) -> str:
    """One line per kind of gap, naming record ids and peers."""
    lines = []
    if report.patients_missing:
        lines.append(
            f"{len(report.patients_missing)} patients in this hospital's custody on the chain "
            f"with nothing restored: {', '.join(report.patients_missing)}"
        )
    if report.missing:
        lines.append(f"missing (on the chain, in no replica): {', '.join(report.missing)}")
    if report.mismatched:
        lines.append(f"not matching their commitment: {', '.join(report.mismatched)}")
    if report.lost:
        lines.append(f"{len(report.lost)} items with no good copy at any peer")
    for peer, ids in sorted(report.corrupt.items()):
        lines.append(f"{peer} served {len(ids)} bad copies")
    if report.unreachable:
        lines.append(f"unreachable: {', '.join(report.unreachable)}")
    return "; ".join(lines) or "complete"


_REPLICA_ID = re.compile(r"[0-9a-f]{64}")


def _is_replica_id(item_id: str) -> bool:
    """Replica items have 64-hex ids; other items (escrow shares) are not the vault's."""
    return _REPLICA_ID.fullmatch(item_id) is not None


def _erased_on_chain(
    contents: dict[str, dict[str, Any]], engine: Queryable, org: str
) -> set[tuple[str, int]]:
    """(pid, generation) that the chain says this hospital shredded (`records.shredded`),
    whether or not the tombstone reached its peers (they were down, or the machine was lost
    before the replicator's next round): every generation of a shredded pid but one whose
    own records were registered after the statement (the patient came back later)."""
    generations: dict[str, set[int]] = defaultdict(set)
    own: dict[tuple[str, int], list[str]] = defaultdict(list)
    for rows in contents.values():
        for r in rows.get("patient_keys", []):
            generations[str(r[0])].add(int(r[1]))
        for r in rows.get("records", []):
            generations[str(r[2])].add(int(r[3]))
            if str(r[5]) == org and not r[6]:
                own[(str(r[2]), int(r[3]))].append(str(r[0]))
    erased: set[tuple[str, int]] = set()
    for pid, gens in generations.items():
        statement = queries.shredded(engine, org, pid)
        if statement is None:
            continue
        for gen in gens:
            entries = [queries.record_entry(engine, rid) for rid in own.get((pid, gen), [])]
            if not any(e is not None and int(e["time"]) > int(statement["time"]) for e in entries):
                erased.add((pid, gen))
    return erased


def _of_erased(
    name: str, rows: dict[str, Any], erased: set[tuple[str, int]], copies_erased: set[str]
) -> bool:
    kind, _ = parse_item_name(name)
    table = {"key": "patient_keys", "set": "key_sets", "record": "records"}.get(kind)
    if table is None:
        return False
    kid_at = {"key_sets": 0, "records": 10}.get(table)
    if kid_at is not None and any(str(r[kid_at]) in copies_erased for r in rows.get(table, [])):
        return True
    # patient_keys, key_sets and records all start (.., pid, generation) at the same places
    pid_at, gen_at = {"patient_keys": (0, 1), "key_sets": (1, 2), "records": (2, 3)}[table]
    return any((str(r[pid_at]), int(r[gen_at])) in erased for r in rows.get(table, []))


def _sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _check_records(
    vault: Vault,
    items: dict[str, dict[str, Any]],
    engine: Queryable,
    org: str,
    report: RestoreReport,
) -> None:
    """Every restored record version against its commitment on the chain, and every record
    the chain lists at this custodian, for the restored patients and for every patient in its
    custody on the chain (`records/custody_of`), against what was restored.

    One index query per patient (the entries carry their latest version's commitment); a
    rid's older versions are asked for only when one of them is restored or missing."""
    restored: dict[tuple[str, int], str] = {}  # (rid, version) -> pid
    provisional: set[tuple[str, int]] = set()
    for name, rows in items.items():
        kind, _ = parse_item_name(name)
        if kind == "record":
            for r in rows.get("records", []):
                restored[(str(r[0]), int(r[1]))] = str(r[2])
        elif kind == "unit":
            for r in rows.get("provisional_units", []):
                provisional |= {(str(a), int(b)) for a, b in orjson.loads(bytes(r[2]))}
    report.records = len(restored)
    # The patients restored, and those the chain says are in this hospital's custody: a
    # patient of whom no peer sent anything (dropped, lost with a peer's disk) is missed too.
    came_back = {pid for pid in restored.values() if pid != vault.hospital_pid}
    report.patients_missing = sorted(set(queries.custody_of(engine, org)) - came_back)
    pids = sorted(came_back | set(report.patients_missing))
    entries = {e["rid"]: e for pid in pids for e in queries.records_of_patient(engine, pid)}
    versions: dict[str, list[dict[str, Any]]] = {}

    def commitment(rid: str, version: int) -> bytes | None:
        entry = entries.get(rid)
        if entry is not None and int(entry["version"]) == version:
            return bytes(entry["commitment"])
        if rid not in versions:
            versions[rid] = queries.record_versions(engine, rid)
        match = next((v for v in versions[rid] if int(v["version"]) == version), None)
        return None if match is None else bytes(match["commitment"])

    for (rid, version), pid in sorted(restored.items()):
        if pid == vault.hospital_pid:
            report.unregistered += 1  # supporting resources are never registered on the chain
            continue
        expected = commitment(rid, version)
        if expected is None:
            gap = report.pending if (rid, version) in provisional else report.mismatched
            gap.append(f"{rid} v{version}")
            continue
        try:
            data, salt = vault.get_with_salt(rid, version)
            ok = check_commitment(salt, data, expected)
        except Exception:  # noqa: BLE001 - a key lost with its item, an altered row
            ok = False
        if ok:
            report.checked += 1
        else:
            report.mismatched.append(f"{rid} v{version}")

    held: dict[str, int] = defaultdict(int)
    for rid, _ in restored:
        held[rid] += 1
    shredded_at: dict[str, int] = {}  # pid -> when this hospital shredded it

    def erased(entry: dict[str, Any]) -> bool:
        """Registered before this hospital's shredding of its patient (a later record of a
        patient who came back is expected back)."""
        if not entry.get("shredded"):
            return False
        pid = str(entry["pid"])
        if pid not in shredded_at:
            statement = queries.shredded(engine, org, pid)
            shredded_at[pid] = int(statement["time"]) if statement else 0
        return int(entry["time"]) <= shredded_at[pid]

    for rid, entry in sorted(entries.items()):
        if entry["custodian"] != org or erased(entry):
            continue
        if held[rid] >= int(entry["version"]):
            continue
        for v in versions.get(rid) or queries.record_versions(engine, rid):
            if v.get("custodian") == org and (rid, int(v["version"])) not in restored:
                report.missing.append(f"{rid} v{v['version']}")
