"""Review 12b: a Store reading beside the writer does not decode the tail's blocks again and
again.

`Store.locate_tx` and `tx_ids_with_prefix` on a Store that is not the sole writer (the CLI, a
`SoloClient` whose `wait_for_commit` polls every 50 ms, its `ledger/tx` queries) rebuild the
writer's tail from the block rows on every call, before looking at `tx_index`: up to 16
blocks or 8,192 txs decoded and hashed each time (≈ 8.5 ms of CPU at 8,192 txs of 420 bytes),
even for a tx the index holds. Counted here as calls of the block rows' decoder.

FAILS on main at e3daea8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medledger.ledger import codec, store
from medledger.ledger.store import Store
from tests.support.ledger import make_net, register_body, run_block


def test_a_reader_decodes_no_block_for_an_indexed_tx_nor_the_same_blocks_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = make_net()
    app = net.app(tmp_path / "l.db")
    ids = []
    for h in range(store._INDEX_EVERY_BLOCKS + 4):  # 16 blocks indexed, 4 in the tail
        tx = net.tx(net.orgs["h0"], "identity.register", register_body(f"p{h}"))
        run_block(app, [tx], net.solo)
        ids.append(codec.tx_id(tx))
    reader = Store(tmp_path / "l.db")
    decoded: list[Any] = []
    real = codec.decode_trusted

    def counting(data: bytes) -> Any:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(codec, "decode_trusted", counting)
    try:
        assert reader.locate_tx(ids[0]) == (1, 0)  # in tx_index
        assert decoded == []
        for _ in range(3):  # a waiter polling for a tx not committed yet
            assert reader.locate_tx(b"\x01" * 32) is None
        assert len(decoded) <= 4  # the tail's four blocks, once
    finally:
        reader.close()
        app.close()
