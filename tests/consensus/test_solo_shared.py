"""One solo ledger, several processes: the running node serves it, another hospital's node
submits through its socket and reads the ledger file beside it (consensus/solo_shared.py).
The second node here lives in the same process, but it goes through the same socket and its
own SQLite connection, exactly as another process would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medledger.consensus.solo_shared import ProducerUnavailable, SoloClient, socket_path
from medledger.contracts import default_registry
from medledger.ledger.app import nonce_key
from medledger.ledger.keys import SigningKey
from medledger.node import LedgerBusy, Node
from medledger.node.config import load_config
from medledger.node.health import HealthProbe


def _register(node: Node, practitioner: str) -> None:
    body = {
        "practitioner": practitioner,
        "key": SigningKey.generate().public_key,
        "roles": ["nurse"],
    }
    node.wallet.send("identity.register", body, timeout=20)


def _practitioners(node: Node) -> set[str]:
    return {p["id"] for p in node.engine.query("identity/practitioners", {})}


def test_a_second_node_submits_through_the_running_producer(consortium: list[Path]) -> None:
    with Node.open(consortium[0], serve=True, interval=0.02) as producer:
        served = socket_path(producer.config.ledger_db)
        assert stat.S_IMODE(os.stat(served).st_mode) == 0o600
        with Node.open(consortium[1], serve=True) as beside:
            assert beside.app is None and isinstance(beside.engine, SoloClient)
            follower = beside.engine.blocks(producer.engine.height() + 1, follow=True)
            assert _practitioners(beside) == set()  # read (and cached) before the commit

            _register(beside, "nurse-b")
            _register(producer, "nurse-a")

            # Both see both txs: the client's cache does not hide the producer's commits.
            assert _practitioners(beside) == {"nurse-a", "nurse-b"}
            assert _practitioners(producer) == {"nurse-a", "nurse-b"}
            assert beside.engine.height() == producer.engine.height()
            with beside.engine.read_view() as view:
                assert view.get(nonce_key(beside.org_key.public_key)) == 1  # its one tx
            assert len(next(follower).txs) == 1  # the block with nurse-b's registration

            # A tx the producer refuses comes back refused, with its reason.
            bad = beside.wallet.submit("identity.register", {"practitioner": "x"})
            assert not bad.accepted and "key" in bad.check.log
            assert beside.health.status().unavailable == ""

            # The producer gone: submitting says so, naming the socket; reading still works;
            # the node's front doors refuse (503) with the reason.
            producer.close()
            assert not served.exists()
            with pytest.raises(ProducerUnavailable, match="no process produces"):
                beside.engine.submit(b"anything")
            assert _practitioners(beside) == {"nurse-a", "nurse-b"}
            fresh = HealthProbe(beside)  # the node's own probe reuses a look for 1 s
            assert "producer" in fresh.status().unavailable


def test_a_reader_beside_a_one_shot_writer_cannot_submit(consortium: list[Path]) -> None:
    with Node.open(consortium[0]):  # a one-shot command: it serves no one
        with pytest.raises(LedgerBusy, match="one-shot"):
            Node.open(consortium[1], serve=True)
        config = load_config(consortium[1])
        reader = SoloClient(config.ledger_db, default_registry(), None)
        try:
            assert reader.height() >= 0 and not reader.submits
            with pytest.raises(ProducerUnavailable, match="only reads"):
                reader.submit(b"anything")
        finally:
            reader.close()


def test_the_first_node_after_the_producer_stops_produces_itself(consortium: list[Path]) -> None:
    with Node.open(consortium[0], serve=True, interval=0.02) as first:
        _register(first, "nurse-a")
    with Node.open(consortium[1], serve=True, interval=0.02) as second:
        assert second.app is not None  # it holds the ledger now
        _register(second, "nurse-b")
        assert _practitioners(second) == {"nurse-a", "nurse-b"}


def test_a_sandbox_deeper_than_a_socket_address_is_served_too(tmp_path: Path) -> None:
    from medledger.provisioning import create_consortium

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    homes = create_consortium(deep / "net", 2, genesis_time_ms=1)
    with Node.open(homes[0], serve=True, interval=0.02) as producer:
        assert len(os.fsencode(socket_path(producer.config.ledger_db))) > 108
        with Node.open(homes[1]) as beside:
            assert isinstance(beside.engine, SoloClient)
            _register(beside, "nurse-b")
            assert _practitioners(producer) == {"nurse-b"}
