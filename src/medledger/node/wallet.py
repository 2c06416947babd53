"""A signer that talks to an engine: builds, signs and submits txs with fresh nonces.

Hospitals' nodes, the CLI and tests all send txs through a Wallet, so nonce handling lives in
one place: the next nonce is one above both the chain's last and the last this wallet used,
which keeps working while earlier txs of the same signer still wait in the mempool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from medledger.consensus.engine import Committed, Engine, Submitted
from medledger.contracts import queries
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import sign_tx

_MAX_RESENDS = 2
_NONCE_RETRIES = 8
_LOSS_CHECK_S = 3.0


OnSigned = Callable[[bytes], None]


class TxRejected(Exception):
    """The network refused a tx: at CheckTx, or when its block executed it."""

    def __init__(self, kind: str, code: int, log: str, stage: str) -> None:
        super().__init__(f"{kind} refused at {stage} (code {code}): {log}")
        self.kind = kind
        self.code = code
        self.log = log
        self.stage = stage


class Wallet:
    def __init__(self, key: SigningKey, chain_id: str, engine: Engine) -> None:
        self.key = key
        self.chain_id = chain_id
        self.engine = engine
        self._last_nonce = 0
        self._lock = threading.Lock()

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    def _next_nonce(self) -> int:
        on_chain = queries.nonce(self.engine, self.key.public_key)
        self._last_nonce = max(self._last_nonce, on_chain) + 1
        return self._last_nonce

    def submit(
        self, kind: str, body: dict[str, Any], *, on_signed: OnSigned | None = None
    ) -> Submitted:
        """Sign and submit; nonces reach the mempool in order, whatever the threads do.
        `on_signed(tx)` sees each signed tx (the last one is the tx submitted)."""
        return self._submit(kind, body, on_signed)[0]

    def submit_nonce(
        self, kind: str, body: dict[str, Any], *, on_signed: OnSigned | None = None
    ) -> tuple[Submitted, int]:
        """`submit`, and the nonce of the tx submitted (not decoded again from the tx)."""
        return self._submit(kind, body, on_signed)

    def _submit(
        self, kind: str, body: dict[str, Any], on_signed: OnSigned | None = None
    ) -> tuple[Submitted, int]:
        """Sign with the next nonce and submit.

        Another process may sign with the same key (a hospital's node and an operator's CLI
        command both use the organisation key), so a nonce can be taken by a tx this wallet
        never saw, still in the mempool. Nonces need only rise, so on such a refusal the
        wallet skips ahead, further each time, and signs again: the refused tx never ran.
        """
        skip = 1
        with self._lock:
            for _ in range(_NONCE_RETRIES):
                nonce = self._next_nonce()
                tx = sign_tx(self.key, self.chain_id, kind, body, nonce)
                if on_signed is not None:
                    on_signed(tx)
                submitted = self.engine.submit(tx)
                if submitted.accepted:
                    return submitted, nonce
                if submitted.check.code != Code.BAD_NONCE:
                    self._last_nonce -= 1  # the nonce was not spent
                    return submitted, nonce
                self._last_nonce += skip
                skip *= 2
            return submitted, nonce

    def send(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        timeout: float = 30.0,
        on_signed: OnSigned | None = None,
    ) -> Committed:
        """Sign, submit and wait for the commit; raise TxRejected when refused.

        On a BFT network a validator may receive nonce n+1 before n and then drop n, which can
        never commit once n+1 has. Such a tx is detected (the chain's nonce passed it and it is
        not committed) and sent again with a fresh nonce: it cannot have executed.
        `on_signed(tx)` is called with each signed tx before it is submitted, so a caller can
        keep it durably and later learn its fate (TxRejected means none of them committed;
        TimeoutError means the last one still may).
        """
        deadline = time.monotonic() + timeout
        for _ in range(_MAX_RESENDS + 1):
            submitted, nonce = self._submit(kind, body, on_signed)
            if not submitted.accepted:
                raise TxRejected(kind, submitted.check.code, submitted.check.log, "check")
            committed = self._await(submitted.tx_id, nonce, deadline)
            if committed is None:
                continue  # dropped: send again
            if not committed.result.ok:
                raise TxRejected(kind, committed.result.code, committed.result.log, "execution")
            return committed
        raise TimeoutError(f"{kind}: dropped {_MAX_RESENDS + 1} times by the network")

    def send_message(
        self, msg: Any, *, timeout: float = 30.0, on_signed: OnSigned | None = None
    ) -> Committed:
        """`send` a contract's message dataclass (e.g. `erasure.Request(...)`): its kind and
        body come from the contract's own declaration (contracts.messages)."""
        from medledger.contracts.messages import body_of, kind_of

        return self.send(kind_of(msg), body_of(msg), timeout=timeout, on_signed=on_signed)

    def submit_message(self, msg: Any) -> Submitted:
        """`submit` a contract's message dataclass, without waiting for its commit."""
        from medledger.contracts.messages import body_of, kind_of

        return self.submit(kind_of(msg), body_of(msg))

    def _await(self, tx_id: bytes, nonce: int, deadline: float) -> Committed | None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"tx {tx_id.hex()[:16]} not committed in time")
            try:
                return self.engine.wait_for_commit(tx_id, min(_LOSS_CHECK_S, remaining))
            except TimeoutError:
                on_chain = queries.nonce(self.engine, self.key.public_key)
                if on_chain >= nonce and queries.tx_location(self.engine, tx_id) is None:
                    return None
