"""The ABCI 2.0 socket server CometBFT v0.38 drives medledger through.

CometBFT opens four connections to the app (consensus, mempool, query, snapshot) and sends
uvarint-length-prefixed `tendermint.abci.Request` messages on each; it expects one `Response`
per request, in request order, and pipelines requests (a burst of CheckTx then a Flush). So each
connection is a loop that parses every complete frame it has received, answers them in order
and writes all answers at once.

The application is not thread-safe and its calls are synchronous: every call into it holds one
re-entrant lock (shared with `CometEngine`, whose query/height/blocks come from other threads).
The calls run on the event loop thread itself, which serialises the four connections exactly
like CometBFT's own Go socket server (one app mutex) and avoids a thread hop per CheckTx.

Errors: a failing consensus method (InitChain, PrepareProposal, ProcessProposal, FinalizeBlock,
Commit, ...) is answered with a `ResponseException` and logged; CometBFT then stops the node,
which is the safe outcome (better a halted replica than a diverging one). CheckTx and Query
carry untrusted input on connections whose exception would also stop the node, so there an
unexpected exception is logged with its traceback and answered with code `INTERNAL_ERROR`: a
malformed tx must not be a way to shut hospitals' nodes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medledger.consensus.cometbft.abci_proto import abci, crypto_keys
from medledger.consensus.cometbft.framing import (
    FramingError,
    encode_uvarint,
    frame,
    split_frames,
)
from medledger.ledger.results import (
    AppInfo,
    BlockOutcome,
    Event,
    QueryResult,
    TxResult,
    ValidatorUpdate,
)

log = logging.getLogger(__name__)

APP_NAME = "medledger"
APP_VERSION = 0  # ABCI app protocol version; kept 0 to match the genesis consensus params
INTERNAL_ERROR = 100  # CheckTx / Query code when the application raised instead of answering

_SLICE = 32  # requests answered before yielding to the other connections
# CheckTx answers written together, at most (fewer when no request waits): each write wakes
# CometBFT's socket client, whose flush timer then spins in Go's scheduler; fewer, larger
# bursts of answers cost it less CPU per tx (docs/benchmarks.md, "Session 9 (perf13tx)").
_WRITE_BATCH = 128
# Bytes a held mempool connection buffers before it gives way (see `_consensus_first`): where
# asyncio's own StreamReader would stop reading (twice its 64 KiB limit).
_HOLD_BUFFER = 1 << 17


class AbciApplication(Protocol):
    """What the server needs from `medledger.ledger.app.Application`."""

    def info(self) -> AppInfo: ...
    def init_chain(self) -> bytes: ...
    def genesis_validators(self) -> list[ValidatorUpdate]: ...
    def check_tx(self, tx: bytes, recheck: bool = False) -> TxResult: ...
    def proposal_order(self, txs: list[bytes], height: int) -> list[bytes]: ...
    def simulate_block(self, txs: list[bytes], height: int, time_ms: int) -> list[TxResult]: ...
    def finalize_block(
        self,
        txs: list[bytes],
        height: int,
        time_ms: int,
        consensus_hash: bytes = b"",
        proposer: bytes = b"",
    ) -> BlockOutcome: ...
    def commit(self) -> Any: ...
    def query(self, path: str, data: bytes) -> QueryResult: ...


def timestamp_ms(ts: Any) -> int:
    """A google.protobuf.Timestamp as integer milliseconds since the epoch (block time)."""
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def proto_txs_size(txs: Sequence[bytes]) -> int:
    """Bytes the txs take in a block's `Data` message, as CometBFT counts against max_tx_bytes.

    CometBFT (types.ComputeProtoSizeForTxs) counts each tx as a repeated-bytes field: one tag
    byte, the uvarint length and the bytes.
    """
    return sum(_tx_field_size(tx) for tx in txs)


def _tx_field_size(tx: bytes) -> int:
    return 1 + len(encode_uvarint(len(tx))) + len(tx)


def _txs_digest(height: int, time_ms: int, txs: Sequence[bytes]) -> bytes:
    h = hashlib.sha256(f"{height}:{time_ms}:{len(txs)}".encode())
    for tx in txs:
        h.update(len(tx).to_bytes(8, "big"))
        h.update(tx)
    return h.digest()


def _events(events: Sequence[Event]) -> list[Any]:
    return [
        abci.Event(
            type=e.type,
            attributes=[abci.EventAttribute(key=k, value=v, index=True) for k, v in e.attrs],
        )
        for e in events
    ]


_SHORT_LENGTHS = [bytes([n]) for n in range(128)]  # a uvarint under 128 is one byte


def _delimited(tag: bytes, body: bytes) -> bytes:
    """A length-delimited protobuf field: its key, the body's length, the body."""
    n = len(body)
    return tag + (_SHORT_LENGTHS[n] if n < 128 else encode_uvarint(n)) + body


