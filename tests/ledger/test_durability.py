"""Tamper evidence and crash safety: what `verify` catches and what a kill leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medledger.contracts import default_registry
from medledger.ledger.replay import VerifyError, verify_history
from medledger.ledger.store import Store
from tests.support.ledger import make_net, register_body, run_block


def _chain(path: Path, blocks: int = 4):
    net = make_net()
    app = net.app(path)
    for i in range(blocks):
        txs = [
            net.tx(net.orgs["h1"], "identity.register", register_body(f"p{i}-{j}"))
            for j in range(2)
        ]
        run_block(app, txs, net.solo)
    app.close()
    return net


def test_verify_accepts_an_untouched_chain(tmp_path: Path) -> None:
    net = _chain(tmp_path / "l.db")
    report = verify_history(Store(tmp_path / "l.db"), net.genesis, default_registry())
    assert (report.height, report.txs) == (4, 8)


@pytest.mark.parametrize("column", ["txs", "header", "results"])
def test_one_changed_byte_is_caught_at_its_height(tmp_path: Path, column: str) -> None:
    net = _chain(tmp_path / "l.db")
    store = Store(tmp_path / "l.db")
    (blob,) = store.execute(f"SELECT {column} FROM blocks WHERE height = 3")[0]
    data = bytearray(blob)
    data[len(data) // 2] ^= 0x01
    store.execute(f"UPDATE blocks SET {column} = ? WHERE height = 3", (bytes(data),))
    with pytest.raises(VerifyError) as err:
        verify_history(store, net.genesis, default_registry())
    assert err.value.height == 3


def test_a_state_row_edited_behind_the_ledger_is_caught(tmp_path: Path) -> None:
    net = _chain(tmp_path / "l.db")
    store = Store(tmp_path / "l.db")
    store.execute("DELETE FROM kv WHERE k = ?", (b"id/prac/h1/p0-0",))
    with pytest.raises(VerifyError, match="state differs"):
        verify_history(store, net.genesis, default_registry())


_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from tests.support.ledger import make_net, run_block
    from tests.support.ledger import register_body
    net = make_net()
    for h in range(4):  # re-sign the same first four blocks' txs: nonces continue from there
        for j in range(2):
            net.tx(net.orgs["h1"], "identity.register", register_body("x"))
    app = net.app({db!r})
    h2 = net.orgs["h2"]
    txs = [net.tx(h2, "identity.register", register_body(f"crash-{{i}}")) for i in range(50)]
    real = app.store._db
    class Dying:
        def __getattr__(self, name):
            return getattr(real, name)
        def execute(self, sql, *args):
            if sql.startswith("INSERT INTO blocks"):
                os._exit(9)  # killed after the state writes, before COMMIT
            return real.execute(sql, *args)
    app.store._db = Dying()
    run_block(app, txs, net.solo)
    """
)


def test_a_process_killed_during_a_block_leaves_the_previous_height(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    net = _chain(db)
    store = Store(db)
    before = (store.height, store.app_hash, store.state_digest())
    store.close()
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the tests package
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(root=root, db=str(db))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr
    store = Store(db)
    assert (store.height, store.app_hash, store.state_digest()) == before
    store.close()
    # The next start continues from there, and the history still verifies.
    app = net.app(db)
    more = net.tx(net.orgs["h0"], "identity.register", register_body("after-crash"))
    assert run_block(app, [more], net.solo).results[0].ok
    assert app.height == 5
    verify_history(app.store, net.genesis, default_registry())
    assert os.path.exists(db)


def test_a_rewritten_event_is_caught(tmp_path: Path) -> None:
    from medledger.ledger import codec

    net = _chain(tmp_path / "l.db")
    store = Store(tmp_path / "l.db")
    (blob,) = store.execute("SELECT results FROM blocks WHERE height = 2")[0]
    results, events = codec.decode(bytes(blob))
    results[0][2][0][1][1][1] = "someone-else"  # the practitioner named by the event
    store.execute(
        "UPDATE blocks SET results = ? WHERE height = 2", (codec.encode([results, events]),)
    )
    with pytest.raises(VerifyError, match="log or events") as err:
        verify_history(store, net.genesis, default_registry())
    assert err.value.height == 2
