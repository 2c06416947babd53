"""The validation workers are started once and kept: a later batch reuses them, and one that
finds them dead (a worker killed between two batches) still ingests every file."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.ingest import Ingestor, _validation_pool
from medledger.vault import Vault


@pytest.fixture
def hospital(consortium: list[Path]) -> Iterator[tuple[Node, Vault, Ingestor]]:
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault, Ingestor(node, vault)


def _inputs(first: int, count: int) -> list[tuple[bytes, str]]:
    bundles = generate(first + count, ["chu-lyon", "aphp-paris"], seed=31)["chu-lyon"]
    return [(orjson.dumps(b), f"b{i}.json") for i, b in enumerate(bundles)][first:]


def test_a_second_batch_reuses_the_workers_and_survives_a_dead_one(
    hospital: tuple[Node, Vault, Ingestor],
) -> None:
    _, vault, ingestor = hospital
    first = list(ingestor.ingest_many(_inputs(0, 2), workers=2))
    pool = _validation_pool(2)
    assert _validation_pool(2) is pool  # kept for the next batch
    assert all(not r.rejections for r in first)

    victim = next(iter(pool._processes))  # a worker dies between two batches
    os.kill(victim, signal.SIGKILL)
    second = list(ingestor.ingest_many(_inputs(2, 3), workers=2))

    assert [r.source for r in second] == ["b2.json", "b3.json", "b4.json"]
    assert all(not r.rejections and r.accepted for r in second)
    assert vault.provisional() == []
    fresh = _validation_pool(2)  # the broken pool is replaced for the next batch
    assert fresh is not pool and not fresh._broken