def _event_bytes(event: Event) -> bytes:
    """An `abci.Event` as protobuf serializes it: type (1), then each attribute (2) with its
    key (1), value (2) and index = true (3); proto3 leaves empty strings out."""
    out = _delimited(b"\x0a", event.type.encode()) if event.type else b""
    for key, value in event.attrs:
        attr = (
            (_delimited(b"\x0a", key.encode()) if key else b"")
            + (_delimited(b"\x12", value.encode()) if value else b"")
            + b"\x18\x01"
        )
        out += _delimited(b"\x12", attr)
    return out


def exec_tx_result_bytes(result: TxResult) -> bytes:
    """An `abci.ExecTxResult` as protobuf serializes it: code (1), log (3), events (7), each
    left out when empty. FinalizeBlock answers one per tx: built by hand, a full block's
    results cost less than half of what building their protobuf messages did."""
    out = b"\x08" + encode_uvarint(result.code) if result.code else b""
    if result.log:
        out += _delimited(b"\x1a", result.log.encode())
    for event in result.events:
        out += _delimited(b"\x3a", _event_bytes(event))
    return out


def _uvarint_at(data: bytes, pos: int) -> tuple[int, int]:
    """The uvarint at `pos` and the position after it; (-1, pos) if it runs past the end."""
    value = shift = 0
    end = len(data)
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return -1, pos


def parse_check_tx_request(raw: bytes) -> tuple[bytes, bool] | None:
    """A serialized `Request` that is exactly a CheckTx as CometBFT writes one, as (tx,
    recheck); None for anything else (other methods, unknown fields, another field order, a
    type other than NEW or RECHECK), which then goes through protobuf's parser.

    Layout: the `check_tx` key, its length, then in the body the tx (1) and the type (2),
    each left out when empty or NEW, as proto3 writes them.
    """
    if not raw.startswith(_CHECK_TX_REQUEST_TAG):
        return None
    length, pos = _uvarint_at(raw, len(_CHECK_TX_REQUEST_TAG))
    end = len(raw)
    if length != end - pos:
        return None
    tx = b""
    if pos < end and raw[pos] == 0x0A:
        size, pos = _uvarint_at(raw, pos + 1)
        if size < 0 or pos + size > end:
            return None
        tx = raw[pos : pos + size]
        pos += size
    recheck = False
    if pos < end and raw[pos] == 0x10:
        if raw[pos + 1 : pos + 2] != b"\x01":  # RECHECK; NEW (0) is left out
            return None
        recheck = True
        pos += 2
    return (tx, recheck) if pos == end else None


def check_tx_response_bytes(code: int, log: str) -> bytes:
    """A serialized `Response` with `check_tx` set to code (1) and log (3), each left out when
    empty: byte for byte what protobuf writes (a test compares). An acceptance, nearly every
    answer, is one constant."""
    if not code and not log:
        return _CHECK_TX_ACCEPTED
    body = b"\x08" + encode_uvarint(code) if code else b""
    if log:
        body += _delimited(b"\x1a", log.encode())
    return _CHECK_TX_RESPONSE_TAG + encode_uvarint(len(body)) + body


class _Serialized:
    """An answer already serialized (`handle_bytes` writes it as is; `handle` parses it)."""

    __slots__ = ("cls", "data")

    def __init__(self, cls: Any, data: bytes) -> None:
        self.cls = cls
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
        return self.data

    def parsed(self) -> Any:
        return self.cls.FromString(self.data)


