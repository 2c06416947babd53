"""The deterministic state machine, with an ABCI-shaped interface.

`check_tx` validates against the committed state plus the txs already accepted into the
mempool; `finalize_block` executes a block on an overlay and computes the app hash;
`commit` persists it atomically. Nothing here reads the clock, randomness or the network:
a replica fed the same blocks reaches the same app hash at every height.

    app_hash(0) = H(genesis hash || H(genesis writes))
    app_hash(h) = H(app_hash(h-1) || H(ordered writes of block h))
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medledger.ledger import codec, merkle
from medledger.ledger.contract import Context, Registry, active_key, parse_message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.genesis import Genesis
from medledger.ledger.proposal import GapHold
from medledger.ledger.results import (
    AppInfo,
    BlockHeader,
    BlockOutcome,
    BlockRecord,
    Event,
    QueryResult,
    TxResult,
    ValidatorUpdate,
)
from medledger.ledger.store import Reader, StateView, Store, writes_digest
from medledger.ledger.tx import Tx, decode_tx, verify_signature

if TYPE_CHECKING:
    from medledger.ledger.proofs import TxProof

# CometBFT with `filter_peers` asks the app about each p2p connection: `/p2p/filter/addr/...`
# before its handshake, `/p2p/filter/id/<node id>` once the handshake proved the node key. The
# id is answered by this contract query (governance: the members' p2p addresses).
P2P_FILTER = "/p2p/filter/"
PEER_QUERY = "governance/peer"

# Txs decoded and signature-checked, kept until they are rechecked and executed in a block:
# room for a full CometBFT mempool (20,000 txs as `medledger init` configures it) and more,
# without a node's memory growing with every tx it has ever seen (docs/benchmarks.md).
_VERIFIED_CACHE_SIZE = 50_000


def nonce_key(signer: bytes) -> str:
    return f"acct/nonce/{signer.hex()}"


@functools.lru_cache(maxsize=4096)
def _nonce_key_bytes(signer: bytes) -> bytes:
    """`nonce_key` as the store's key: read and written twice per tx (CheckTx and its
    block), by a few signers (the members' keys and their staff's)."""
    return nonce_key(signer).encode()


def query_store(store: Store, registry: Registry, path: str, args: dict[str, Any] | None) -> Any:
    """A query over `store`'s committed state: the app's own, or a process reading the file
    beside it (`consensus.solo_shared`); raises TxError on a bad query."""
    view = StateView(store)
    if path == "ledger/nonce":
        signer = (args or {}).get("signer")
        if not isinstance(signer, bytes):
            raise TxError(Code.INVALID_BODY, "ledger/nonce needs signer bytes")
        return view.get(nonce_key(signer)) or 0
    if path == "ledger/tx":
        tid = (args or {}).get("id")
        if not isinstance(tid, bytes):
            raise TxError(Code.INVALID_BODY, "ledger/tx needs id bytes")
        loc = store.locate_tx(tid)
        return None if loc is None else {"height": loc[0], "index": loc[1]}
    fn = registry.query(view, path)
    if fn is None:
        raise TxError(Code.NOT_FOUND, f"unknown query path {path!r}")
    return fn(view, args or {})


_UNWRITTEN: Any = object()  # a key the tx has not written (None is a deletion)


class _ReadSet(StateView):
    """A tx's overlay that also remembers what the tx read from the state below it: the keys,
    and the prefixes scanned. A key it wrote itself and reads back is not a dependency."""

    def __init__(self, parent: Reader) -> None:
        super().__init__(parent)
        self.keys: set[bytes] = set()
        self.prefixes: list[bytes] = []

    def get_raw(self, key: bytes) -> bytes | None:
        value: bytes | None = self.writes.get(key, _UNWRITTEN)
        if value is _UNWRITTEN:
            self.keys.add(key)
            return self.parent.get_raw(key)
        return value

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.prefixes.append(prefix)
        return super().scan_raw(prefix)


@dataclass(slots=True)
class _Effect:
    """What an accepted tx did to the mempool's state, and what it read to do it: enough to
    carry it over to the next state without running its handler again when nothing it read
    has changed (`Application._carry_over`)."""

    tx: bytes
    signer: bytes
    nonce: int
    reads: set[bytes]  # keys read from the state below the tx (its nonce apart)
    prefixes: tuple[bytes, ...]  # prefixes it scanned
    writes: dict[bytes, bytes | None]


def _spent_nonces(waiting: list[_Effect], block_writes: dict[bytes, Any]) -> dict[bytes, int]:
    """The last nonce of each waiting tx's signer that the block wrote (signers it did not
    touch are absent). A waiting tx's nonce was valid on the view it was checked in, above
    every nonce of its signer before it there, so only a nonce the block wrote can now be
    spent: against the carried view it is spent exactly when it is against this one."""
    spent: dict[bytes, int] = {}
    for signer in {effect.signer for effect in waiting}:
        raw = block_writes.get(_nonce_key_bytes(signer), _UNWRITTEN)
        if raw is not _UNWRITTEN:
            spent[signer] = 0 if raw is None else codec.decode_trusted(raw)
    return spent


def _carry(check: _CheckState, run: list[_Effect]) -> None:
    """Apply the recorded writes of consecutive carried txs to the mempool's view. Its write
    log, results and validator updates are left as they are: a view with carried effects is
    never a block's execution (`_CheckState`), and nothing else reads them."""
    if not run:
        return
    writes = check.view.writes
    for effect in run:
        writes.update(effect.writes)
    check.accepted.extend([effect.tx for effect in run])
    check.effects.extend(run)
    check.carried = True


