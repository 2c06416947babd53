"""What every part of the sync agent works with: the node, its vault, the exchange client,
the policy and the agent's store. The parts (planner, prefetch, delivery, erasure) are mixins
of `SyncAgent`; this base names the attributes they share, so each part reads on its own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medledger.exchange.client import ExchangeClient
    from medledger.exchange.policy import Policy
    from medledger.exchange.sync.store import SyncStore
    from medledger.ledger.results import BlockRecord
    from medledger.node import Node
    from medledger.vault import Vault


class AgentBase:
    """The attributes `SyncAgent.__init__` sets, and the methods one part calls on another."""

    node: Node
    vault: Vault
    client: ExchangeClient
    policy: Policy
    store: SyncStore
    org: str
    _wake: threading.Event
    _stop: threading.Event
    _latest: BlockRecord | None  # the last block committed (the planner reads it first)

    if TYPE_CHECKING:

        def _referral(self, ref: int) -> dict[str, Any] | None: ...  # planner

        def store_copies(self, records: list[Any]) -> int: ...  # prefetch
