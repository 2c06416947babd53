"""Review 14: CometEngine keeps only the last `_RECENT_COMMITS` committed txs in memory
(grow13: 20,000, was 200,000). A client asking about an older tx by id (`wait_for_commit`,
`submit`'s "already committed") still gets its height, place and result, from the store's
tx index and its block, whether that tx is indexed yet or still in the unindexed tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.consensus.cometbft import engine as engine_module
from medledger.consensus.cometbft.engine import CometEngine
from medledger.ledger import codec
from tests.support.ledger import make_net, register_body, run_block


@pytest.mark.parametrize("blocks", [4, 40])  # 40 > the store's 16-block index batch
def test_a_tx_older_than_the_engines_window_is_still_found_committed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, blocks: int
) -> None:
    monkeypatch.setattr(engine_module, "_RECENT_COMMITS", 2)
    net = make_net()
    app = net.app(tmp_path / "ledger.db")
    engine = CometEngine(app, "tcp://127.0.0.1:0", "http://127.0.0.1:1")  # never started
    txs = [
        net.tx(net.orgs["h0"], "identity.register", register_body(f"dr-{i}")) for i in range(blocks)
    ]
    refused = net.tx(net.orgs["h1"], "nosuch.thing", {})
    outcomes = [run_block(app, [tx], net.solo) for tx in txs[:1]]
    outcomes.append(run_block(app, [refused], net.solo))
    outcomes += [run_block(app, [tx], net.solo) for tx in txs[1:]]
    assert len(engine._recent) == 2  # the first txs are out of the window
    first = engine.wait_for_commit(codec.tx_id(txs[0]), timeout=5)
    assert (first.height, first.index, first.result.ok) == (1, 0, True)
    gone = engine.wait_for_commit(codec.tx_id(refused), timeout=5)
    assert gone.height == 2 and not gone.result.ok  # its refusal too, not just "committed"
    assert gone.result.code == outcomes[1].results[0].code
    last = engine.wait_for_commit(codec.tx_id(txs[-1]), timeout=5)
    assert last.height == blocks + 1