@dataclass
class _CheckState:
    """The mempool's view: committed state plus the accepted txs, executed as the next block.

    When an engine knows the next block's height and time in advance (the solo engine fixes
    them when the block opens) and the block holds exactly the accepted txs in order, this
    execution is the block's: `finalize_block` reuses it instead of running every tx again
    (never when some effects were carried over from an earlier state: they ran at an earlier
    height and time). So `results`, `updates` and the view's write log, which only that reuse
    reads, do not hold the carried txs' (`_carry`).
    """

    view: StateView
    height: int
    time_ms: int
    accepted: list[bytes]
    results: list[TxResult]
    updates: list[ValidatorUpdate]
    effects: list[_Effect] = field(default_factory=list)
    carried: bool = False


@dataclass
class _Pending:
    view: StateView
    header: BlockHeader
    header_bytes: bytes
    txs: list[bytes]
    tx_ids: list[bytes]  # the header's tx_root leaves, reused at commit
    results: list[TxResult]
    events: tuple[Event, ...]
    app_hash: bytes


class Application:
    """One replica's state machine over one Store."""

    def __init__(self, store: Store, genesis: Genesis, registry: Registry) -> None:
        self.store = store
        self.genesis = genesis
        self.registry = registry
        self.chain_id = genesis.chain_id
        self._pending: _Pending | None = None
        # The block this app committed last: asked for at once by whoever waits for its txs.
        self._last_block: BlockRecord | None = None
        self._check = self._fresh_check()
        # Decoding and signatures are pure functions of the bytes, so a tx verified once need
        # not be decoded or verified again; replay (verify) never uses this cache.
        self._verified: OrderedDict[bytes, Tx] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._listeners: list[Callable[[BlockRecord], None]] = []
        self._check_listeners: list[Callable[[bytes, TxResult], None]] = []
        self._write_listeners: list[Callable[[int, Collection[bytes]], None]] = []
        self._pending_validator_updates: list[ValidatorUpdate] = []
        self._simulated: (
            tuple[tuple[int, int, int, bytes], StateView, list[TxResult], list[ValidatorUpdate]]
            | None
        ) = None
        self.lock = threading.RLock()
        self._gap_hold = GapHold()  # this node's proposals only: never part of consensus

    @classmethod
    def open(cls, db_path: Path | str, genesis: Genesis, registry: Registry) -> Application:
        """The replica stored at `db_path`; the caller hands in the contracts it runs (the
        ledger sits below `contracts` and never imports them). Its store keeps a filter of
        its keys (`KeyFilter`): this replica is the file's only writer."""
        return cls(Store(db_path, key_filter=True), genesis, registry)

    def close(self) -> None:
        self.store.close()

    # -- info and genesis ------------------------------------------------------------
    def info(self) -> AppInfo:
        return AppInfo(self.store.height, self.store.app_hash)

    @property
    def height(self) -> int:
        return self.store.height

    @property
    def last_time_ms(self) -> int:
        """The last block's time, or the genesis time: the clock contracts see at CheckTx."""
        t = self.store.last_time_ms
        return self.genesis.time_ms if t is None else t

    def init_chain(self) -> bytes:
        """Apply the genesis state once; later calls return the genesis app hash."""
        with self.lock:
            if self.store.initialized:
                if self.store.height == 0:
                    return self.store.app_hash
                raw = self.store.get_raw(b"meta/genesis_app_hash")
                return raw or b""
            view = StateView(self.store)
            for name, version in sorted(self.genesis.contracts.items()):
                if self.registry.get(name, version) is None:
                    raise ValueError(f"genesis activates unknown contract {name} v{version}")
                view.put(active_key(name), version)
            for contract in self.registry.all_active(view):
                if contract.genesis is not None:
                    contract.genesis(view, self.genesis)
            app_hash = codec.sha256(self.genesis.hash() + writes_digest(view.log))
            view.put_raw(b"meta/genesis_app_hash", app_hash)
            self.store.commit(view.writes, 0, app_hash, None)
            self._check = self._fresh_check()
            return app_hash

    def genesis_validators(self) -> list[ValidatorUpdate]:
        return [
            ValidatorUpdate(m.validator_key, m.power)
            for m in self.genesis.members
            if m.validator_key and m.power > 0
        ]

    # -- executing txs -----------------------------------------------------------------
    def preverify(self, raw: bytes) -> None:
        """Decode and verify a tx's signature, outside the app lock.

        Pure work on the bytes alone, so engines call it from their submitting threads: the
        signature check (which releases the GIL) then runs on another core than the block
        being executed. Invalid txs are simply not cached; check_tx reports them.
        """
        try:
            tx = decode_tx(raw)
            verify_signature(tx)
        except TxError:
            return
        self._remember_verified(tx)

    def _authentic_tx(self, raw: bytes, trust_cache: bool) -> Tx:
        tid = codec.tx_id(raw)
        if trust_cache:
            cached = self._verified.get(tid)
            if cached is not None:
                return cached
        tx = decode_tx(raw)
        if tx.chain != self.chain_id:  # before the costly signature check
            raise TxError(Code.WRONG_CHAIN, f"tx is for chain {tx.chain!r}, not {self.chain_id!r}")
        verify_signature(tx)
        self._remember_verified(tx)
        return tx

    def _execute(
        self,
        raw: bytes,
        view: StateView,
        height: int,
        time_ms: int,
        trust_cache: bool,
        spend_failed: bool = True,
        effects: list[_Effect] | None = None,
    ) -> TxResult:
        """Execute one tx on `view`. With `effects`, what it read is tracked and, if it is
        accepted, its `_Effect` appended there."""
        tx_view = StateView(view) if effects is None else _ReadSet(view)
        try:
            tx = self._authentic_tx(raw, trust_cache)
            if tx.chain != self.chain_id:
                raise TxError(
                    Code.WRONG_CHAIN, f"tx is for chain {tx.chain!r}, not {self.chain_id!r}"
                )
            message = self.registry.message(tx_view, tx.kind)
            nonce_at = _nonce_key_bytes(tx.signer)
            raw_last = view.get_raw(nonce_at)
            last = 0 if raw_last is None else codec.decode_trusted(raw_last)
            if tx.nonce <= last:
                raise TxError(Code.BAD_NONCE, f"nonce {tx.nonce} already used (last was {last})")
        except TxError as exc:
            return TxResult(int(exc.code), exc.message)
        except Exception as exc:  # defensive: garbage must never crash a replica
            return TxResult(int(Code.MALFORMED), f"tx: {type(exc).__name__}")
        # From here the tx is authentic and fresh: its nonce is spent even if the handler
        # refuses it, so that a refused tx can never be replayed later.
        ctx = Context(
            tx_view, self.chain_id, height, time_ms, tx.signer, tx.id, registry=self.registry
        )
        nonce = codec.encode_trusted(tx.nonce)
        try:
            msg = parse_message(message.cls, tx.body)
            message.handler(ctx, msg)
        except TxError as exc:
            if spend_failed:
                view.put_raw(nonce_at, nonce)
            return TxResult(int(exc.code), exc.message)
        except Exception as exc:
            if spend_failed:
                view.put_raw(nonce_at, nonce)
            return TxResult(int(Code.INVALID_BODY), f"{tx.kind}: {type(exc).__name__}: {exc}")
        tx_view.put_raw(nonce_at, nonce)
        tx_view.merge_into(view)
        self._pending_validator_updates.extend(ctx.validator_updates)
        result = TxResult(0, "", tuple(ctx.events))
        if effects is not None and isinstance(tx_view, _ReadSet):
            effects.append(
                _Effect(
                    raw,
                    tx.signer,
                    tx.nonce,
                    tx_view.keys,
                    tuple(tx_view.prefixes),
                    tx_view.writes,
                )
            )
        return result

    def _remember_verified(self, tx: Tx) -> None:
        with self._cache_lock:
            self._verified[tx.id] = tx
            if len(self._verified) > _VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)

    def _forget_verified(self, committed_ids: list[bytes]) -> None:
        """Drop a committed block's txs from the verified-tx cache: no later step of this
        node checks them again (CometBFT removes them from its mempool; the carry-over
        rechecks only txs the block left out). Kept, they filled the cache to its bound
        (50,000 decoded txs, three objects each), which the garbage collector's runs then
        traverse: on a growing chain a tx cost more CPU as the cache filled (docs/
        benchmarks.md, "Session 14 (grow13)"). A committed tx sent again is decoded and
        verified again, then refused for its nonce."""
        verified = self._verified
        with self._cache_lock:
            for tid in committed_ids:
                verified.pop(tid, None)

    def _fresh_check(self, height: int | None = None, time_ms: int | None = None) -> _CheckState:
        return _CheckState(
            StateView(self.store),
            self.store.height + 1 if height is None else height,
            self.last_time_ms if time_ms is None else time_ms,
            [],
            [],
            [],
        )

    def check_tx(self, tx: bytes, recheck: bool = False) -> TxResult:
        """Full validation against committed state plus the mempool's accepted txs.

        A refused tx leaves no trace (not even its nonce), since it never enters the mempool.
        """
        with self.lock:
            check = self._check
            self._pending_validator_updates = []
            result = self._execute(
                tx,
                check.view,
                check.height,
                check.time_ms,
                True,
                spend_failed=False,
                effects=check.effects,
            )
            if result.ok:
                check.accepted.append(tx)
                check.results.append(result)
                check.updates.extend(self._pending_validator_updates)
        if result.ok and not recheck:
            for listener in list(self._check_listeners):
                listener(tx, result)
        return result

    def open_block(self, height: int, time_ms: int) -> None:
        """Start checking txs as the block of this height and time (the engine rechecks)."""
        with self.lock:
            if height != self.store.height + 1:
                raise ValueError(f"open_block at height {height}, expected {self.store.height + 1}")
            self._check = self._fresh_check(height, time_ms)

    def proposal_order(self, txs: list[bytes], height: int) -> list[bytes]:
        """The mempool's `txs` in the order this node proposes them at `height`: each signer's
        in nonce order, a gapped nonce held back a few heights (`ledger.proposal`)."""
        with self.lock:
            view = StateView(self.store)
            decoded = [self._decoded(raw) for raw in txs]
            return self._gap_hold.order(
                txs, decoded, lambda signer: view.get(nonce_key(signer)) or 0, height
            )

    def _decoded(self, raw: bytes) -> Tx | None:
        cached = self._verified.get(codec.tx_id(raw))
        if cached is not None:
            return cached
        try:
            return decode_tx(raw)
        except TxError:
            return None

    def simulate_block(self, txs: list[bytes], height: int, time_ms: int) -> list[TxResult]:
        """Execute a candidate block on a scratch overlay; changes nothing.

        The overlay is kept: when the same block is then finalized (CometBFT's ProcessProposal
        followed by FinalizeBlock), it is reused instead of executing every tx again. Same
        state, same txs, same height and time give the same execution, so this is safe.
        """
        with self.lock:
            view = StateView(self.store)
            self._pending_validator_updates = []
            results = [self._execute(t, view, height, time_ms, True) for t in txs]
            key = (
                self.store.height,
                height,
                time_ms,
                codec.sha256(b"".join(map(codec.tx_id, txs))),
            )
            self._simulated = (key, view, results, list(self._pending_validator_updates))
            return results

    def finalize_block(
        self,
        txs: list[bytes],
        height: int,
        time_ms: int,
        consensus_hash: bytes = b"",
        proposer: bytes = b"",
        trust_cache: bool = True,
    ) -> BlockOutcome:
        with self.lock:
            expected = self.store.height + 1
            if height != expected:
                raise ValueError(f"finalize_block at height {height}, expected {expected}")
            key = (
                self.store.height,
                height,
                time_ms,
                codec.sha256(b"".join(map(codec.tx_id, txs))),
            )
            simulated, self._simulated = self._simulated, None
            check = self._check
            if (
                trust_cache
                and not check.carried
                and (check.height, check.time_ms) == (height, time_ms)
                and check.accepted == txs
            ):
                view, results = check.view, list(check.results)
                self._pending_validator_updates = list(check.updates)
                self._check = self._fresh_check()
            elif trust_cache and simulated is not None and simulated[0] == key:
                _, view, results, updates = simulated
                self._pending_validator_updates = list(updates)
            else:
                view = StateView(self.store)
                self._pending_validator_updates = []
                results = [self._execute(t, view, height, time_ms, trust_cache) for t in txs]
            end_ctx = Context(
                view, self.chain_id, height, time_ms, b"", b"", registry=self.registry
            )
            for contract in self.registry.all_active(view):
                if contract.end_block is not None:
                    contract.end_block(end_ctx)
            self._pending_validator_updates.extend(end_ctx.validator_updates)
            app_hash = codec.sha256(self.store.app_hash + writes_digest(view.log))
            last = self._last_block  # the block committed just before, as a rule
            prev_hash = (
                last.hash
                if last is not None and last.height == height - 1
                else self.store.block_hash(height - 1)
            )
            tx_ids = [codec.tx_id(t) for t in txs]
            header = BlockHeader(
                chain=self.chain_id,
                height=height,
                time_ms=time_ms,
                prev_hash=self.genesis.hash() if prev_hash is None else prev_hash,
                tx_root=merkle.root(tx_ids),
                app_hash=app_hash,
                proposer=proposer,
                consensus_hash=consensus_hash,
            )
            header_bytes = header.encode()
            events = tuple(end_ctx.events)
            self._pending = _Pending(
                view, header, header_bytes, txs, tx_ids, results, events, app_hash
            )
            return BlockOutcome(
                results, app_hash, list(self._pending_validator_updates), list(events)
            )

    @property
    def pending_header_bytes(self) -> bytes:
        if self._pending is None:
            raise RuntimeError("no finalized block to commit")
        return self._pending.header_bytes

    def commit(self, signature: bytes = b"") -> BlockRecord:
        """Persist the finalized block: state, record, height and app hash, atomically."""
        with self.lock:
            p = self._pending
            if p is None:
                raise RuntimeError("commit without finalize_block")
            record = BlockRecord(p.header, p.header_bytes, signature, p.txs, p.results, p.events)
            self.store.commit(p.view.writes, p.header.height, p.app_hash, record)
            self._forget_verified(p.tx_ids)
            self._last_block = record
            self._pending = None
            self._simulated = None
            self._carry_over(self._check, p.txs, p.view.writes)
        written = p.view.writes.keys()
        for on_writes in list(self._write_listeners):
            on_writes(record.height, written)
        for listener in list(self._listeners):
            listener(record)
        return record

    def _carry_over(
        self, previous: _CheckState, included: list[bytes], block_writes: dict[bytes, Any]
    ) -> None:
        """The mempool's view after a block: the new committed state plus the accepted txs
        the block did not include, in their order (those it made invalid drop out).

        CometBFT runs without mempool recheck (testnet.node_settings), so this is what keeps
        CheckTx validating a tx against the txs still waiting before it (a signer's next
        nonce, a record a pending tx creates) without sending them through the socket again.
        A waiting tx runs its handler again only if a key it read changed: one the block
        wrote, or one a waiting tx before it wrote and writes no more (included, dropped or
        run again). Otherwise its nonce is checked and its recorded writes are applied: the
        same reads give the same execution (docs/architecture.md, "No mempool recheck").
        Signatures are not verified again (the verified-tx cache).

        Per waiting tx this is one set test and, for a signer the block spent nonces of, one
        comparison; the writes of consecutive carried txs are applied together.
        """
        check = self._check = self._fresh_check()
        if not previous.effects:
            return
        done = set(included)
        changed = set(block_writes)
        waiting: list[_Effect] = []
        for effect in previous.effects:
            if effect.tx in done:
                changed.update(effect.writes)
            else:
                waiting.append(effect)
        spent = _spent_nonces(waiting, block_writes)
        run: list[_Effect] = []  # carried, not yet applied to the view
        for effect in waiting:
            # a key it read, or one under a prefix it scanned, changed: its handler runs again
            if not changed.isdisjoint(effect.reads) or (
                effect.prefixes and any(k.startswith(effect.prefixes) for k in changed)
            ):
                _carry(check, run)
                run = []
                changed.update(effect.writes)
                ran = len(check.effects)
                self.check_tx(effect.tx, recheck=True)
                for again in check.effects[ran:]:
                    changed.update(again.writes)
            elif effect.nonce <= spent.get(effect.signer, 0):
                # its nonce was spent by a tx of the block
                changed.update(effect.writes)
            else:
                run.append(effect)
        _carry(check, run)

    @contextmanager
    def read_view(self) -> Iterator[StateView]:
        """The last committed state, held steady while the caller reads several keys.

        The app lock is held until the block exits, so a block executed meanwhile commits
        only after it: every read inside sees one height. What is written to the view stays
        in the view (a StateView buffers writes); the store is never touched. Keep the reads
        short: the next commit waits for them.
        """
        with self.lock:
            yield StateView(self.store)

    def prove(self, tx_id: bytes) -> TxProof | None:
        """The inclusion proof of a committed tx (ledger.proofs), None if none committed it;
        read under the app lock, like every read of committed data."""
        from medledger.ledger.proofs import prove_tx

        with self.lock:
            return prove_tx(self.store, tx_id)

    def add_commit_listener(self, fn: Callable[[BlockRecord], None]) -> None:
        self._listeners.append(fn)

    def add_write_listener(self, fn: Callable[[int, Collection[bytes]], None]) -> None:
        """`fn(height, keys)` after each commit, before the commit listeners: the state keys
        the block wrote (deleted included). What a reader kept of an earlier height still
        holds if none of the keys it read, nor any under a prefix it scanned, is among them."""
        self._write_listeners.append(fn)

    def add_check_listener(self, fn: Callable[[bytes, TxResult], None]) -> None:
        """`fn(tx, result)` after CheckTx first accepts a tx (not its rechecks), outside the
        app's lock: what this node learns of a tx before its block (nothing is decided)."""
        self._check_listeners.append(fn)

    # -- reading -----------------------------------------------------------------------
    def block(self, height: int) -> BlockRecord | None:
        last = self._last_block
        if last is not None and last.height == height:
            return last  # not decoded again from the store
        return self.store.block(height)

    def filter_peer(self, what: str) -> QueryResult:
        """CometBFT's question "may this p2p connection stay?", from committed state.

        `id/<node id>`: code 0 only for the node of a current member (the node id in its
        `addresses.p2p`); anything else, and any question before the members are known (no
        InitChain yet), is refused. `addr/<ip:port>`: every address passes, and the answer
        says so: the address of an inbound connection is a NAT's or an ephemeral port, and the
        id, which CometBFT's handshake authenticates, is what decides.
        """
        kind, _, value = what.partition("/")
        height = self.store.height
        if kind == "addr":
            return QueryResult(0, b"", "addresses are not filtered: the node id is", height)
        if kind != "id":
            return QueryResult(int(Code.NOT_FOUND), b"", f"unknown p2p filter {kind!r}", height)
        try:
            org = self.query_obj(PEER_QUERY, {"node_id": value})
        except TxError as exc:
            return QueryResult(int(exc.code), b"", f"p2p node {value}: {exc.message}", height)
        if org is None:
            log = f"p2p node {value} is no current member's (addresses.p2p)"
            return QueryResult(int(Code.UNAUTHORIZED), b"", log, height)
        return QueryResult(0, codec.encode(org), f"p2p node of member {org}", height)

    def query_obj(self, path: str, args: dict[str, Any] | None = None) -> Any:
        """Run a contract's query against committed state; raises TxError on a bad query."""
        with self.lock:
            return query_store(self.store, self.registry, path, args)

    def query(self, path: str, data: bytes) -> QueryResult:
        """ABCI-shaped query: data and value are canonical CBOR. CometBFT's peer filter paths
        (`P2P_FILTER`) are answered by `filter_peer`."""
        if path.startswith(P2P_FILTER):
            return self.filter_peer(path.removeprefix(P2P_FILTER))
        try:
            args = codec.decode(data) if data else {}
            if not isinstance(args, dict):
                raise TxError(Code.INVALID_BODY, "query data must be a CBOR map")
            value = self.query_obj(path, args)
            return QueryResult(0, codec.encode(value), "", self.store.height)
        except TxError as exc:
            return QueryResult(int(exc.code), b"", exc.message, self.store.height)
        except codec.CodecError as exc:
            return QueryResult(int(Code.MALFORMED), b"", str(exc), self.store.height)
