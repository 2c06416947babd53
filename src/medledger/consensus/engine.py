"""The one interface every consensus engine offers to the rest of medledger.

The solo engine (in-process block producer) and the CometBFT engine (ABCI socket server
driven by CometBFT processes) both implement it, so the exchange, API and CLI never care
which one orders the transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from medledger.ledger.results import BlockRecord, TxResult
from medledger.ledger.store import StateView


@dataclass(frozen=True)
class Submitted:
    """What submitting a tx gives back: its id and the CheckTx verdict."""

    tx_id: bytes
    check: TxResult

    @property
    def accepted(self) -> bool:
        return self.check.code == 0


@dataclass(frozen=True)
class Committed:
    """A tx once a block containing it has been committed."""

    tx_id: bytes
    height: int
    index: int
    result: TxResult


class NoLocalReplica(RuntimeError):
    """A committed read view was asked of an engine that only reaches a remote node (its RPC)."""


class Engine(Protocol):
    """Submit txs, wait for their commit, read state, follow committed blocks."""

    def submit(self, tx: bytes) -> Submitted:
        """Run CheckTx on the tx and, when accepted, hand it to consensus."""
        ...

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        """Block until the tx is in a committed block; raise TimeoutError otherwise."""
        ...

    def query(self, path: str, data: Any = None) -> Any:
        """Read committed state through the application's query handlers."""
        ...

    def height(self) -> int:
        """Last committed height."""
        ...

    def read_view(self) -> AbstractContextManager[StateView]:
        """A read-only view of the last committed state, steady against a concurrent commit
        (the engine takes whatever lock it needs inside); an engine with no local replica
        raises `NoLocalReplica`."""
        ...

    def blocks(self, from_height: int = 1, follow: bool = False) -> Iterator[BlockRecord]:
        """Committed blocks from a height; with follow=True, keep yielding new ones."""
        ...

    def close(self) -> None: ...
