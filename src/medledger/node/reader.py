"""Reading a solo ledger's committed state beside the process that writes it.

A solo ledger has one writer (the running node or sandbox holds its lock, core.py), and a
command run meanwhile would otherwise stop with `LedgerBusy`. Commands that only *read* the
chain (`backup status`, `backup restore`) use `LedgerReader`: the contracts' queries over the
last committed state in the ledger file (SQLite lets readers in beside the writer), nothing
submitted. `open_node` gives such commands a Node either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medledger.contracts import default_registry
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView, Store
from medledger.node.config import load_config
from medledger.node.core import LedgerBusy, Node


class LedgerReader:
    """The query side of an engine over a ledger file another process writes."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.registry = default_registry()

    def query(self, path: str, data: Any = None) -> Any:
        view = StateView(self.store)
        fn = self.registry.query(view, path)
        if fn is None:
            raise TxError(Code.NOT_FOUND, f"unknown query path {path!r}")
        return fn(view, data or {})

    def height(self) -> int:
        return self.store.height

    def close(self) -> None:
        self.store.close()


def open_node(home: Path) -> Node:
    """The hospital's node for reading the chain: its own engine, or beside a running solo
    node a `LedgerReader` (submitting a tx through it fails: it has no producer)."""
    try:
        return Node.open(home)
    except LedgerBusy:
        config = load_config(home)
        return Node(config, None, LedgerReader(config.ledger_db))  # type: ignore[arg-type]
