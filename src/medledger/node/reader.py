"""Reading a solo ledger's committed state beside a process that holds it and serves nothing.

A solo ledger has one writer (core.py). A running node or sandbox serves it to the other
processes (`Node.open` then gives them a `SoloClient` that submits through it); a one-shot
command holds it without serving, and a command run meanwhile would stop with `LedgerBusy`.
Commands that only *read* the chain (`backup status`, `backup restore`) use `open_node`: a
Node either way, at worst over a read-only `SoloClient` (submitting through it fails).
"""

from __future__ import annotations

from pathlib import Path

from medledger.consensus.solo_shared import SoloClient
from medledger.contracts import default_registry
from medledger.node.config import load_config
from medledger.node.core import LedgerBusy, Node


def open_node(home: Path) -> Node:
    """The hospital's node for reading the chain: its own engine, the running producer's
    (through its socket), or a read-only `SoloClient` beside a one-shot writer."""
    try:
        return Node.open(home)
    except LedgerBusy:
        config = load_config(home)
        return Node(config, None, SoloClient(config.ledger_db, default_registry(), None))
