"""The tx index: every committed tx is found where its block put it, also while its row
waits in the sole writer's tail, after a restart (or a crash) that lost that tail, and by a
second Store reading the file beside the writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.ledger import codec, store
from medledger.ledger.app import Application
from medledger.ledger.store import Store
from tests.support.ledger import Net, make_net, register_body, run_block


def _blocks(net: Net, app: Application, count: int, per: int = 3) -> list[bytes]:
    ids = []
    for _ in range(count):
        h = app.height + 1
        txs = [
            net.tx(net.orgs[f"h{j % 3}"], "identity.register", register_body(f"p{h}-{j}"))
            for j in range(per)
        ]
        run_block(app, txs, net.solo)
        ids += [codec.tx_id(t) for t in txs]
    return ids


def _rows(path: Path) -> int:
    reader = Store(path)
    try:
        return int(reader.execute("SELECT count(*) FROM tx_index")[0][0])
    finally:
        reader.close()


def _places(s: Store, ids: list[bytes]) -> list[tuple[int, int] | None]:
    return [s.locate_tx(i) for i in ids]


def test_every_committed_tx_is_found_while_its_row_waits_and_after_a_restart(
    tmp_path: Path,
) -> None:
    net = make_net()
    app = net.app(tmp_path / "l.db")
    ids = _blocks(net, app, store._INDEX_EVERY_BLOCKS + 5)
    expected = [(h, i) for h in range(1, app.height + 1) for i in range(3)]
    assert _places(app.store, ids) == expected
    # the last 5 blocks wait in the writer's tail: their rows are not in the file yet
    assert _rows(tmp_path / "l.db") == 3 * store._INDEX_EVERY_BLOCKS
    reader = Store(tmp_path / "l.db")  # the CLI, a solo_shared reader: from the block rows
    assert _places(reader, ids) == expected
    assert reader.tx_ids_with_prefix(ids[-1][:3]) == [ids[-1]]
    assert reader.locate_tx(b"\x00" * 32) is None
    reader.close()
    app.store._db.close()  # a crash: the tail's rows are not written
    again = net.app(tmp_path / "l.db")
    assert _places(again.store, ids) == expected
    assert again.prove(ids[-1]) is not None  # proofs read the same index
    more = _blocks(net, again, store._INDEX_EVERY_BLOCKS)
    assert again.store.locate_tx(more[-1]) == (again.height, 2)
    assert _rows(tmp_path / "l.db") == 3 * 2 * store._INDEX_EVERY_BLOCKS
    again.close()  # a clean close writes the tail's rows: the file is indexed whole
    assert _rows(tmp_path / "l.db") == len(ids) + len(more)


def test_many_txs_waiting_are_written_before_the_block_count_is_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_INDEX_EVERY_TXS", 7)
    net = make_net()
    app = net.app(tmp_path / "l.db")
    ids = _blocks(net, app, 3)
    assert _rows(tmp_path / "l.db") == 9  # the third block brought the tail to 9 ≥ 7
    assert _places(app.store, ids)[-1] == (3, 2)
    app.close()


def test_a_store_indexed_block_by_block_keeps_its_rows_when_a_writer_takes_over(
    tmp_path: Path,
) -> None:
    """A store written by code before the tail (or by a Store that is not the sole writer)
    has a row for every tx and no `tx_indexed`: all of its height counts as indexed."""
    net = make_net()
    plain = Application(Store(tmp_path / "l.db"), net.genesis, net.app().registry)
    plain.init_chain()
    old = _blocks(net, plain, 4)
    plain.close()
    assert _rows(tmp_path / "l.db") == 12
    app = net.app(tmp_path / "l.db")
    new = _blocks(net, app, 2)
    app.close()
    again = net.app(tmp_path / "l.db")
    assert _places(again.store, old + new) == [(h, i) for h in range(1, 7) for i in range(3)]
    again.close()


def test_a_tx_committed_twice_is_found_at_its_first_place(tmp_path: Path) -> None:
    net = make_net()
    app = net.app(tmp_path / "l.db")
    tx = net.tx(net.orgs["h0"], "identity.register", register_body("twice"))
    run_block(app, [tx], net.solo)
    run_block(app, [tx], net.solo)  # refused (nonce spent), but in the block
    assert app.store.locate_tx(codec.tx_id(tx)) == (1, 0)
    _blocks(net, app, store._INDEX_EVERY_BLOCKS)  # the tail goes to the index
    assert app.store.locate_tx(codec.tx_id(tx)) == (1, 0)
    app.close()
    reader = Store(tmp_path / "l.db")
    assert reader.locate_tx(codec.tx_id(tx)) == (1, 0)
    reader.close()
