"""Inclusion proofs: show that a tx (an access entry above all) is in a committed block.

A proof carries the tx bytes, its Merkle audit path, and the block header (with its
signature on the solo engine). Anyone holding the genesis can check it offline: the path
leads from the tx id to the header's tx_root, and the header is signed by the solo key (or, on
CometBFT, its app hash matches the network's header at the next height).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medledger.ledger import codec, merkle
from medledger.ledger.keys import verify
from medledger.ledger.results import BlockHeader
from medledger.ledger.store import Store


@dataclass(frozen=True)
class TxProof:
    tx: bytes
    height: int
    index: int
    path: list[tuple[str, bytes]]
    header: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "tx": self.tx.hex(),
            "tx_id": codec.sha256(self.tx).hex(),
            "height": self.height,
            "index": self.index,
            "path": [[side, h.hex()] for side, h in self.path],
            "header": self.header.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TxProof:
        return cls(
            tx=bytes.fromhex(data["tx"]),
            height=int(data["height"]),
            index=int(data["index"]),
            path=[(str(side), bytes.fromhex(h)) for side, h in data["path"]],
            header=bytes.fromhex(data["header"]),
            signature=bytes.fromhex(data["signature"]),
        )


def prove_tx(store: Store, tx_id: bytes) -> TxProof | None:
    loc = store.locate_tx(tx_id)
    if loc is None:
        return None
    height, index = loc
    record = store.block(height)
    if record is None:
        return None
    ids = [codec.sha256(t) for t in record.txs]
    return TxProof(
        tx=record.txs[index],
        height=height,
        index=index,
        path=merkle.proof(ids, index),
        header=record.header_bytes,
        signature=record.signature,
    )


def check_tx_proof(proof: TxProof, chain_id: str, solo_key: bytes = b"") -> str | None:
    """None when the proof holds; otherwise what is wrong with it."""
    try:
        header = BlockHeader.decode(proof.header)
    except Exception:
        return "header does not decode"
    if header.chain != chain_id:
        return f"header is for chain {header.chain!r}"
    if header.height != proof.height:
        return "header height differs from the proof's"
    if not merkle.verify_proof(codec.sha256(proof.tx), proof.path, header.tx_root):
        return "Merkle path does not lead to the block's tx_root"
    if solo_key and not verify(solo_key, proof.header, proof.signature):
        return "header signature does not verify against the solo key"
    return None
