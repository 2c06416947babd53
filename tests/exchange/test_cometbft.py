"""The exchange on the four-hospital CometBFT network: each hospital a `medledger node run`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import orjson
import pytest

from medledger.consensus.cometbft import processes
from medledger.exchange.client import ExchangeClient
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium
from medledger.vault import Vault

from .conftest import EVIDENCE, A, B, bundles, wait_for

pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("cometbft_binary"),  # fails if CometBFT is not built
]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[list[Path]]:
    directory = tmp_path / "net"
    homes = create_consortium(
        directory,
        4,
        engine="cometbft",
        chain_id="medledger-exchange-test",
        block_time_ms=200,
        genesis_time_ms=int(time.time() * 1000),
    )
    processes.up(directory, timeout=60)
    try:
        yield homes
    finally:
        processes.down(directory)


def test_written_at_a_reaches_b_through_the_real_network(network: list[Path]) -> None:
    home_a, home_b = network[0], network[1]
    node_a, node_b = Node.open(home_a), Node.open(home_b)  # clients of the running nodes
    vault_a = Vault.open(node_a.config.vault_config())
    vault_b = Vault.open(node_b.config.vault_config())  # read beside B's node process
    client = ExchangeClient(node_b)
    try:
        result = Ingestor(node_a, vault_a).ingest_bytes(orjson.dumps(bundles(1)[0]), "p.json")
        assert result.rejections == []
        (pid,) = result.pids
        node_a.wallet.send(
            "consent.grant",
            {
                "pid": pid,
                "grantee": f"org:{B}",
                "categories": ["*"],
                "purpose": "treatment",
                "start_ms": 0,
                "evidence_hash": EVIDENCE,
                "channel": "portal",  # the patient asked on A's portal
            },
        )
        # B's node (another process, its own replica) fetched the key and every record.
        wait_for(lambda: len(vault_b.records_of(pid)) == len(result.rids), 60, "prefetch at B")
        trail = node_a.engine.query("access/of_patient", {"pid": pid})
        assert {(e["actor_org"], e["custodian"], e["outcome"]) for e in trail} == {
            (A, A, "granted"),  # A's registration of the records
            (B, A, "granted"),
        }
        # B's node streams the events about its new patient.
        # (B's own escrow deposit, made when its node started, may come first: about no patient.)
        about_patients = (
            e for e in client.events(B, from_height=1, timeout=10) if "pid" in e["data"]["attrs"]
        )
        seen = list(islice(about_patients, 3))
        assert seen
        assert {e["event"] for e in seen} <= {
            "record.registered",
            "consent.granted",
            "patient.acted_for",
        }
        assert all(e["data"]["attrs"]["pid"] == pid for e in seen)
    finally:
        client.close()
        vault_a.close()
        vault_b.close()
        node_a.close()
        node_b.close()
