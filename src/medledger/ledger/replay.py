"""Replay a replica's history from genesis and check every link of it.

`verify_history` rebuilds the state in a scratch store, re-verifying every signature (no
cache), nonce and result, and compares each height's header fields (chain, height, time order,
previous hash, Merkle root, app hash, solo signature) with what was stored. At the end the
replayed state must equal the stored state, so a row edited behind the ledger's back shows too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medledger.ledger import codec, merkle
from medledger.ledger.app import Application
from medledger.ledger.contract import Registry
from medledger.ledger.genesis import Genesis
from medledger.ledger.keys import verify
from medledger.ledger.results import BlockHeader
from medledger.ledger.store import Store, decode_record


class VerifyError(Exception):
    def __init__(self, height: int, what: str) -> None:
        super().__init__(f"height {height}: {what}")
        self.height = height
        self.what = what


@dataclass(frozen=True)
class VerifyReport:
    height: int
    txs: int
    app_hash: bytes


def verify_history(
    store: Store,
    genesis: Genesis,
    registry: Registry,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    replica = Application(Store(":memory:"), genesis, registry)
    genesis_hash = replica.init_chain()
    top = store.height
    stored_genesis = store.get_raw(b"meta/genesis_app_hash")
    if stored_genesis is not None and stored_genesis != genesis_hash:
        raise VerifyError(0, "genesis app hash differs from the genesis file")
    prev_hash = genesis.hash()
    prev_time = genesis.time_ms
    txs_total = 0
    for height in range(1, top + 1):
        raw = store.raw_block(height)
        if raw is None:
            raise VerifyError(height, "block record missing")
        header_bytes, signature, txs_bytes, results_bytes = raw
        try:
            record = decode_record(header_bytes, signature, txs_bytes, results_bytes, strict=True)
            header = record.header
            if header.encode() != header_bytes:
                raise ValueError("header is not canonical")
        except Exception as exc:
            raise VerifyError(height, f"record does not decode: {exc}") from None
        _check_header(header, genesis, height, prev_hash, prev_time)
        if genesis.solo_key and not verify(genesis.solo_key, header_bytes, signature):
            raise VerifyError(height, "header signature does not verify against the solo key")
        ids = [codec.sha256(t) for t in record.txs]
        if merkle.root(ids) != header.tx_root:
            raise VerifyError(height, "tx_root does not match the block's txs")
        outcome = replica.finalize_block(
            record.txs,
            height,
            header.time_ms,
            consensus_hash=header.consensus_hash,
            proposer=header.proposer,
            trust_cache=False,
        )
        if len(record.results) != len(record.txs):
            raise VerifyError(height, f"{len(record.results)} results for {len(record.txs)} txs")
        for i, (got, stored) in enumerate(zip(outcome.results, record.results, strict=True)):
            # The whole result (code, log, events): the event stream and the sync agents
            # act on stored events, so they must be the ones the txs really produced.
            if got.to_obj() != stored.to_obj():
                what = "code" if got.code != stored.code else "log or events"
                raise VerifyError(
                    height,
                    f"tx {i} ({ids[i].hex()[:16]}): stored result {what} differs from the replay",
                )
        if [e.to_obj() for e in outcome.events] != [e.to_obj() for e in record.events]:
            raise VerifyError(height, "stored end-of-block events differ from the replay")
        if outcome.app_hash != header.app_hash:
            raise VerifyError(height, "app_hash differs from the replayed state")
        replica.commit(signature)
        prev_hash = codec.sha256(header_bytes)
        prev_time = header.time_ms
        txs_total += len(record.txs)
        if progress is not None:
            progress(height, top)
    if top and store.app_hash != replica.info().app_hash:
        raise VerifyError(top, "stored app hash differs from the replayed one")
    if replica.store.state_digest() != store.state_digest():
        raise VerifyError(top, "stored state differs from the replayed state")
    return VerifyReport(top, txs_total, replica.info().app_hash)


def _check_header(
    header: BlockHeader, genesis: Genesis, height: int, prev_hash: bytes, prev_time: int
) -> None:
    if header.chain != genesis.chain_id:
        raise VerifyError(height, f"chain {header.chain!r} is not {genesis.chain_id!r}")
    if header.height != height:
        raise VerifyError(height, f"header says height {header.height}")
    if header.prev_hash != prev_hash:
        raise VerifyError(height, "prev_hash does not link to the previous block")
    if header.time_ms <= prev_time and height > 1:
        raise VerifyError(height, "time does not increase")


def verify_replica(app: Application) -> VerifyReport:
    """`verify_history` of a running replica's committed chain, under its genesis and registry.

    The replay reads on a second connection to the ledger file, inside one snapshot: it sees
    committed data only and never holds the app lock, so blocks keep committing meanwhile.
    """
    store = Store(app.store.path)
    try:
        with store.snapshot():
            return verify_history(store, app.genesis, app.registry)
    finally:
        store.close()
