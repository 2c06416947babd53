"""The solo engine: txs submitted from several threads are committed in signed blocks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from medledger.ledger.keys import SigningKey, verify
from medledger.node import LedgerBusy, Node


def test_auto_mode_commits_concurrent_submissions_and_streams_blocks(
    consortium: list[Path],
) -> None:
    with Node.open(consortium[0], serve=True, interval=0.05) as node:
        follower = node.engine.blocks(1, follow=True)
        errors: list[Exception] = []

        def register(i: int) -> None:
            try:
                body = {
                    "practitioner": f"p{i}",
                    "key": SigningKey.generate().public_key,
                    "roles": ["nurse"],
                }
                node.wallet.send("identity.register", body, timeout=20)
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=register, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(node.engine.query("identity/practitioners", {})) == 20
        assert node.app is not None
        seen = 0
        for record in follower:
            seen += len(record.txs)
            assert verify(node.app.genesis.solo_key, record.header_bytes, record.signature)
            if seen == 20:
                break
        assert seen == 20
        height = node.engine.height()
    # No empty blocks were made while nothing waited.
    assert height <= 20


def test_a_second_writer_is_refused_while_the_ledger_is_open(consortium: list[Path]) -> None:
    with Node.open(consortium[0]), pytest.raises(LedgerBusy, match="in use"):
        Node.open(consortium[1])


def test_wait_for_an_unknown_tx_says_so(node: Node) -> None:
    with pytest.raises(LookupError, match="neither pending nor committed"):
        node.engine.wait_for_commit(b"\x00" * 32, timeout=1)


def test_a_store_fault_stops_the_engine_loudly(consortium: list[Path], monkeypatch) -> None:
    with Node.open(consortium[0], serve=True, interval=0.02) as node:
        assert node.app is not None

        def broken(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(node.app.store, "commit", broken)
        body = {"practitioner": "p", "key": SigningKey.generate().public_key, "roles": ["nurse"]}
        with pytest.raises((RuntimeError, TimeoutError)) as err:
            node.wallet.send("identity.register", body, timeout=5)
        assert "stopped producing blocks" in str(err.value)
        with pytest.raises(RuntimeError, match="restart the node"):
            node.wallet.submit("identity.register", body)
        monkeypatch.undo()
