"""Fixtures shared by every test folder: a sandbox consortium on the solo engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medledger.node import Node
from medledger.provisioning import create_consortium


@pytest.fixture
def consortium(tmp_path: Path) -> list[Path]:
    """Three hospitals on one solo ledger; returns their homes."""
    return create_consortium(
        tmp_path / "net", 3, engine="solo", genesis_time_ms=int(time.time() * 1000)
    )


@pytest.fixture
def node(consortium: list[Path]) -> Iterator[Node]:
    """The first hospital's node, blocks cut on demand (deterministic)."""
    with Node.open(consortium[0]) as n:
        yield n


@pytest.fixture(scope="session")
def cometbft_binary() -> Path:
    """The pinned CometBFT that `make test` builds; its absence is a failure, never a skip."""
    from medledger.consensus.cometbft import testnet

    try:
        return Path(testnet.cometbft_binary())
    except testnet.TestnetError as exc:
        pytest.fail(f"CometBFT is not built ({exc}): run `make cometbft` (make test does)")
