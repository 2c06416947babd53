"""Crypto-shredding a patient at one hospital, and carrying out an erasure request.

`shred` is the mechanism: destroy the patient's key in the vault (constant time: from then on
nothing of theirs can be decrypted, nor any chain entry linked to a plaintext), attest it on
the chain with `records.shredded`, then purge the ciphertexts.

`carry_out` is the rule: a patient's erasure request lives in the `erasure` contract, which
decides per holder. A custodian whose care records are under legal retention (20 years for
French hospital files) is refused with that reason and shreds nothing; a holder of copies
shreds them and attests before the deadline.
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
        # The vault erases a patient as a whole: copies cannot go while care records stay.
        return ErasureOutcome(
            request,
            "refused",
            f"care records under legal {custody['reason']}; copies held with them stay too",
            None,
        )
    result = shred(node, vault, pid)
    node.wallet.send(
        "erasure.attest",
        {"request": request, "digest": b"", "records": result.records + result.copies},
    )
    return ErasureOutcome(request, "erased", "", result)
