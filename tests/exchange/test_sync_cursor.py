"""The sync agent's cursor: a block with nothing for the agent moves it in memory only."""

from __future__ import annotations

from pathlib import Path

from medledger.exchange.sync.store import SyncStore


def test_an_empty_block_moves_the_cursor_without_a_transaction(tmp_path: Path) -> None:
    store = SyncStore(tmp_path / "sync.db", b"k" * 32)
    with store.tx() as db:  # block 3 planned a job: its cursor is stored with it
        db.execute("INSERT INTO cursor (id, height) VALUES (1, 3)")
    store.pass_block(4)
    store.pass_block(5)
    assert store.cursor() == 5
    store.close()
    # After a crash the agent resumes after the last block that wrote something: blocks 4
    # and 5 are planned again (they wrote nothing, so nothing is planned twice).
    reopened = SyncStore(tmp_path / "sync.db", b"k" * 32)
    assert reopened.cursor() == 3
    reopened.pass_block(2)  # never backwards
    assert reopened.cursor() == 3
