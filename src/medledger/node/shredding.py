"""Crypto-shredding a patient at one hospital, and carrying out an erasure request.

`shred` is the mechanism: destroy the patient's key in the vault (constant time: from then on
nothing of theirs can be decrypted, nor any chain entry linked to a plaintext), drop the
replica of that wrapped key at every replica peer (signed receipts; a peer that is down gets
the drop from the replication journal when it returns), attest it on the chain with
`records.shredded` naming the peers that dropped it and those pending, purge that wrapped key
from the peers' trash with the statement now committed (a drop alone is kept there for
custody_grace_days: node/custody.py), then purge the ciphertexts (whose drops follow through
the journal).

`shred_copies` shreds only the copies held of other hospitals' records (their key sets, see
vault/keys.py), apart from this hospital's own records, and attests with the vault's receipt
digest: no `records.shredded`, which would say that the own records were erased.

`carry_out` is the rule: a patient's erasure request lives in the `erasure` contract, which
decides per holder. A custodian whose care records are under legal retention (20 years for
French hospital files) is refused with that reason for them and keeps them; the copies it
holds of other hospitals' records are shredded apart and attested, like every holder of
copies must before the deadline.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import orjson

from medledger.contracts import erasure, queries
from medledger.contracts.records import Shredded
from medledger.node import Node
from medledger.node.replicas import drop_erased, forget_purge, purge_erased, purge_later
from medledger.node.wallet import TxRejected
from medledger.vault import ErasureReceipt, Vault
from medledger.vault.replication import item_name

MAX_REASON = 500


@dataclass(frozen=True)
class ShredResult:
    pid: str
    records: int
    copies: int
    height: int
    purged_rows: int
    #: peers where the wrapped key is purged, trash included; and those still pending
    #: (retried by the running node's replicator)
    key_purged: tuple[str, ...] = ()
    key_purge_pending: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErasureOutcome:
    request: int
    status: str  # "erased", "refused", "nothing-held", "pending" (filed, not yet in effect)
    reason: str
    shred: ShredResult | None


def shred(node: Node, vault: Vault, pid: str) -> ShredResult:
    since = vault.journal_head()
    receipt = vault.erase(pid)
    height, key_purged, key_pending = state_shredded(node, vault, pid, receipt, since)
    purged = vault.purge_pending()
    return ShredResult(
        pid,
        receipt.records_shredded,
        receipt.copies_shredded,
        height,
        purged.rows_deleted,
        tuple(key_purged),
        tuple(key_pending),
    )


def state_shredded(
    node: Node, vault: Vault, pid: str, receipt: ErasureReceipt, since: int
) -> tuple[int, list[str], list[str]]:
    """After `vault.erase(pid)` (its `receipt`; `since`: the journal's head before it): drop
    the wrapped key at the replica peers, attest `records.shredded` naming who confirmed,
    then purge that key at them, trash included, with the statement committed. The purge is
    noted in the home first, so a crash after the statement still purges (the replicator
    retries). The height of the statement, the peers purged and those pending."""
    dropped, pending = drop_erased(node, vault, since, (item_name("key", pid),))
    purge_later(node, pid, [*dropped, *pending])
    try:
        committed = node.wallet.send_message(
            Shredded(
                pid=pid,
                digest=receipt.digest,
                records=receipt.records_shredded,
                copies=receipt.copies_shredded,
                replicas_dropped=dropped,
                replicas_pending=pending,
            )
        )
    except TxRejected:
        forget_purge(node, pid)
        raise
    key_purged, key_pending = purge_erased(node, pid)
    return committed.height, key_purged, key_pending


def shred_copies(node: Node, vault: Vault, pid: str, request: int) -> ShredResult:
    """Shred every copy held of other custodians' records of the patient, keep the own
    records, and attest erasure request `request` with the receipt's digest."""
    since = vault.journal_head()
    receipt = vault.erase_copies(pid)
    dropped, pending = drop_erased(node, vault, since)  # the copies' key sets
    committed = node.wallet.send_message(
        erasure.Attest(
            request=request,
            digest=receipt.digest,
            records=receipt.copies_shredded,
            replicas_dropped=dropped,
            replicas_pending=pending,
        )
    )
    purged = vault.purge_pending()
    return ShredResult(pid, 0, receipt.copies_shredded, committed.height, purged.rows_deleted)


def carry_out(
    node: Node, vault: Vault, pid: str, evidence_hash: bytes = b"", taken_by: str = ""
) -> ErasureOutcome:
    """File the request if none exists (on the patient's behalf, with the evidence's hash and
    `taken_by`, the practitioner who took it), then do what the erasure contract says this
    hospital must do.

    A request filed on the patient's behalf is pending for the consortium's
    `on_behalf_delay_ms` (72 h): the outcome is then "pending", with when it takes effect."""
    status: dict[str, Any] | None = queries.erasure_status(node.engine, pid)
    if status is None:
        if queries.erasure_pending(node.engine, pid) is None:
            if not evidence_hash:
                raise ValueError(
                    "no erasure request is on the chain for this patient: give --evidence FILE "
                    "(the patient's signed request) to file one on their behalf"
                )
            node.wallet.send_message(
                erasure.Request(pid=pid, evidence_hash=evidence_hash, taken_by=taken_by)
            )
            status = queries.erasure_status(node.engine, pid)
        if status is None:
            pending = queries.erasure_pending(node.engine, pid)
            assert pending is not None  # filed just now, or found waiting above
            return ErasureOutcome(
                int(pending["id"]),
                "pending",
                f"pending until {_iso(int(pending['effective_ms']))}: filed on the patient's "
                "behalf, it takes effect then unless the patient's key or an earlier "
                "custodian's DPO cancels it (erasure.cancel); run this again after that time",
                None,
            )
    request = int(status["id"])
    mine = next((o for o in status["obligations"] if o["holder"] == node.config.org), None)
    if mine is None:
        return ErasureOutcome(
            request, "nothing-held", "this hospital holds nothing of theirs", None
        )
    if mine["status"] == "refused":
        return ErasureOutcome(
            request, "refused", f"care records under legal {mine['reason']}", None
        )
    if mine["status"] == "attested":
        return ErasureOutcome(request, "erased", "already attested", None)
    custody = mine.get("custody")
    if custody is not None and custody["status"] == "refused":
        # The care records stay (legal retention); the copies held with them go, apart.
        result = shred_copies(node, vault, pid, request)
        return ErasureOutcome(
            request,
            "erased",
            f"copies erased; care records kept under legal {custody['reason']}",
            result,
        )
    result = shred(node, vault, pid)
    # No digest of its own: the erasure contract takes records.shredded's.
    node.wallet.send_message(
        erasure.Attest(request=request, records=result.records + result.copies)
    )
    return ErasureOutcome(request, "erased", "", result)


@dataclass(frozen=True)
class ReinstateOutcome:
    status: str  # "reinstated", "refused", "nothing-to-do"
    reason: str  # why refused, or on what basis reinstated
    generation: int = 0


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


def reinstate_copies(
    node: Node, vault: Vault, pid: str, custodian: str, force_reason: str | None = None
) -> ReinstateOutcome:
    """Accept copies of `custodian`'s records of the patient here again, if the DPO may.

    Refused while the patient's erasure request stands, even forced: every copy must go.
    Otherwise allowed when the chain shows records of the patient that the custodian
    registered after its `records.shredded`, or forced with a reason (1 to 500 characters,
    recorded in the home's `reinstatements.jsonl`). Erased copies stay unreadable for ever.
    """
    if force_reason is not None:
        force_reason = force_reason.strip()
        if not 0 < len(force_reason) <= MAX_REASON:
            raise ValueError(
                f"--reason: say in 1 to {MAX_REASON} characters why the copies may come back "
                "although the chain shows nothing new"
            )
    request: dict[str, Any] | None = queries.erasure_status(node.engine, pid)
    if request is not None:
        return ReinstateOutcome(
            "refused", f"erasure request {request['id']} of this patient stands: no copy comes back"
        )
    if vault.is_erased(pid):
        return ReinstateOutcome(
            "refused", "the patient was erased as a whole here, not only one custodian's copies"
        )
    refused_since = vault.copies_refused(pid, custodian)
    if refused_since is None:
        return ReinstateOutcome(
            "nothing-to-do", f"copies of {custodian}'s records of this patient are not refused here"
        )
    shredded: dict[str, Any] | None = node.engine.query(
        "records/shredded", {"holder": custodian, "pid": pid}
    )
    newer: list[dict[str, Any]] = []
    if shredded is not None:
        newer = [
            e
            for e in queries.records_of_patient(node.engine, pid, custodian)
            if int(e["time"]) > int(shredded["time"])
        ]
    if newer:
        assert shredded is not None
        basis = (
            f"{len(newer)} record{'s' if len(newer) > 1 else ''} registered by {custodian} "
            f"since its shredding of {_iso(int(shredded['time']))}"
        )
    elif force_reason is not None:
        basis = f"forced by the DPO: {force_reason}"
    else:
        since = "" if shredded is None else f" of {_iso(int(shredded['time']))}"
        return ReinstateOutcome(
            "refused",
            f"the chain shows no record of {custodian}'s for this patient registered since its "
            f"shredding{since}; if you know better, give --force and --reason",
        )
    generation = vault.reinstate(pid, custodian=custodian)
    entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "pid": pid,
        "custodian": custodian,
        "copies_erased_at": refused_since.isoformat(timespec="seconds"),
        "forced": not newer,
        "basis": basis,
    }
    with open(node.config.home / "reinstatements.jsonl", "ab") as log:
        log.write(orjson.dumps(entry) + b"\n")
    return ReinstateOutcome("reinstated", basis, generation)
