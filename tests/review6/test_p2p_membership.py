"""Review of issue 16 (session 6): a member removed by vote is refused at the exchange's TLS
handshake, but CometBFT's p2p layer asks nobody: its node keeps syncing every new block (the
pids, consents, access trail and sealed metadata of the whole consortium) and gossiping txs."""

from __future__ import annotations

from medledger.consensus.cometbft import testnet
from medledger.ledger.keys import SigningKey
from tests.support.ledger import make_net, run_block

NODE_ID = "0123456789abcdef0123456789abcdef01234567"


def test_cometbft_asks_the_ledger_whom_to_peer_with() -> None:
    settings = testnet.node_settings("h0", [26656, 26657, 26658, 26660], [], 1000)
    assert settings[""].get("filter_peers") is True, "CometBFT peers with any node that dials"


def test_the_ledger_refuses_the_p2p_node_of_a_non_member() -> None:
    net = make_net(3)
    app = net.app()
    update = net.tx(
        net.orgs["h0"],
        "governance.update_member",
        {"addresses": {"p2p": f"{NODE_ID}@10.0.0.5:26656"}},
    )
    assert run_block(app, [update], net.solo).results[0].ok
    assert app.query(f"/p2p/filter/id/{NODE_ID}", b"").code == 0
    stranger = SigningKey.generate().public_key.hex()[:40]
    assert app.query(f"/p2p/filter/id/{stranger}", b"").code != 0
