"""A hospital wiped out gets its keys and records back from its peers (issue 15).

The day of the attack (docs/recovery.md): on a fresh machine the hospital makes new keys
(`medledger hospital keygen`), two members propose and vote `rebind_member` (`medledger
recover propose`, `medledger member vote`), and `medledger recover run` does the rest:

1. waits until the chain binds the org to this home's new keys (the vote committed);
2. asks every escrow holder for its share (`share-release`, sealed to the new box key), checks
   each against its SHA-256 on the chain, names a holder that withholds or corrupts one;
3. with k good shares rebuilds the vault KEK and backup key; with fewer says exactly which
   holders are missing and changes nothing on disk;
4. gets the consortium's pseudonym key from a member (sealed to the new box key);
5. pulls the replicas from the peers into a fresh vault, each record checked against its
   commitment on the chain (node.replicas.restore_vault);
6. deposits a new escrow (the holders' shares of the old epoch are dropped);

and returns a `RecoveryReport` that says what was restored, checked, missing (by record id)
and who misbehaved.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medledger.contracts import queries
from medledger.exchange import escrow as exchange_escrow
from medledger.host.secretfile import write_secret
from medledger.node import escrow
from medledger.node.config import ConfigError

if TYPE_CHECKING:
    from medledger.exchange.client import ExchangeClient
    from medledger.exchange.escrow import Collected, Deposited
    from medledger.node import Node
    from medledger.node.replicas import RestoreReport


class RecoveryError(ConfigError):
    """Recovery cannot go on; the message says what is missing and from whom."""


@dataclass
class RecoveryReport:
    org: str
    rebind: int = 0
    epoch: int = 0
    threshold: int = 0
    shares_from: list[str] = field(default_factory=list)
    pseudonym_from: str = ""
    withheld: dict[str, str] = field(default_factory=dict)
    corrupt: dict[str, str] = field(default_factory=dict)
    restore: RestoreReport | None = None
    escrow: Deposited | None = None
    escrow_error: str = ""

    @property
    def complete(self) -> bool:
        """Every record restored and checked against the chain (nothing missing or corrupt).
        Keys not escrowed again yet do not make it incomplete: the node finishes that."""
        return self.restore is not None and self.restore.complete

    def lines(self) -> list[str]:
        out = [
            f"{self.org}: rebound by proposal {self.rebind}; escrow epoch {self.epoch}, "
            f"{len(self.shares_from)} good share(s) ({self.threshold} needed) from "
            + ", ".join(self.shares_from)
        ]
        out += [f"  share withheld by {h}: {why}" for h, why in sorted(self.withheld.items())]
        out += [f"  share CORRUPT from {h}: {why}" for h, why in sorted(self.corrupt.items())]
        if self.pseudonym_from:
            out.append(f"pseudonym key from {self.pseudonym_from}")
        if self.restore is not None:
            out += restore_lines(self.restore)
        if self.escrow is not None:
            out.append(
                f"keys escrowed again: epoch {self.escrow.epoch}, {self.escrow.threshold} of "
                + ", ".join(self.escrow.holders)
            )
        elif self.escrow_error:
            out.append(
                f"keys NOT escrowed again yet: {self.escrow_error}; the node does it once the "
                "holders answer (or `medledger backup escrow`)"
            )
        return out


def restore_lines(r: RestoreReport) -> list[str]:
    """What `restore_vault` did, every problem by record id or peer."""
    out = [
        f"restored {r.records} record versions ({r.items} items) in {r.seconds:.1f} s; "
        f"{r.checked} checked against their commitments on the chain"
    ]
    named = [
        ("PATIENTS in custody on the chain, nothing restored (pid)", r.patients_missing),
        ("MISSING (on the chain, not restored)", r.missing),
        ("NOT matching the chain (not kept)", r.mismatched),
        ("LOST (no good copy at any peer)", r.lost),
        ("provisional, never registered on the chain", r.pending),
    ]
    out += [f"  {what}: {', '.join(ids)}" for what, ids in named if ids]
    if r.erased_left_out:
        out.append(f"  {r.erased_left_out} item(s) of erased patients left out, as they must be")
    out += [f"  peer {peer} unreachable" for peer in r.unreachable]
    out += [
        f"  peer {peer} served {len(ids)} bad cop(ies), taken from another peer: {', '.join(ids)}"
        for peer, ids in sorted(r.corrupt.items())
    ]
    out += [
        f"  peer {peer}: {len(ids)} item(s) replaced by the old key, taken from its trash"
        for peer, ids in sorted(r.replaced.items())
    ]
    if r.from_trash:
        out.append(f"  {r.from_trash} item(s) from versions the peers kept in their trash")
    return out


def wait_for_rebind(node: Node, timeout: float, poll: float = 0.5) -> int:
    """The rebind proposal that binds this home's org to its keys, once committed."""
    org, mine = node.config.org, node.org_key.public_key
    deadline = time.monotonic() + timeout
    why = ""
    while True:
        member = next((m for m in queries.members(node.engine) if m["org"] == org), None)
        status = queries.escrow_status(node.engine, org)
        if member is not None and bytes(member["key"]) == mine and status["rebind"] is not None:
            return int(status["rebind"])
        if member is None:
            why = f"{org} is not a member of this consortium"
        elif bytes(member["key"]) != mine:
            why = (
                f"the chain does not bind {org} to this home's key yet: the members have not "
                "executed `recover propose` + votes (rebind_member) for it"
            )
        else:
            why = str(status["release_refused"])
        if time.monotonic() >= deadline:
            raise RecoveryError(f"after {timeout:.0f} s: {why}")
        time.sleep(poll)


