"""The wallet resends a tx that a BFT proposer dropped for seeing a later nonce first."""

from __future__ import annotations

from typing import Any

from medledger.consensus.engine import Committed, Submitted
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import TxResult
from medledger.ledger.tx import decode_tx
from medledger.node.wallet import Wallet


class DroppingEngine:
    """Accepts every tx at CheckTx, but loses the first one: a later nonce committed instead."""

    def __init__(self) -> None:
        self.nonce = 0
        self.committed: dict[bytes, int] = {}
        self.sent: list[int] = []

    def submit(self, tx: bytes) -> Submitted:
        decoded = decode_tx(tx)
        self.sent.append(decoded.nonce)
        if len(self.sent) == 1:
            self.nonce = decoded.nonce + 1  # someone else's n+1 went first: n can never commit
        else:
            self.nonce = decoded.nonce
            self.committed[decoded.id] = decoded.nonce
        return Submitted(decoded.id, TxResult(0))

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        if tx_id in self.committed:
            return Committed(tx_id, 1, 0, TxResult(0))
        raise TimeoutError

    def query(self, path: str, data: Any = None) -> Any:
        if path == "ledger/nonce":
            return self.nonce
        if path == "ledger/tx":
            return {"height": 1} if data["id"] in self.committed else None
        raise AssertionError(path)


def test_a_dropped_tx_is_sent_again_with_a_fresh_nonce() -> None:
    engine = DroppingEngine()
    wallet = Wallet(SigningKey.generate(), "c", engine)  # type: ignore[arg-type]
    committed = wallet.send("identity.revoke", {"practitioner": "x"}, timeout=30)
    assert committed.result.ok
    assert engine.sent == [1, 3]  # nonce 2 was taken by the tx that overtook ours


class SharedKeyEngine:
    """Another process signs with the same key: nonces 1..3 are already in the mempool."""

    def __init__(self) -> None:
        self.taken = {1, 2, 3}
        self.sent: list[int] = []

    def submit(self, tx: bytes) -> Submitted:
        decoded = decode_tx(tx)
        self.sent.append(decoded.nonce)
        if decoded.nonce <= max(self.taken):
            return Submitted(decoded.id, TxResult(5, "nonce already used"))
        return Submitted(decoded.id, TxResult(0))

    def query(self, path: str, data: Any = None) -> Any:
        assert path == "ledger/nonce"
        return 0  # nothing committed yet: the other process's txs still wait in the mempool


def test_a_nonce_taken_by_another_process_is_skipped() -> None:
    engine = SharedKeyEngine()
    wallet = Wallet(SigningKey.generate(), "c", engine)  # type: ignore[arg-type]
    submitted = wallet.submit("identity.revoke", {"practitioner": "x"})
    assert submitted.accepted
    assert engine.sent[0] == 1 and engine.sent[-1] > 3
    assert engine.sent == sorted(engine.sent)  # nonces only ever rise
