"""Key escrow over the exchange: shares deposited at holders, released after a rebinding vote.

    member  -> holders   custody-put  escrow-share-<epoch>: the share sealed to the holder
    member  -> chain     escrow.deposit: holders, each share's SHA-256, threshold
    wiped member, rebound to new keys by two thirds of the members:
    member  -> holder    POST /exchange/v1/share-release {epoch}
    holder  -> member    {holder, epoch, x, sealed (to the member's box key on the chain now),
                          rebind (the proposal that allowed it), note}

A holder releases only once the chain says a `rebind_member` of the caller executed after
the escrow (contracts/escrow.py `release_check`), and only to the caller's current box key:
someone who stole the old machine's keys gets nothing, and no share ever travels unsealed.
While an escrow is current its items cannot be overwritten or dropped through custody (see
`guard_custody`), so a thief with the old key cannot spoil the shares before the vote.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from medledger.contracts import queries
from medledger.node import escrow
from medledger.node.escrow import EscrowError
from medledger.vault.shamir import Share

if TYPE_CHECKING:
    from medledger.exchange.client import ExchangeClient
    from medledger.node import Node
    from medledger.vault import Vault

log = logging.getLogger(__name__)


class ShareRefused(Exception):
    """The holder will not (or cannot) release: HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Store(Protocol):
    def get(self, owner: str, ids: Iterable[str]) -> list[Any]: ...


def _box_keys(node: Node) -> dict[str, bytes]:
    return {str(m["org"]): bytes(m.get("box_key") or b"") for m in queries.members(node.engine)}


# -- the member's side: deposit ------------------------------------------------------------


@dataclass(frozen=True)
class Deposited:
    epoch: int
    holders: list[str]
    threshold: int
    dropped: list[str] = field(default_factory=list)  # holders that dropped stale shares


def deposit(node: Node, client: ExchangeClient, kek: bytes, backup_key: bytes) -> Deposited:
    """Split the keys for today's holders, store each sealed share at its holder (all before
    the chain hears of it: a holder that cannot take its share stops the deposit, and the
    previous escrow stays the current one), record the escrow on the chain, then drop every
    other escrow share this hospital left at its holders (older epochs, failed attempts)."""
    from medledger.node.custody import Item

    org = node.config.org
    status = queries.escrow_status(node.engine, org)
    prepared = escrow.prepare(status, _box_keys(node), escrow.secret_of(kek, backup_key))
    keep: dict[str, str] = {}
    for (holder, sealed), digest in zip(
        prepared.sealed.items(), prepared.deposit.hashes, strict=True
    ):
        keep[holder] = escrow.item_id(prepared.epoch, digest)
        blob = Item(keep[holder], prepared.epoch, hashlib.sha256(sealed).digest(), sealed)
        client.custody_put(holder, [blob])
    node.wallet.send_message(prepared.deposit)
    previous = status.get("record") or {"holders": []}
    dropped = []
    for holder in sorted({*keep, *(str(h["org"]) for h in previous["holders"])}):
        try:
            listed, _ = client.custody_list(holder)
            stale = [
                i.id
                for i in listed
                if i.id.startswith(escrow.ITEM_PREFIX) and i.id != keep.get(holder)
            ]
            if stale:
                client.custody_drop(holder, stale)
                dropped.append(holder)
        except Exception:  # noqa: BLE001 - a stale share is useless without k-1 of its epoch
            log.info("%s: stale escrow shares left at %s for now", org, holder)
    return Deposited(
        prepared.epoch, list(prepared.deposit.holders), prepared.deposit.threshold, dropped
    )


# -- the holder's side: release --------------------------------------------------------------


def release(node: Node, store: _Store, caller: str, epoch: int | None) -> dict[str, Any]:
    """What a holder answers `share-release`: `caller`'s share of its current escrow, sealed
    to `caller`'s box key on the chain now, once a rebind of `caller` executed after it."""
    status = queries.escrow_status(node.engine, caller)
    record = status["record"]
    if record is None:
        raise ShareRefused(404, f"{caller} has no escrow on the chain")
    if status["rebind"] is None:
        raise ShareRefused(403, str(status["release_refused"]))
    if epoch is not None and epoch != int(record["epoch"]):
        raise ShareRefused(409, f"the current escrow of {caller} is epoch {record['epoch']}")
    me = node.config.org
    entry = next((h for h in record["holders"] if h["org"] == me), None)
    if entry is None:
        raise ShareRefused(404, f"{me} holds no share of {caller}'s escrow")
    found = store.get(caller, [escrow.item_id(int(record["epoch"]), bytes(entry["sha256"]))])
    if not found:
        raise ShareRefused(404, f"{me} keeps no share of {caller}'s epoch {record['epoch']}")
    to = _box_keys(node).get(caller)
    if not to:
        raise ShareRefused(409, f"{caller} has no box key on the chain")
    try:
        sealed = escrow.release(record, me, node.config.box_key(), found[0].blob, to)
    except EscrowError as exc:
        raise ShareRefused(500, str(exc)) from None
    return {
        "holder": me,
        "epoch": int(record["epoch"]),
        "x": int(entry["x"]),
        "sealed": base64.b64encode(sealed).decode(),
        "rebind": int(status["rebind"]),
        "note": (
            f"{me} released its share of {caller}'s keys because rebind proposal "
            f"{status['rebind']} executed; sealed to {caller}'s box key on the chain"
        ),
    }


