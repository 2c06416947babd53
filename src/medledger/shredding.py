"""Crypto-shredding a patient at one hospital, and carrying out an erasure request.

`shred` is the mechanism: destroy the patient's key in the vault (constant time: from then on
nothing of theirs can be decrypted, nor any chain entry linked to a plaintext), attest it on
the chain with `records.shredded`, then purge the ciphertexts.

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

from dataclasses import dataclass
from typing import Any

from medledger.node import Node
from medledger.vault import Vault


@dataclass(frozen=True)
class ShredResult:
    pid: str
    records: int
    copies: int
    height: int
    purged_rows: int


@dataclass(frozen=True)
class ErasureOutcome:
    request: int
    status: str  # "erased", "refused", "nothing-held"
    reason: str
    shred: ShredResult | None


def shred(node: Node, vault: Vault, pid: str) -> ShredResult:
    receipt = vault.erase(pid)
    committed = node.wallet.send(
        "records.shredded",
        {
            "pid": pid,
            "digest": receipt.digest,
            "records": receipt.records_shredded,
            "copies": receipt.copies_shredded,
        },
    )
    purged = vault.purge_pending()
    return ShredResult(
        pid,
        receipt.records_shredded,
        receipt.copies_shredded,
        committed.height,
        purged.rows_deleted,
    )


def shred_copies(node: Node, vault: Vault, pid: str, request: int) -> ShredResult:
    """Shred every copy held of other custodians' records of the patient, keep the own
    records, and attest erasure request `request` with the receipt's digest."""
    receipt = vault.erase_copies(pid)
    committed = node.wallet.send(
        "erasure.attest",
        {"request": request, "digest": receipt.digest, "records": receipt.copies_shredded},
    )
    purged = vault.purge_pending()
    return ShredResult(pid, 0, receipt.copies_shredded, committed.height, purged.rows_deleted)


def carry_out(
    node: Node, vault: Vault, pid: str, evidence_hash: bytes = b"", taken_by: str = ""
) -> ErasureOutcome:
    """File the request if none exists (on the patient's behalf, with the evidence's hash and
    `taken_by`, the practitioner who took it), then do what the erasure contract says this
    hospital must do."""
    status: dict[str, Any] | None = node.engine.query("erasure/status", {"pid": pid})
    if status is None:
        if not evidence_hash:
            raise ValueError(
                "no erasure request is on the chain for this patient: give --evidence FILE "
                "(the patient's signed request) to file one on their behalf"
            )
        body = {"pid": pid, "evidence_hash": evidence_hash, "taken_by": taken_by}
        node.wallet.send("erasure.request", body)
        status = node.engine.query("erasure/status", {"pid": pid})
        assert status is not None
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
    node.wallet.send(
        "erasure.attest",
        {"request": request, "digest": b"", "records": result.records + result.copies},
    )
    return ErasureOutcome(request, "erased", "", result)
