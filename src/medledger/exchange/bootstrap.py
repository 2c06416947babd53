"""What a member's gateway tells a hospital joining from afar, and the pseudonym key's release.

    GET  /exchange/v1/bootstrap       no client certificate needed: nothing in it is secret
    POST /exchange/v1/pseudonym-key   mTLS and a signed request from a current member

The bootstrap answer is the genesis (and its hash), the chain id and engine, the members with
the addresses and TLS keys the chain holds for them, and for CometBFT its genesis document and
peers to dial. The joining node takes nothing in it on faith: its operator compares the
genesis hash with the one the members gave them (`medledger join --genesis-hash`), the chain
it then syncs is checked against that genesis block by block, and whom to trust at TLS comes
from the synced chain, not from this answer.

The consortium's pseudonymisation key is sealed (NaCl SealedBox) to the caller's X25519 box key
as the chain records it, and only for a hospital that is a member in this node's replica now:
whoever holds the caller's certificate but not its box key's private half learns nothing.
"""

from __future__ import annotations

import json
import tomllib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nacl.public import PublicKey, SealedBox

from medledger.contracts import queries

if TYPE_CHECKING:
    from medledger.node import Node

#: Members listed in a bootstrap answer at most (the genesis bounds them as well).
MAX_MEMBERS = 256


def gateway_address(url: str) -> str:
    """`host:port` of a gateway URL (`https://10.0.0.5:7004` -> `10.0.0.5:7004`)."""
    parts = urlsplit(url)
    return parts.netloc


def bootstrap(node: Node) -> dict[str, Any]:
    """The bootstrap answer of this node (see the module's docstring)."""
    config = node.config
    genesis = config.genesis()
    configured = {org: gateway_address(url) for org, url in config.exchange.peers.items()}
    members = []
    for m in queries.members(node.engine)[:MAX_MEMBERS]:
        addresses = {str(k): str(v) for k, v in dict(m.get("addresses") or {}).items()}
        if "gateway" not in addresses and m["org"] in configured:  # not on the chain yet
            addresses["gateway"] = configured[m["org"]]
        members.append(
            {
                "org": m["org"],
                "name": m.get("name", ""),
                "addresses": addresses,
                "tls_key": bytes(m.get("tls_key") or b"").hex(),
            }
        )
    answer: dict[str, Any] = {
        "org": config.org,
        "genesis": json.loads(config.genesis_path.read_text()),
        "genesis_hash": genesis.hash().hex(),
        "chain_id": config.chain_id,
        "engine": config.engine,
        "block_time_ms": config.block_time_ms,
        "height": node.engine.height(),
        "members": members,
        "cometbft": None,
    }
    if config.engine == "cometbft":
        answer["cometbft"] = _cometbft(node, members)
    return answer


def _cometbft(node: Node, members: list[dict[str, Any]]) -> dict[str, Any]:
    """CometBFT's genesis document, the peers to dial (the members' `p2p` addresses on the
    chain, else this node and the persistent peers it is configured with) and this node's
    `timeout_commit_ms`, which the joiner takes as is (the network's nodes agree on it)."""
    from medledger.consensus.cometbft.testnet import node_addresses, timeout_commit_of

    cmt = node.config.home / node.config.cometbft.home
    doc = json.loads((cmt / "config" / "genesis.json").read_text())
    peers = [m["addresses"]["p2p"] for m in members if m["addresses"].get("p2p")]
    if not peers:
        config = tomllib.loads((cmt / "config" / "config.toml").read_text())
        configured = [p for p in str(config["p2p"]["persistent_peers"]).split(",") if p]
        peers = [node_addresses(cmt, node.config.org).peer, *configured]
    return {"genesis": doc, "persistent_peers": peers, "timeout_commit_ms": timeout_commit_of(cmt)}


class NotAMember(Exception):
    """The caller is not a current member (or has no box key on the chain)."""


def sealed_pseudonym_key(node: Node, org: str) -> bytes:
    """The consortium's pseudonym key sealed to `org`'s box key on this node's replica."""
    for m in queries.members(node.engine):
        if m["org"] == org:
            box_key = bytes(m.get("box_key") or b"")
            if len(box_key) != 32:
                raise NotAMember(f"{org} has no X25519 box key on the chain")
            return SealedBox(PublicKey(box_key)).encrypt(node.config.pseudonym_key())
    raise NotAMember(f"{org} is not a member of the consortium (per this node's replica)")
