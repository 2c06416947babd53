"""The Python floor: the least any signed ledger must do per tx, as an ABCI socket app.

`bench cometbft` runs it as its fourth app (`pyfloor`) beside CometBFT's kvstore and medledger,
on the same network and load, to tell what Python itself costs per tx from what medledger adds.
Not part of medledger: a bench peer only.

A tx is a fixed binary envelope of medledger's tx size (`encode_tx`):

    b"F1" | signer (32) | nonce (8, big-endian) | key length (2) | key | value | signature (64)

the signature being Ed25519 (PyNaCl, as medledger) over the chain id followed by every byte
before it. What the floor does, and nothing more:

- CheckTx: slices the envelope, checks the signer is a member (a set of keys given at start)
  and its nonce is the next after the one it last accepted, verifies the signature; a valid tx
  is remembered as verified;
- PrepareProposal / ProcessProposal: the block's nonces in order (a signature only when this
  node has not verified the tx: one gossiped and never checked here);
- FinalizeBlock: the same per tx, then its key/value write into the block's writes; the app
  hash chains the previous one with the applied txs' ids;
- Commit: the block's writes, the signers' nonces and the height in one SQLite transaction
  (WAL, synchronous=FULL: medledger's store's durability).

It answers CometBFT through medledger's own socket server (`AbciServer`: framing, the
hand-parsed CheckTx, batched writes, the consensus-first hold), so the two Python apps differ
only in what the application does per tx; with `--bare` through `BareServer` instead: every
request parsed and every answer built with the generated protobuf classes, one write per read,
what a plain Python ABCI server does (it measures our server's own share).

    python bench/pyfloor_app.py --address tcp://127.0.0.1:26658 --db floor.sqlite \
        --chain medledger-bench --signers signers.txt   # one hex public key a line
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import sqlite3
import struct
import threading
from pathlib import Path

import nacl.exceptions
import nacl.signing

from medledger.consensus.cometbft.abci_proto import abci
from medledger.consensus.cometbft.abci_server import AbciServer, parse_address, timestamp_ms
from medledger.consensus.cometbft.framing import encode_uvarint, frame, split_frames
from medledger.ledger.results import AppInfo, BlockOutcome, QueryResult, TxResult

MAGIC = b"F1"
_HEAD = len(MAGIC) + 32 + 8 + 2  # magic, signer, nonce, key length
SIG = 64
BAD_FORMAT, UNKNOWN_SIGNER, BAD_NONCE, BAD_SIGNATURE = 1, 2, 3, 4
_OK = TxResult(0)
VERIFIED_MAX = 100_000


def encode_tx(key: nacl.signing.SigningKey, chain: str, nonce: int, k: bytes, size: int) -> bytes:
    """A signed floor tx of `size` bytes writing `k` (its value pads the tx to `size`)."""
    value = b"v" * max(1, size - _HEAD - len(k) - SIG)
    body = MAGIC + bytes(key.verify_key) + struct.pack(">QH", nonce, len(k)) + k + value
    return body + key.sign(chain.encode() + body).signature


class FloorApp:
    """The floor's state: committed key/values and nonces in SQLite, the mempool's nonces and
    the verified-tx cache in memory. Deterministic: FinalizeBlock depends only on the block
    and the committed state."""

    def __init__(self, db: Path, chain: str, signers: set[bytes]) -> None:
        self.lock = threading.RLock()
        self.chain = chain.encode()
        self.keys = {pk: nacl.signing.VerifyKey(pk) for pk in signers}
        self.db = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS nonce (s BLOB PRIMARY KEY, n INT) WITHOUT ROWID"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB)")
        meta = dict(self.db.execute("SELECT k, v FROM meta"))
        self.height = int(meta.get("height", 0))
        self.app_hash: bytes = meta.get("hash", b"")
        self.nonces: dict[bytes, int] = dict(self.db.execute("SELECT s, n FROM nonce"))
        # Highest nonce CheckTx accepted, per signer. Kept across blocks (mempool.recheck is
        # off): a tx accepted and then never committed would hold its signer's later nonces
        # back, which the bench, dropping none, never meets.
        self.pending: dict[bytes, int] = {}
        self.verified: set[bytes] = set()  # ids of txs whose signature this node checked
        self._block: tuple[int, bytes, dict[bytes, bytes], dict[bytes, int]] | None = None

    # ---------------------------------------------------------------- one tx

    def _check(self, tx: bytes, nonces: _Overlay, tid: bytes) -> int:
        """0, or why `tx` is refused against `nonces` (updated when it is accepted)."""
        if len(tx) < _HEAD + SIG or tx[:2] != MAGIC:
            return BAD_FORMAT
        signer = tx[2:34]
        key = self.keys.get(signer)
        if key is None:
            return UNKNOWN_SIGNER
        nonce, klen = struct.unpack_from(">QH", tx, 34)
        if _HEAD + klen > len(tx) - SIG:
            return BAD_FORMAT
        if nonce != nonces.get(signer) + 1:
            return BAD_NONCE
        if tid not in self.verified:
            try:
                key.verify(self.chain + tx[:-SIG], tx[-SIG:])
            except (nacl.exceptions.BadSignatureError, ValueError):
                return BAD_SIGNATURE
            if len(self.verified) >= VERIFIED_MAX:  # txs verified and never committed
                self.verified.clear()
            self.verified.add(tid)
        nonces.set(signer, nonce)
        return 0

    # ---------------------------------------------------------------- ABCI

    def info(self) -> AppInfo:
        return AppInfo(self.height, self.app_hash)

    def init_chain(self) -> bytes:
        return self.app_hash

    def genesis_validators(self) -> list[object]:
        return []  # CometBFT's genesis set stands

    def check_tx(self, tx: bytes, recheck: bool = False) -> TxResult:
        if recheck:  # mempool.recheck is off in the bench's configuration
            return _OK
        code = self._check(tx, _Overlay(self.pending, self.nonces), hashlib.sha256(tx).digest())
        return _OK if code == 0 else TxResult(code, "refused")

    def proposal_order(self, txs: list[bytes], height: int) -> list[bytes]:
        return txs

    def simulate_block(self, txs: list[bytes], height: int, time_ms: int) -> list[TxResult]:
        view = _Overlay({}, self.nonces)
        return [
            _OK if self._check(tx, view, hashlib.sha256(tx).digest()) == 0 else TxResult(1)
            for tx in txs
        ]

    def finalize_block(
        self, txs: list[bytes], height: int, time_ms: int, block_hash: bytes, proposer: bytes
    ) -> BlockOutcome:
        view = _Overlay({}, self.nonces)
        writes: dict[bytes, bytes] = {}
        digest = hashlib.sha256(self.app_hash + height.to_bytes(8, "big"))
        results = []
        for tx in txs:
            tid = hashlib.sha256(tx).digest()
            code = self._check(tx, view, tid)
            if code == 0:
                klen = int.from_bytes(tx[42:44], "big")
                writes[tx[2:34] + tx[_HEAD : _HEAD + klen]] = tx[_HEAD + klen : -SIG]
                digest.update(tid)
                self.verified.discard(tid)
            results.append(_OK if code == 0 else TxResult(code, "refused"))
        self._block = (height, digest.digest(), writes, view.top)
        return BlockOutcome(results, digest.digest())

    def commit(self) -> None:
        assert self._block is not None, "Commit without FinalizeBlock"
        height, app_hash, writes, nonces = self._block
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", writes.items())
        db.executemany("INSERT OR REPLACE INTO nonce VALUES (?, ?)", nonces.items())
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", [("height", height), ("hash", app_hash)]
        )
        db.execute("COMMIT")
        self.nonces.update(nonces)
        self.height, self.app_hash, self._block = height, app_hash, None
        for signer, n in nonces.items():  # the mempool's view never falls behind the chain's
            if self.pending.get(signer, 0) < n:
                self.pending[signer] = n

    def query(self, path: str, data: bytes) -> QueryResult:
        """A key's value (empty when absent); code 0 for every path, as the kvstore answers:
        CometBFT's peer filter (`/p2p/filter/...`, on in medledger's configuration) admits."""
        row = self.db.execute("SELECT v FROM kv WHERE k = ?", (data,)).fetchone()
        return QueryResult(0, row[0] if row else b"", "", self.height)


class _Overlay:
    """Nonces read through `top` (what this block or the mempool accepted) then `base` (the
    committed ones); writes go to `top`."""

    __slots__ = ("top", "base")

    def __init__(self, top: dict[bytes, int], base: dict[bytes, int]) -> None:
        self.top, self.base = top, base

    def get(self, key: bytes) -> int:
        n = self.top.get(key)
        return self.base.get(key, 0) if n is None else n

    def set(self, key: bytes, value: int) -> None:
        self.top[key] = value


class BareServer(asyncio.Protocol):
    """One CometBFT connection answered the plain way: each frame parsed into an
    `abci.Request`, each answer an `abci.Response` serialized and framed, all the answers to
    one read written at once. No hold, no hand-parsed CheckTx: the floor of a Python server
    built on the generated classes alone."""

    def __init__(self, app: FloorApp) -> None:
        self.app = app
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = [frame(self.answer(abci.Request.FromString(m))) for m in split_frames(self.buf)]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def answer(self, request: abci.Request) -> bytes:
        method = request.WhichOneof("value")
        req = getattr(request, method)
        app = self.app
        if method == "check_tx":
            r = app.check_tx(req.tx, req.type == abci.RECHECK)
            answer: object = abci.ResponseCheckTx(code=r.code, log=r.log)
        elif method == "flush":
            answer = abci.ResponseFlush()
        elif method == "echo":
            answer = abci.ResponseEcho(message=req.message)
        elif method == "info":
            answer = abci.ResponseInfo(
                last_block_height=app.height, last_block_app_hash=app.app_hash
            )
        elif method == "init_chain":
            answer = abci.ResponseInitChain(app_hash=app.app_hash)
        elif method == "prepare_proposal":
            kept, size = [], 0
            txs = list(req.txs)
            for tx, r in zip(txs, app.simulate_block(txs, req.height, 0), strict=True):
                size += len(tx) + len(encode_uvarint(len(tx))) + 1
                if size > req.max_tx_bytes:
                    break
                if r.code == 0:
                    kept.append(tx)
            answer = abci.ResponsePrepareProposal(txs=kept)
        elif method == "process_proposal":
            ok = all(r.code == 0 for r in app.simulate_block(list(req.txs), req.height, 0))
            status = (
                abci.ResponseProcessProposal.ACCEPT if ok else abci.ResponseProcessProposal.REJECT
            )
            answer = abci.ResponseProcessProposal(status=status)
        elif method == "finalize_block":
            outcome = app.finalize_block(
                list(req.txs), req.height, timestamp_ms(req.time), req.hash, req.proposer_address
            )
            answer = abci.ResponseFinalizeBlock(
                tx_results=[abci.ExecTxResult(code=r.code, log=r.log) for r in outcome.results],
                app_hash=outcome.app_hash,
            )
        elif method == "commit":
            app.commit()
            answer = abci.ResponseCommit()
        elif method == "query":
            q = app.query(req.path, req.data)
            answer = abci.ResponseQuery(code=q.code, value=q.value, height=q.height)
        elif method == "list_snapshots":
            answer = abci.ResponseListSnapshots()
        else:
            return bytes(
                abci.Response(exception=abci.ResponseException(error=method)).SerializeToString()
            )
        return bytes(abci.Response(**{method: answer}).SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--chain", required=True)
    parser.add_argument("--signers", type=Path, required=True)
    parser.add_argument("--stats-interval", type=float, default=60.0)
    parser.add_argument("--bare", action="store_true", help="answer through BareServer")
    parser.add_argument("--hold-s", type=float, default=1.0, help="AbciServer's proposal hold")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    signers = {bytes.fromhex(line) for line in args.signers.read_text().split()}
    app = FloorApp(args.db, args.chain, signers)
    server = AbciServer(app, stats_interval_s=args.stats_interval, proposal_hold_s=args.hold_s)

    async def serve() -> None:
        if args.bare:
            kind, where = parse_address(args.address)
            loop = asyncio.get_running_loop()
            if kind == "unix":
                await loop.create_unix_server(lambda: BareServer(app), path=where)
            else:
                await loop.create_server(lambda: BareServer(app), *where, reuse_address=True)
        else:
            await server.start(args.address)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