def guard_custody(node: Node, owner: str, ids: Iterable[str]) -> None:
    """Refuse to overwrite or drop the share of the owner's current escrow kept here: a thief
    holding the old machine's key must not spoil what the recovery needs. Any other escrow
    item (a next epoch's, put before its deposit; older ones, dropped after it) goes through."""
    wanted = [i for i in ids if i.startswith(escrow.ITEM_PREFIX)]
    if not wanted:
        return
    record = queries.escrow_status(node.engine, owner)["record"]
    me = node.config.org
    entry = next((h for h in (record or {}).get("holders", []) if h["org"] == me), None)
    if record is None or entry is None:
        return
    kept = escrow.item_id(int(record["epoch"]), bytes(entry["sha256"]))
    if kept in wanted:
        raise ShareRefused(
            409, f"{kept}: the share of {owner}'s current escrow; it stays until a new one"
        )


# -- the recovering member's side: collect ---------------------------------------------------


@dataclass
class Collected:
    """What the holders gave: good shares, and for each other holder what went wrong."""

    record: dict[str, Any]
    good: dict[str, Share] = field(default_factory=dict)
    withheld: dict[str, str] = field(default_factory=dict)  # unreachable or refused
    corrupt: dict[str, str] = field(default_factory=dict)  # released something that fails


def collect(client: ExchangeClient, record: dict[str, Any], box_private: bytes) -> Collected:
    """Ask every holder for its share and check each against its hash on the chain."""
    from medledger.exchange.client import ExchangeError

    out = Collected(record)
    for entry in record["holders"]:
        holder = str(entry["org"])
        try:
            answer, _ = client.post(holder, "share-release", {"epoch": int(record["epoch"])})
            sealed = base64.b64decode(str(answer.get("sealed", "")))
        except ExchangeError as exc:
            out.withheld[holder] = exc.reason + (f" (HTTP {exc.status})" if exc.status else "")
            continue
        except ValueError:
            out.corrupt[holder] = f"{holder}: answered something that is not a sealed share"
            continue
        try:
            out.good[holder] = escrow.check_released(record, holder, sealed, box_private)
        except EscrowError as exc:
            out.corrupt[holder] = str(exc)
    return out


# -- kept current while the node runs ---------------------------------------------------------


def pending_recovery(node: Node) -> int | None:
    """The rebind proposal that awaits this org's recovery (its escrow was not renewed since),
    or None. While one is pending, this home's keys are not the escrowed ones: depositing
    them would replace the shares the recovery needs."""
    rebind = queries.escrow_status(node.engine, node.config.org)["rebind"]
    return None if rebind is None else int(rebind)


class EscrowKeeper:
    """Deposits this hospital's escrow when it has none or it is no longer current (members,
    params or a holder's box key changed), at start and every `interval` seconds; a deposit
    that fails (a holder down) is tried again at the next round.

    After a rebinding of this org (`pending_recovery`) it deposits only once the vault holds
    records again: they opened under this home's keys, so these are the escrowed ones (a
    recovery whose own re-escrow met a holder down is finished here); a fresh home that was
    not recovered yet has an empty vault and keys nobody must escrow in place of the old."""

    def __init__(
        self,
        node: Node,
        client: ExchangeClient,
        kek: bytes,
        backup_key: bytes,
        vault: Vault | None = None,
        interval: float = 30.0,
        first: float = 1.0,
    ) -> None:
        self.node, self.client, self.vault = node, client, vault
        self._keys = (kek, backup_key)
        self.interval, self.first = interval, first
        self.last: Deposited | None = None
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="escrow-keeper", daemon=True)

    def check(self) -> Deposited | None:
        """One round: deposit if needed; the deposit made, or None."""
        org = self.node.config.org
        status = queries.escrow_status(self.node.engine, org)
        if status["rebind"] is not None:
            if self.vault is None or not self._restored(int(status["rebind"])):
                return None  # a recovery is pending: these keys are not the escrowed ones
        elif status["current"]:
            return None
        if len(status["holders"]) < int(status["threshold"]):
            self.error = f"{len(status['holders'])} peers, fewer than the threshold"
            return None
        self.last = deposit(self.node, self.client, *self._keys)
        log.info("%s: keys escrowed, epoch %d at %s", org, self.last.epoch, self.last.holders)
        return self.last

    def _restored(self, rebind: int, patients: int = 50) -> bool:
        """Whether the vault holds one of this org's own records registered before rebind
        proposal `rebind` executed: only the escrowed keys open those (a record taken in on
        the new machine, whose key the vote bound, comes after it). Looks at the first own
        record of a few patients."""
        assert self.vault is not None
        engine, org = self.node.engine, self.node.config.org
        executed = next(
            (p for p in queries.proposals(engine, "executed") if int(p["id"]) == rebind), None
        )
        if executed is None:
            return False
        for pid in self.vault.patients()[:patients]:
            own = self.vault.records_of(pid, include_copies=False)
            entry = queries.record_entry(engine, own[0].rid) if own else None
            decided = int(executed["decided"])
            if entry is not None and entry["custodian"] == org and int(entry["time"]) < decided:
                return True
        return False

    def _run(self) -> None:
        wait, failing_since = self.first, 0.0
        while not self._stop.wait(wait):
            try:
                self.check()
                self.error, failing_since = "", 0.0
                wait = self.interval
            except Exception as exc:  # noqa: BLE001 - a holder down: try again soon
                self.error = f"{type(exc).__name__}: {exc}"
                failing_since = failing_since or time.monotonic()
                # peers start one by one: only a failure that lasts is worth a warning
                lasting = time.monotonic() - failing_since > 2 * self.interval
                level = logging.WARNING if lasting else logging.INFO
                log.log(level, "%s: escrow not deposited yet: %s", self.node.config.org, self.error)
                wait = min(self.interval, 2.0)

    def start(self) -> EscrowKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop between rounds; a deposit under way is left to finish or fail on its own (the
        thread is a daemon: it never holds the node's shutdown)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