def _validator_updates(updates: Sequence[ValidatorUpdate]) -> list[Any]:
    out = []
    for u in updates:
        if len(u.pub_key) != 32:
            raise ValueError(f"validator key of {len(u.pub_key)} bytes; Ed25519 keys are 32")
        out.append(
            abci.ValidatorUpdate(pub_key=crypto_keys.PublicKey(ed25519=u.pub_key), power=u.power)
        )
    return out


_MEMPOOL_METHODS = frozenset({"check_tx", "flush", "echo"})

# Each Response field's protobuf key (field number, wire type 2: a length-delimited message).
_RESPONSE_TAGS = {
    f.name: encode_uvarint(f.number << 3 | 2) for f in abci.Response.DESCRIPTOR.fields
}
_CHECK_TX_REQUEST_TAG = encode_uvarint(
    abci.Request.DESCRIPTOR.fields_by_name["check_tx"].number << 3 | 2
)
_CHECK_TX_RESPONSE_TAG = _RESPONSE_TAGS["check_tx"]
_FLUSH_REQUEST = bytes(abci.Request(flush=abci.RequestFlush()).SerializeToString())
_FLUSH_RESPONSE = bytes(abci.Response(flush=abci.ResponseFlush()).SerializeToString())
_CHECK_TX_ACCEPTED = _CHECK_TX_RESPONSE_TAG + b"\x00"  # check_tx set, empty: code 0, no log
# The mempool stream's two usual answers framed once: each tx brings a CheckTx and a Flush.
_FRAMED = {answer: frame(answer) for answer in (_FLUSH_RESPONSE, _CHECK_TX_ACCEPTED)}


@dataclass
class _Connection:
    """What one socket has carried: only CheckTx (with flushes) makes it the mempool one."""

    check_tx: bool = False
    other: bool = False

    def saw(self, method: str | None) -> None:
        if method == "check_tx":
            self.check_tx = True
        elif method not in _MEMPOOL_METHODS:
            self.other = True

    @property
    def is_mempool(self) -> bool:
        return self.check_tx and not self.other


@dataclass
class ServerStats:
    """Counters for logs and benchmarks: what CometBFT asked, what we refused, and the CPU
    time each kind of request took (rechecks counted apart from first checks)."""

    requests: int = 0
    check_tx: int = 0
    check_tx_rejected: int = 0
    prepared_dropped: int = 0
    proposals_rejected: int = 0
    exceptions: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)

    untimed: dict[str, int] = field(default_factory=dict)  # calls since the last `spread`
    # Reads on the mempool connection: CheckTx per read says how many requests each wake of
    # the serving thread carried (the fewer, the colder its caches: docs/benchmarks.md).
    mempool_reads: int = 0

    def count(self, kind: str, cpu_s: float) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.cpu_s[kind] = self.cpu_s.get(kind, 0.0) + cpu_s

    def count_untimed(self, kind: str) -> None:
        """A call whose CPU time comes with its batch's (`spread`): reading a thread's CPU
        clock is a system call, as dear as a sixth of the server's own work per CheckTx."""
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.untimed[kind] = self.untimed.get(kind, 0) + 1

    def spread(self, cpu_s: float) -> None:
        """A batch's CPU time, shared among its untimed calls in proportion to their number."""
        total = sum(self.untimed.values())
        for kind, n in self.untimed.items():
            self.cpu_s[kind] = self.cpu_s.get(kind, 0.0) + cpu_s * n / total
        self.untimed.clear()

    def summary(self, thread_cpu_s: float | None = None) -> str:
        """One log line: calls, total CPU ms and µs per call for each kind of request; with
        `thread_cpu_s` (the serving thread's CPU over the same interval), also `server`: what
        that thread spent outside the application's methods (framing, parsing, answers,
        socket reads and writes, the event loop), in ms and µs per CheckTx."""
        parts = []
        for kind in sorted(self.cpu_s, key=self.cpu_s.__getitem__, reverse=True):
            n, cpu = self.calls[kind], self.cpu_s[kind]
            parts.append(f"{kind} {n}x {cpu * 1e3:.0f}ms ({cpu / n * 1e6:.0f}us)")
        checks = self.calls.get("check_tx", 0) + self.calls.get("recheck_tx", 0)
        if thread_cpu_s is not None:
            rest = max(0.0, thread_cpu_s - sum(self.cpu_s.values()))
            per = f" ({rest / checks * 1e6:.0f}us per CheckTx)" if checks else ""
            parts.append(f"server {rest * 1e3:.0f}ms{per}")
        if checks and self.mempool_reads:
            parts.append(f"{checks / self.mempool_reads:.1f} CheckTx per read")
        return ", ".join(parts)

    def reset_timing(self) -> None:
        self.calls.clear()
        self.cpu_s.clear()
        self.untimed.clear()
        self.mempool_reads = 0