def recover_keys(
    node: Node, client: ExchangeClient, report: RecoveryReport
) -> tuple[bytes, bytes, Collected]:
    """(KEK, backup key) from the holders' shares, or RecoveryError naming who is missing."""
    status = queries.escrow_status(node.engine, node.config.org)
    record = status["record"]
    if record is None:
        raise RecoveryError(f"{node.config.org} has no key escrow on the chain: nothing to rebuild")
    collected = exchange_escrow.collect(client, record, node.config.box_key())
    report.epoch, report.threshold = int(record["epoch"]), int(record["threshold"])
    report.shares_from = sorted(collected.good)
    report.withheld, report.corrupt = collected.withheld, collected.corrupt
    try:
        secret = escrow.rebuild(record, collected.good)
    except escrow.EscrowError as exc:
        problems = [f"{h}: {why}" for h, why in {**collected.withheld, **collected.corrupt}.items()]
        raise RecoveryError(f"{exc}; nothing was written. " + "; ".join(problems)) from None
    kek, backup_key = escrow.keys_of(secret)
    return kek, backup_key, collected


def install_keys(node: Node, kek: bytes, backup_key: bytes) -> None:
    """Put the rebuilt keys in the home, in place of keygen's fresh (unused) ones. Refused if
    the home's vault already holds records: they would be under the other KEK."""
    vault_config = node.config.vault_config()
    if vault_config.path is not None and Path(vault_config.path).exists():
        raise RecoveryError(
            f"{vault_config.path}: a vault already exists in this home; recovery restores into a "
            "fresh home (move it away first)"
        )
    keys = node.config.home / "keys"
    write_secret(keys / "vault.kek", kek.hex() + "\n", overwrite=True)
    write_secret(keys / "backup.key", backup_key.hex() + "\n", overwrite=True)


def fetch_pseudonym_key(node: Node, client: ExchangeClient, members: list[str]) -> str:
    """The consortium's pseudonym key from the first of `members` that gives it (sealed to
    this hospital's box key on the chain: the gateway's `pseudonym-key`), written to the home;
    the member that gave it."""
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    from medledger.exchange.client import ExchangeError

    refused = []
    for member in members:
        try:
            answer, _ = client.post(member, "pseudonym-key", {})
            sealed = base64.b64decode(str(answer.get("sealed", "")), validate=True)
            key = SealedBox(PrivateKey(node.config.box_key())).decrypt(sealed)
        except ExchangeError as exc:
            refused.append(f"{member}: {exc.reason}")
            continue
        except (ValueError, CryptoError):
            refused.append(f"{member}: its answer does not open with our box key")
            continue
        if len(key) == 32:
            path = node.config.home / "keys" / "pseudonym.key"
            write_secret(path, key.hex() + "\n", overwrite=True)
            return member
        refused.append(f"{member}: the pseudonym key is not 32 bytes")
    raise RecoveryError("no member gave the pseudonym key: " + "; ".join(refused))


def recover(node: Node, client: ExchangeClient, *, timeout: float = 600.0) -> RecoveryReport:
    """Steps 1 to 6 above for the hospital of `node` (a fresh home, keygen'd, its org rebound
    to its keys by the members' vote), over `client` (its exchange client)."""
    report = RecoveryReport(node.config.org)
    report.rebind = wait_for_rebind(node, timeout)
    kek, backup_key, collected = recover_keys(node, client, report)
    install_keys(node, kek, backup_key)
    report.pseudonym_from = fetch_pseudonym_key(node, client, sorted(collected.good))
    from medledger.node.replicas import (
        empty_lost_key_trash_later,
        replica_peers,
        restore_vault,
    )

    peers = replica_peers(node.engine, node.config.org)  # the chain's choice, as at every node
    report.restore = restore_vault(
        node.config.home, backup_key, kek, client, peers, engine=node.engine
    )
    if report.restore.complete:  # what the lost key left in the peers' trash is not needed
        empty_lost_key_trash_later(node.config.home, peers)
    try:
        report.escrow = exchange_escrow.deposit(node, client, kek, backup_key)
    except Exception as exc:  # noqa: BLE001 - the vault is back; the report says what to redo
        report.escrow_error = f"{type(exc).__name__}: {exc}"
    return report
