"""Review 12b: a clean close leaves the tx index whole.

The sole writer defers the rows of up to 16 blocks (`store._INDEX_EVERY_BLOCKS`); a new
binary rebuilds that tail from the block rows at open, but anything else that reads
`tx_index` (a node downgraded to the session's base `17b9738`, whose `locate_tx` reads the
table alone and never rebuilds it) loses those txs from `ledger/tx` and proofs for good.
A clean close should write the tail (a crash still needs the rebuild).

FAILS on main at e3daea8: `Store.close` drops the tail unwritten.
"""

from __future__ import annotations

from pathlib import Path

from medledger.ledger import codec, store
from medledger.ledger.store import Store
from tests.support.ledger import make_net, register_body, run_block


def test_every_committed_tx_has_its_index_row_after_a_clean_close(tmp_path: Path) -> None:
    net = make_net()
    app = net.app(tmp_path / "l.db")
    ids = []
    for h in range(store._INDEX_EVERY_BLOCKS + 3):
        tx = net.tx(net.orgs["h0"], "identity.register", register_body(f"p{h}"))
        run_block(app, [tx], net.solo)
        ids.append(codec.tx_id(tx))
    app.close()
    reader = Store(tmp_path / "l.db")
    try:
        rows = reader.execute("SELECT id, height, idx FROM tx_index ORDER BY height")
    finally:
        reader.close()
    # what the base's `locate_tx` (`SELECT height, idx FROM tx_index WHERE id = ?`) finds
    assert [(bytes(i), h, x) for i, h, x in rows] == [
        (tid, h, 0) for h, tid in enumerate(ids, start=1)
    ]