class AbciServer:
    """Answers CometBFT's ABCI requests from one medledger application.

    `handle` is the pure request -> response part (synchronous, usable without sockets);
    `start`/`close` run it on an asyncio TCP or unix socket.
    """

    def __init__(
        self,
        app: AbciApplication,
        lock: Any = None,
        stats_interval_s: float = 60.0,
        proposal_hold_s: float = 1.0,
    ) -> None:
        self.app = app
        self.stats_interval_s = stats_interval_s
        # Longest a proposal holds the mempool connection (see `_consensus_first`).
        self.proposal_hold_s = proposal_hold_s
        self._stats_since = time.monotonic()
        self._stats_thread_cpu: float | None = None  # the serving thread's CPU at `_stats_since`
        # The application's own lock when it has one, so that everyone who touches it in this
        # process (engine, API, sync agent) is serialised with CometBFT's calls.
        if lock is None:
            lock = getattr(app, "lock", None) or threading.RLock()
        self.lock = lock
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        # The proposal this node prepared last, so its own ProcessProposal does not re-simulate.
        self._prepared: bytes | None = None
        self._proposal_deadline = 0.0
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "echo": self._echo,
            "flush": self._flush,
            "info": self._info,
            "init_chain": self._init_chain,
            "query": self._query,
            "check_tx": self._check_tx,
            "commit": self._commit,
            "list_snapshots": self._list_snapshots,
            "offer_snapshot": self._offer_snapshot,
            "load_snapshot_chunk": self._load_snapshot_chunk,
            "apply_snapshot_chunk": self._apply_snapshot_chunk,
            "prepare_proposal": self._prepare_proposal,
            "process_proposal": self._process_proposal,
            "extend_vote": self._extend_vote,
            "verify_vote_extension": self._verify_vote_extension,
            "finalize_block": self._finalize_block,
        }

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: Any) -> Any:
        """Answer one `abci.Request` with one `abci.Response` (an exception response on error)."""
        method, answer = self._answer(request)
        if isinstance(answer, _Serialized):
            answer = answer.parsed()
        return abci.Response(**{method: answer})

    def _answer(self, request: Any) -> tuple[str, Any]:
        """The Response field to set and its message: the method's answer, or "exception"."""
        self.stats.requests += 1
        method = request.WhichOneof("value")
        handler = self._handlers.get(method) if method else None
        if handler is None:
            self.stats.exceptions += 1
            log.error("ABCI request with no known method: %r", method)
            return "exception", abci.ResponseException(error=f"unknown {method!r}")
        body = getattr(request, method)
        started = time.thread_time()
        try:
            answer = handler(body)
        except Exception as exc:
            self.stats.exceptions += 1
            log.exception("ABCI %s failed; answering with an exception response", method)
            return "exception", abci.ResponseException(
                error=f"{method}: {type(exc).__name__}: {exc}"
            )
        kind = "recheck_tx" if method == "check_tx" and body.type == abci.RECHECK else method
        self.stats.count(kind, time.thread_time() - started)
        return method, answer

    def handle_bytes(
        self, raw: bytes, connection: _Connection | None = None, timed: bool = True
    ) -> bytes:
        """Serialized request in, serialized response out (no framing).

        `connection` learns from its requests which of CometBFT's connections it is. The
        response is written as protobuf lays out a message with one field set (its tag, its
        length, the answer's bytes), without building a `Response` around the answer: that
        copy cost more than the rest of the ABCI handling of a CheckTx. A Flush, which
        CometBFT's socket client sends after nearly every request, is answered from constants.
        `timed=False`: a CheckTx's CPU time is left to the caller, who times a whole batch of
        them (`ServerStats.spread`).
        """
        if raw == _FLUSH_REQUEST:
            self.stats.requests += 1
            if connection is not None:
                connection.saw("flush")
            return _FLUSH_RESPONSE
        check = parse_check_tx_request(raw)
        if check is not None:
            # The mempool's stream, one per tx: parsed and answered by hand (no Request or
            # Response message built), the same checks and counters as `_answer`.
            self.stats.requests += 1
            if connection is not None:
                connection.saw("check_tx")
            kind = "recheck_tx" if check[1] else "check_tx"
            if not timed:
                self.stats.count_untimed(kind)
                code, text = self._check_tx_outcome(check[0], check[1])
                return check_tx_response_bytes(code, text)
            started = time.thread_time()
            code, text = self._check_tx_outcome(check[0], check[1])
            self.stats.count(kind, time.thread_time() - started)
            return check_tx_response_bytes(code, text)
        request = abci.Request()
        try:
            request.ParseFromString(raw)
        except Exception as exc:  # protobuf's DecodeError, or anything the parser raises
            self.stats.exceptions += 1
            log.error("undecodable ABCI request (%d bytes): %s", len(raw), exc)
            response = abci.Response(exception=abci.ResponseException(error=f"decode: {exc}"))
            return bytes(response.SerializeToString())
        if connection is not None:
            connection.saw(request.WhichOneof("value"))
        method, answer = self._answer(request)
        body: bytes = answer.SerializeToString()
        return _RESPONSE_TAGS[method] + encode_uvarint(len(body)) + body

    # ------------------------------------------------------------------ methods

    def _echo(self, req: Any) -> Any:
        return abci.ResponseEcho(message=req.message)

    def _flush(self, req: Any) -> Any:
        return abci.ResponseFlush()

    def _info(self, req: Any) -> Any:
        with self.lock:
            info = self.app.info()
        return abci.ResponseInfo(
            data=APP_NAME,
            version=_package_version(),
            app_version=APP_VERSION,
            last_block_height=info.height,
            last_block_app_hash=info.app_hash,
        )

    def _init_chain(self, req: Any) -> Any:
        with self.lock:
            app_hash = self.app.init_chain()
            validators = self.app.genesis_validators()
        ours = sorted((v.pub_key, v.power) for v in validators)
        theirs = sorted((v.pub_key.ed25519, v.power) for v in req.validators)
        if validators and ours != theirs:
            # CometBFT will take the app's set; say so, since it usually means the two
            # genesis files were not written from the same list of hospitals.
            log.warning(
                "InitChain: CometBFT genesis has %d validators, the ledger genesis %d; "
                "the ledger's set is used",
                len(theirs),
                len(ours),
            )
        return abci.ResponseInitChain(app_hash=app_hash, validators=_validator_updates(validators))

    def _query(self, req: Any) -> Any:
        try:
            with self.lock:
                result = self.app.query(req.path, bytes(req.data))
        except Exception as exc:
            log.exception("Query %r raised", req.path)
            return abci.ResponseQuery(
                code=INTERNAL_ERROR, log=f"internal error: {type(exc).__name__}: {exc}"
            )
        return abci.ResponseQuery(
            code=result.code, value=result.value, log=result.log, height=result.height
        )

    def _check_tx(self, req: Any) -> Any:
        code, text = self._check_tx_outcome(bytes(req.tx), req.type == abci.RECHECK)
        return abci.ResponseCheckTx(code=code, log=text)

    def _check_tx_outcome(self, tx: bytes, recheck: bool) -> tuple[int, str]:
        """CheckTx's code and log. CheckTx events are left out: CometBFT v0.38 neither
        indexes nor uses them, and converting them cost a few percent of the app's CPU."""
        self.stats.check_tx += 1
        try:
            with self.lock:
                result = self.app.check_tx(tx, recheck=recheck)
        except Exception as exc:
            log.exception("CheckTx raised on a %d-byte tx", len(tx))
            self.stats.check_tx_rejected += 1
            return INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"
        if result.code != 0:
            self.stats.check_tx_rejected += 1
        return result.code, result.log

    def _prepare_proposal(self, req: Any) -> Any:
        self._proposal_started()
        txs = [bytes(tx) for tx in req.txs]
        time_ms = timestamp_ms(req.time)
        offered = len(txs)
        with self.lock:
            # Each signer's txs in nonce order, a gapped nonce held back: else n + 1 proposed
            # before n would spend n for ever (ledger/proposal.py).
            txs = self.app.proposal_order(txs, req.height) if txs else []
            results = self.app.simulate_block(txs, req.height, time_ms) if txs else []
        if offered > len(txs):
            held = offered - len(txs)
            log.info("PrepareProposal h=%d: held back %d gapped txs", req.height, held)
        if len(results) != len(txs):
            raise RuntimeError(f"simulate_block gave {len(results)} results for {len(txs)} txs")
        kept: list[bytes] = []
        size = 0
        for tx, result in zip(txs, results, strict=True):
            if result.code != 0:
                continue
            tx_size = _tx_field_size(tx)
            if size + tx_size > req.max_tx_bytes:
                # Stop rather than skip: later txs were simulated after this one, so they may
                # depend on it (a nonce, a record it creates).
                break
            kept.append(tx)
            size += tx_size
        dropped = len(txs) - len(kept)
        if dropped:
            self.stats.prepared_dropped += dropped
            log.info("PrepareProposal h=%d: dropped %d of %d txs", req.height, dropped, len(txs))
        self._prepared = _txs_digest(req.height, time_ms, kept)
        return abci.ResponsePrepareProposal(txs=kept)

    def _process_proposal(self, req: Any) -> Any:
        self._proposal_started()
        txs = [bytes(tx) for tx in req.txs]
        time_ms = timestamp_ms(req.time)
        if not txs or self._prepared == _txs_digest(req.height, time_ms, txs):
            # Our own proposal: every tx was just simulated valid on this same state.
            return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)
        with self.lock:
            results = self.app.simulate_block(txs, req.height, time_ms)
        bad = [i for i, r in enumerate(results) if r.code != 0]
        if bad or len(results) != len(txs):
            self.stats.proposals_rejected += 1
            first = results[bad[0]] if bad else None
            log.warning(
                "ProcessProposal h=%d: rejecting a block with %d invalid txs of %d (first: %s)",
                req.height,
                len(bad),
                len(txs),
                f"code {first.code} {first.log}" if first else "result count mismatch",
            )
            return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.REJECT)
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def _finalize_block(self, req: Any) -> Any:
        self._proposal_decided()
        txs = [bytes(tx) for tx in req.txs]
        with self.lock:
            # Positional: the block hash is the record's consensus_hash, the proposer its
            # CometBFT address (20 bytes).
            outcome = self.app.finalize_block(
                txs,
                req.height,
                timestamp_ms(req.time),
                bytes(req.hash),
                bytes(req.proposer_address),
            )
        if len(outcome.results) != len(txs):
            raise RuntimeError(
                f"finalize_block gave {len(outcome.results)} results for {len(txs)} txs"
            )
        # Field order as protobuf writes it: events (1), tx_results (2), then the rest.
        head = abci.ResponseFinalizeBlock(events=_events(getattr(outcome, "events", ())))
        tail = abci.ResponseFinalizeBlock(
            validator_updates=_validator_updates(outcome.validator_updates),
            app_hash=outcome.app_hash,
        )
        results = b"".join(_delimited(b"\x12", exec_tx_result_bytes(r)) for r in outcome.results)
        return _Serialized(
            abci.ResponseFinalizeBlock,
            head.SerializeToString() + results + tail.SerializeToString(),
        )

    def _commit(self, req: Any) -> Any:
        self._prepared = None
        with self.lock:
            self.app.commit()
        now = time.monotonic()
        if now - self._stats_since >= self.stats_interval_s:
            # Where this node's CPU went since the last line: operators see what a load costs
            # (first checks, rechecks, proposals, blocks, the server around them) without a
            # profiler. Commit runs on the serving thread: its CPU clock is that thread's.
            thread_cpu = time.thread_time()
            since = self._stats_thread_cpu
            spent = None if since is None else thread_cpu - since
            log.info("ABCI last %.0fs: %s", now - self._stats_since, self.stats.summary(spent))
            self.stats.reset_timing()
            self._stats_since = now
            self._stats_thread_cpu = thread_cpu
        elif self._stats_thread_cpu is None:
            self._stats_thread_cpu = time.thread_time()
            self.stats.reset_timing()
            self._stats_since = now
        return abci.ResponseCommit(retain_height=0)

    # Vote extensions are disabled (vote_extensions_enable_height = 0): CometBFT never calls
    # these two, but every v0.38 method gets an answer.
    def _extend_vote(self, req: Any) -> Any:
        return abci.ResponseExtendVote(vote_extension=b"")

    def _verify_vote_extension(self, req: Any) -> Any:
        status = (
            abci.ResponseVerifyVoteExtension.REJECT
            if req.vote_extension
            else abci.ResponseVerifyVoteExtension.ACCEPT
        )
        return abci.ResponseVerifyVoteExtension(status=status)

    # State sync is not offered: new hospitals replay the chain with block sync, which
    # re-executes (and so re-verifies) every block. These answers make that explicit.
    def _list_snapshots(self, req: Any) -> Any:
        return abci.ResponseListSnapshots()

    def _offer_snapshot(self, req: Any) -> Any:
        return abci.ResponseOfferSnapshot(result=abci.ResponseOfferSnapshot.REJECT)

    def _load_snapshot_chunk(self, req: Any) -> Any:
        return abci.ResponseLoadSnapshotChunk()

    def _apply_snapshot_chunk(self, req: Any) -> Any:
        return abci.ResponseApplySnapshotChunk(result=abci.ResponseApplySnapshotChunk.ABORT)

    # ------------------------------------------------------------------ scheduling

    def _proposal_started(self) -> None:
        self._proposal_deadline = time.monotonic() + self.proposal_hold_s

    def _proposal_decided(self) -> None:
        self._proposal_deadline = 0.0

    def _consensus_first(self, buffered: int) -> float:
        """How long the mempool connection is held now (0: not held): while this node works on
        a proposal.

        From PrepareProposal or ProcessProposal to FinalizeBlock, a height is waiting for this
        node's verdict and its votes; new txs cannot enter that block anyway. Checking them
        meanwhile only takes CPU from the proposal (on a shared machine, from the other
        nodes' too). Measured: p95 commit latency at 500 tx/s fell by about 0.1 s
        (docs/benchmarks.md).

        The connection keeps reading meanwhile, and the hold gives way once `buffered` (its
        bytes read and not answered) reaches `_HOLD_BUFFER`: a CometBFT whose writes to the
        app blocked would block the peers' receive routines that call CheckTx, and the votes
        they carry. Otherwise it ends at FinalizeBlock (CometBFT flushes this connection only
        before Commit, after it), or after `proposal_hold_s` for a round that never finalizes.
        """
        if not self._proposal_deadline or buffered >= _HOLD_BUFFER:
            return 0.0
        return max(0.0, self._proposal_deadline - time.monotonic())

    # ------------------------------------------------------------------ sockets

    async def start(self, address: str) -> None:
        """Listen on `tcp://HOST:PORT` or `unix://PATH`; returns once bound."""
        kind, where = parse_address(address)
        loop = asyncio.get_running_loop()
        if kind == "unix":
            path = Path(where)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._server = await loop.create_unix_server(self._protocol, path=str(path))
        else:
            host, port = where
            self._server = await loop.create_server(
                self._protocol, host=host, port=port, reuse_address=True
            )
        log.info("ABCI server listening on %s", address)

    @property
    def bound_address(self) -> str:
        """The address actually bound (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        sock = self._server.sockets[0]
        name = sock.getsockname()
        if isinstance(name, tuple):
            return f"tcp://{name[0]}:{name[1]}"
        return f"unix://{name}"

    async def close(self) -> None:
        """Stop listening and drop every connection (CometBFT will see them close)."""
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def _protocol(self) -> _AbciProtocol:
        return _AbciProtocol(self)


class _AbciProtocol(asyncio.Protocol):
    """One CometBFT connection, answered from the event loop's own callbacks.

    Each read parses every complete frame it completed, answers them in order and writes the
    answers at once; a burst is answered `_SLICE` requests at a time, the other connections
    running between slices. No StreamReader, no task woken per read: with CometBFT's
    CheckTx-then-Flush pairs that machinery cost several times the server's own work per tx
    (docs/benchmarks.md, "Session 8"). A peer that does not read its answers stops this
    connection's reading until it does (`pause_writing`).
    """

    def __init__(self, server: AbciServer) -> None:
        self.server = server
        self.buf = bytearray()  # bytes read, not yet a whole frame
        self.pending: list[bytes] = []  # whole frames not yet answered, in order
        self.out: list[bytes] = []  # answers not yet written (mempool connection), in order
        self.connection = _Connection()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = "unix"
        self.scheduled = False  # a call to `_answer` is due (next slice, or a hold's end)
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._transports.add(transport)
        self.peer = transport.get_extra_info("peername") or "unix"
        log.debug("ABCI connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._transports.discard(self.transport)
        self.transport = None
        self.pending.clear()
        self.out.clear()
        log.debug("ABCI connection from %s closed", self.peer)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None:
            self.transport.resume_reading()
        self._answer()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self.pending += split_frames(self.buf)
        except FramingError as exc:
            log.error("ABCI connection from %s: %s; closing it", self.peer, exc)
            self.pending.clear()
            if self.transport is not None:
                self.transport.close()
            return
        if not self.scheduled:
            self._answer()
        if self.connection.is_mempool:  # known once its first request was answered
            self.server.stats.mempool_reads += 1

    def _answer(self) -> None:
        """Answer the next slice of pending requests, unless held or the peer is not reading."""
        self.scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing() or self.write_paused:
            return  # resume_writing answers again
        if not self.pending:
            self._write_out(transport)
            return
        server = self.server
        loop = asyncio.get_running_loop()
        if self.connection.is_mempool and server._proposal_deadline:
            held = server._consensus_first(len(self.buf) + sum(map(len, self.pending)))
            if held > 0:
                self._write_out(transport)  # what was answered goes out before the hold
                self.scheduled = True
                loop.call_later(min(held, 0.005), self._answer)
                return
        part = self.pending[:_SLICE]
        del self.pending[:_SLICE]
        connection = self.connection
        try:
            if connection.is_mempool:  # CheckTx and Flush: the CPU clock read once per slice
                started = time.thread_time()
                answers = [server.handle_bytes(m, connection, timed=False) for m in part]
                self.out += [_FRAMED.get(a) or frame(a) for a in answers]
                server.stats.spread(time.thread_time() - started)
            else:
                self.out += [frame(server.handle_bytes(m, connection)) for m in part]
        except Exception:  # requests left unanswered: CometBFT must see the connection end
            log.exception("ABCI connection from %s: answering failed; closing it", self.peer)
            self.pending.clear()
            self.out.clear()
            transport.close()
            return
        if not self.pending or not connection.is_mempool or len(self.out) >= _WRITE_BATCH:
            self._write_out(transport)
        if self.pending:
            # Let the other connections run between slices: a burst of CheckTx on the mempool
            # connection must not hold up the consensus connection.
            self.scheduled = True
            loop.call_soon(self._answer)

    def _write_out(self, transport: asyncio.Transport) -> None:
        if self.out:
            transport.write(b"".join(self.out))
            self.out.clear()


class AbciServerThread:
    """Runs an `AbciServer` on its own event loop in a daemon thread.

    The node process's main thread stays free for the API and the engine's callers; the
    loop thread is the only one that talks to CometBFT.
    """

    def __init__(self, server: AbciServer, address: str) -> None:
        self.server = server
        self.address = address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="abci-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"ABCI server did not bind {self.address} within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"ABCI server could not listen on {self.address}") from self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.start(self.address))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.close())
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    @property
    def bound_address(self) -> str:
        return self.server.bound_address


def parse_address(address: str) -> tuple[str, Any]:
    """`tcp://host:port` -> ("tcp", (host, port)); `unix://path` -> ("unix", path)."""
    if address.startswith("unix://"):
        return "unix", address[len("unix://") :]
    rest = address[len("tcp://") :] if address.startswith("tcp://") else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not an ABCI address: {address!r} (tcp://HOST:PORT or unix://PATH)")
    return "tcp", (host, int(port))


@functools.cache
def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("medledger")
    except Exception:
        return "0"
