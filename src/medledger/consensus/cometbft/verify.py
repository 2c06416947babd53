"""`medledger verify` on CometBFT: the app's per-height records against CometBFT's headers.

For each stored record at height h:

- header(h+1).app_hash must be the stored app hash (CometBFT puts the app hash that block h
  produced into the next header: that is what the validators signed);
- header(h).data_hash must be the Merkle root of the stored txs (so the record holds exactly
  the txs CometBFT ordered);
- header(h+1).last_results_hash must match the stored result codes;
- the record's consensus_hash, when set, must be CometBFT's block hash at h.

The newest record has no h+1 header yet; its app hash is checked once the next block exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from medledger.consensus.cometbft.framing import encode_uvarint
from medledger.consensus.cometbft.rpc import CometRpc
from medledger.ledger.results import BlockRecord, TxResult

_BATCH = 20  # /blockchain returns at most 20 block metas per call


def _leaf(item: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + item).digest()


def _inner(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(items: list[bytes]) -> bytes:
    """CometBFT's `merkle.HashFromByteSlices` (RFC 6962 shape, split at the largest power of 2)."""
    n = len(items)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return _leaf(items[0])
    k = 1 << ((n - 1).bit_length() - 1)
    return _inner(merkle_root(items[:k]), merkle_root(items[k:]))


def data_hash(txs: list[bytes]) -> bytes:
    """A block header's data_hash: the Merkle root of the txs' SHA-256 hashes."""
    return merkle_root([hashlib.sha256(tx).digest() for tx in txs])


def results_hash(results: list[TxResult]) -> bytes:
    """A header's last_results_hash over the deterministic part of each result (its code).

    CometBFT hashes ExecTxResult reduced to code, data, gas_wanted and gas_used; medledger sets
    only the code, so each leaf is the protobuf encoding of field 1 (varint), or empty for 0.
    """
    leaves = []
    for r in results:
        if r.code == 0:
            leaves.append(b"")
        else:
            leaves.append(b"\x08" + encode_uvarint(r.code))
    return merkle_root(leaves)


class _Headers:
    """Block metas fetched 20 at a time, as they are needed."""

    def __init__(self, rpc: CometRpc) -> None:
        self.rpc = rpc
        self.cache: dict[int, dict[str, Any]] = {}
        self.top = rpc.height()

    def get(self, height: int) -> dict[str, Any] | None:
        if height > self.top:
            # The network keeps committing while we check: ask again before saying "missing".
            self.top = self.rpc.height()
        if height > self.top:
            return None
        if height not in self.cache:
            high = min(self.top, height + _BATCH - 1)
            for meta in self.rpc.blockchain(height, high):
                self.cache[int(meta["header"]["height"])] = meta
            for h in [h for h in self.cache if h < height - 1]:
                del self.cache[h]
        return self.cache.get(height)


def check_app_hashes(rpc_url: str, records: Iterable[BlockRecord]) -> list[str]:
    """Compare stored records with CometBFT's headers; return one message per mismatch."""
    problems: list[str] = []
    with CometRpc(rpc_url) as rpc:
        headers = _Headers(rpc)
        for record in records:
            h = record.height
            meta = headers.get(h)
            if meta is None:
                problems.append(f"height {h}: CometBFT has no block at this height")
                continue
            header = meta["header"]
            if bytes.fromhex(header["data_hash"]) != data_hash(record.txs):
                problems.append(f"height {h}: stored txs differ from CometBFT's block (data_hash)")
            consensus = record.header.consensus_hash
            if consensus and consensus != bytes.fromhex(meta["block_id"]["hash"]):
                problems.append(
                    f"height {h}: stored consensus hash {consensus.hex()} is not "
                    f"CometBFT's block hash {meta['block_id']['hash'].lower()}"
                )
            following = headers.get(h + 1)
            if following is None:
                continue  # the newest block: its app hash is not in a header yet
            expected = bytes.fromhex(following["header"]["app_hash"])
            stored = record.header.app_hash
            if stored != expected:
                problems.append(
                    f"height {h}: stored app hash {stored.hex()} but CometBFT's header at "
                    f"{h + 1} has {expected.hex()}"
                )
            last_results = bytes.fromhex(following["header"]["last_results_hash"])
            if last_results != results_hash(record.results):
                problems.append(f"height {h}: stored tx result codes differ from CometBFT's")
    return problems


def rpc_url_for(config: Any) -> str:
    """A hospital's CometBFT RPC URL from its config (the "cometbft" section or config.toml)."""
    section = config.cometbft
    if section.rpc:
        return str(section.rpc)
    from medledger.consensus.cometbft.testnet import node_addresses

    return node_addresses(config.home / section.home).rpc_url


def check_home(config: Any, store: Any) -> list[str]:
    """`medledger verify --home H` on CometBFT: the replica's records against its node's headers.

    `config` is the hospital's `HospitalConfig`, `store` its opened ledger `Store`. The node's
    CometBFT must be running (its RPC is where the headers come from).
    """
    from medledger.consensus.cometbft.rpc import RpcUnavailable

    url = rpc_url_for(config)
    records = (store.block(h, strict=True) for h in range(1, store.height + 1))
    try:
        return check_app_hashes(url, (r for r in records if r is not None))
    except RpcUnavailable:
        return [
            f"cannot compare app hashes with CometBFT's headers: its RPC {url} does not answer "
            "(start the node: medledger net up)"
        ]
