"""Which of the mempool's txs a proposer puts in its block, and in what order.

CometBFT hands PrepareProposal the txs of this node's mempool in the order they reached it.
One signer's txs can reach it out of nonce order (gossip takes several routes), and a nonce
may skip (a tx needs `nonce > last`, not `last + 1`): proposing nonce n + 1 before n, or
without n, spends n + 1 and makes n invalid for ever, so n is lost though every validator
accepted it. A proposer therefore:

1. puts each signer's txs in nonce order, in the places that signer's txs held (the other
   txs keep theirs);
2. holds back a signer's txs from the first one whose nonce leaves a gap after the
   committed nonce (and after that signer's txs it proposes), for at most `HOLD_HEIGHTS`
   heights, so that the missing tx can arrive; then proposes them anyway, since a client may
   have signed a tx it never sent.

This is the proposer's own policy, not a validity rule: ProcessProposal accepts any order,
a block executes the txs it holds, and replay is unchanged. The held txs stay in
CometBFT's mempool and are offered again at the next height.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from medledger.ledger.tx import Tx

HOLD_HEIGHTS = 3  # a gap is waited on for at most this many heights of this proposer


class GapHold:
    """The height at which this proposer first held back each gapped tx (by tx id).

    Only the txs still in the mempool are remembered: each call forgets the others."""

    def __init__(self) -> None:
        self.since: dict[bytes, int] = {}

    def order(
        self,
        txs: Sequence[bytes],
        decoded: Sequence[Tx | None],
        last_nonce: Callable[[bytes], int],
        height: int,
    ) -> list[bytes]:
        """`txs` as the block proposed at `height` should hold them (see the module doc).

        `decoded[i]` is `txs[i]` decoded, or None when it does not decode (kept in place:
        the block's simulation refuses it); `last_nonce(signer)` is the committed nonce."""
        by_signer: dict[bytes, list[int]] = {}
        for i, tx in enumerate(decoded):
            if tx is not None:
                by_signer.setdefault(tx.signer, []).append(i)
        placed: list[bytes | None] = list(txs)
        since: dict[bytes, int] = {}
        for signer, positions in by_signer.items():
            in_order = sorted(positions, key=lambda i: _nonce(decoded[i]))  # stable
            expected = last_nonce(signer) + 1
            kept: list[int] = []
            for i in in_order:
                tx = decoded[i]
                assert tx is not None
                if tx.nonce > expected:
                    first = self.since.get(tx.id, height)
                    if height - first < HOLD_HEIGHTS:
                        since[tx.id] = first
                        break  # this one and the signer's later nonces wait
                kept.append(i)
                expected = max(expected, tx.nonce + 1)
            for slot, i in zip(positions, kept + [-1] * (len(positions) - len(kept)), strict=True):
                placed[slot] = txs[i] if i >= 0 else None
        self.since = since
        return [tx for tx in placed if tx is not None]


def _nonce(tx: Tx | None) -> int:
    assert tx is not None
    return tx.nonce
