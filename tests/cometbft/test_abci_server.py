"""The ABCI socket server without CometBFT: framing, every v0.38 method, order, errors."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.consensus.cometbft import abci_server, engine
from medledger.consensus.cometbft.abci_proto import abci
from medledger.consensus.cometbft.abci_server import (
    INTERNAL_ERROR,
    AbciServer,
    AbciServerThread,
    check_tx_response_bytes,
    parse_address,
    parse_check_tx_request,
    proto_txs_size,
)
from medledger.consensus.cometbft.framing import (
    FramingError,
    encode_uvarint,
    frame,
    split_frames,
)
from medledger.ledger.results import TxResult

from .fake_app import GENESIS_HASH, FakeApp


def test_uvarint_matches_go_encoding() -> None:
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(127) == b"\x7f"
    assert encode_uvarint(128) == b"\x80\x01"
    assert encode_uvarint(300) == b"\xac\x02"
    assert encode_uvarint(2**63) == b"\x80" * 9 + b"\x01"


def test_split_frames_keeps_partial_tail() -> None:
    data = frame(b"abc") + frame(b"x" * 200) + frame(b"")
    buf = bytearray(data[:-1])  # the last (empty) frame's length byte is missing
    assert split_frames(buf) == [b"abc", b"x" * 200]
    assert buf == b""
    buf += data[-1:]
    assert split_frames(buf) == [b""]
    half = bytearray(frame(b"y" * 300)[:2])
    assert split_frames(half) == [] and len(half) == 2


def test_split_frames_refuses_oversized_and_garbage_lengths() -> None:
    with pytest.raises(FramingError):
        split_frames(bytearray(encode_uvarint(200 * 1024 * 1024)))
    with pytest.raises(FramingError):
        split_frames(bytearray(b"\xff" * 11))


@pytest.fixture
def app(tmp_path: Path) -> FakeApp:
    return FakeApp.open(tmp_path)


@pytest.fixture
def served(app: FakeApp) -> Iterator[tuple[AbciServer, str]]:
    server = AbciServer(app)
    thread = AbciServerThread(server, "tcp://127.0.0.1:0")
    thread.start()
    try:
        yield server, thread.bound_address
    finally:
        thread.stop()


def _roundtrip(address: str, requests: list[Any], chunk: int = 0) -> list[Any]:
    """Send pipelined requests on one connection (optionally in tiny pieces); read answers."""
    _, (host, port) = parse_address(address)
    payload = b"".join(frame(r.SerializeToString()) for r in requests)
    answers: list[object] = []
    with socket.create_connection((host, port), timeout=10) as s:
        if chunk:
            for i in range(0, len(payload), chunk):
                s.sendall(payload[i : i + chunk])
        else:
            s.sendall(payload)
        buf = bytearray()
        while len(answers) < len(requests):
            data = s.recv(65536)
            assert data, "server closed the connection"
            buf += data
            answers += [abci.Response.FromString(m) for m in split_frames(buf)]
    return answers


def _ts(ms: int) -> dict[str, int]:
    return {"seconds": ms // 1000, "nanos": (ms % 1000) * 1_000_000}


def _every_method() -> list[Any]:
    return [
        abci.Request(echo=abci.RequestEcho(message="hi")),
        abci.Request(flush=abci.RequestFlush()),
        abci.Request(info=abci.RequestInfo(version="0.38.25")),
        abci.Request(init_chain=abci.RequestInitChain(chain_id="t", initial_height=1)),
        abci.Request(query=abci.RequestQuery(path="/get", data=b"k")),
        abci.Request(check_tx=abci.RequestCheckTx(tx=b"k=v")),
        abci.Request(list_snapshots=abci.RequestListSnapshots()),
        abci.Request(offer_snapshot=abci.RequestOfferSnapshot()),
        abci.Request(load_snapshot_chunk=abci.RequestLoadSnapshotChunk()),
        abci.Request(apply_snapshot_chunk=abci.RequestApplySnapshotChunk()),
        abci.Request(
            prepare_proposal=abci.RequestPrepareProposal(
                max_tx_bytes=1 << 20, txs=[b"k=v"], height=1, time=_ts(1_000)
            )
        ),
        abci.Request(
            process_proposal=abci.RequestProcessProposal(txs=[b"k=v"], height=1, time=_ts(1_000))
        ),
        abci.Request(extend_vote=abci.RequestExtendVote(height=1)),
        abci.Request(verify_vote_extension=abci.RequestVerifyVoteExtension(height=1)),
        abci.Request(
            finalize_block=abci.RequestFinalizeBlock(
                txs=[b"k=v"], height=1, time=_ts(1_000), hash=b"\x01" * 32
            )
        ),
        abci.Request(commit=abci.RequestCommit()),
        abci.Request(info=abci.RequestInfo()),
        abci.Request(query=abci.RequestQuery(path="/get", data=b"k")),
        abci.Request(flush=abci.RequestFlush()),
    ]


def test_every_v038_method_is_answered_in_order(served: tuple[AbciServer, str]) -> None:
    server, address = served
    requests = _every_method()
    answers = _roundtrip(address, requests)
    assert [a.WhichOneof("value") for a in answers] == [r.WhichOneof("value") for r in requests]
    by_index = {i: a for i, a in enumerate(answers)}
    assert by_index[0].echo.message == "hi"
    assert by_index[2].info.last_block_height == 0
    assert by_index[3].init_chain.app_hash == GENESIS_HASH
    assert by_index[4].query.code == 10  # not found yet
    assert by_index[5].check_tx.code == 0
    assert list(by_index[10].prepare_proposal.txs) == [b"k=v"]
    accept = abci.ResponseProcessProposal.ACCEPT
    assert by_index[11].process_proposal.status == accept
    fin = by_index[14].finalize_block
    assert [r.code for r in fin.tx_results] == [0] and len(fin.app_hash) == 32
    after = by_index[16].info
    assert (after.last_block_height, after.last_block_app_hash) == (1, fin.app_hash)
    assert by_index[17].query.value == b"v"
    assert server.stats.exceptions == 0


def test_requests_split_across_reads_are_reassembled(served: tuple[AbciServer, str]) -> None:
    _, address = served
    requests = [abci.Request(echo=abci.RequestEcho(message=f"m{i}" * 50)) for i in range(20)]
    answers = _roundtrip(address, requests, chunk=7)
    assert [a.echo.message for a in answers] == [f"m{i}" * 50 for i in range(20)]


def test_four_connections_at_once_each_get_their_answers(
    served: tuple[AbciServer, str],
) -> None:
    _, address = served
    results: dict[int, list[str]] = {}

    def client(n: int) -> None:
        reqs = [abci.Request(echo=abci.RequestEcho(message=f"{n}-{i}")) for i in range(300)]
        results[n] = [a.echo.message for a in _roundtrip(address, reqs)]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert {n: r for n, r in results.items()} == {
        n: [f"{n}-{i}" for i in range(300)] for n in range(4)
    }


def test_a_peer_that_stops_reading_stops_being_read_and_loses_no_answer(
    served: tuple[AbciServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While CometBFT does not read its answers, the server stops reading its requests
    (else the answers would pile up in memory); once it reads again, every answer comes, in
    order."""
    paused = threading.Event()
    pause = abci_server._AbciProtocol.pause_writing

    def pause_writing(self: Any) -> None:
        paused.set()
        pause(self)

    monkeypatch.setattr(abci_server._AbciProtocol, "pause_writing", pause_writing)
    _, address = served
    _, (host, port) = parse_address(address)
    n = 1_500
    echoes = [
        abci.Request(echo=abci.RequestEcho(message=f"{i:05d}" + "x" * 8_000)) for i in range(n)
    ]
    burst = b"".join(frame(r.SerializeToString()) for r in echoes)
    with socket.create_connection((host, port), timeout=30) as s:
        sender = threading.Thread(target=s.sendall, args=(burst,))
        sender.start()
        assert paused.wait(30)  # the answers filled the socket: the server stopped
        buf = bytearray()
        answers: list[Any] = []
        while len(answers) < n:
            data = s.recv(1 << 16)
            assert data, "server closed the connection"
            buf += data
            answers += [abci.Response.FromString(m) for m in split_frames(buf)]
        sender.join(30)
    assert [a.echo.message[:5] for a in answers] == [f"{i:05d}" for i in range(n)]


def test_check_tx_runs_the_app_and_reports_its_code(served: tuple[AbciServer, str]) -> None:
    _, address = served
    reqs = [
        abci.Request(check_tx=abci.RequestCheckTx(tx=b"a=1")),
        abci.Request(check_tx=abci.RequestCheckTx(tx=b"bad=1")),
        abci.Request(check_tx=abci.RequestCheckTx(tx=b"garbage", type=abci.RECHECK)),
        abci.Request(check_tx=abci.RequestCheckTx(tx=b"explode")),
    ]
    codes = [(a.check_tx.code, a.check_tx.log) for a in _roundtrip(address, reqs)]
    assert codes[:3] == [(0, ""), (4, "bad tx"), (1, "malformed")]
    # An app exception on untrusted input is a refusal, not a node-stopping exception.
    assert codes[3][0] == INTERNAL_ERROR and "RuntimeError" in codes[3][1]


def test_stats_count_rechecks_apart_and_log_a_summary(
    app: FakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    server = AbciServer(app, stats_interval_s=0)
    for tx, kind in ((b"a=1", abci.NEW), (b"b=2", abci.NEW), (b"a=1", abci.RECHECK)):
        server.handle(abci.Request(check_tx=abci.RequestCheckTx(tx=tx, type=kind)))
    assert server.stats.calls == {"check_tx": 2, "recheck_tx": 1}
    assert set(server.stats.cpu_s) == {"check_tx", "recheck_tx"}
    server.handle(abci.Request(finalize_block=abci.RequestFinalizeBlock(height=1, time=_ts(9))))
    with caplog.at_level("INFO", logger="medledger.consensus.cometbft.abci_server"):
        server.handle(abci.Request(commit=abci.RequestCommit()))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ABCI last"))
    assert "check_tx 2x" in line and "recheck_tx 1x" in line and "finalize_block 1x" in line
    # The counters restart: the commit that logged the line is the next interval's first call.
    assert server.stats.calls == {"commit": 1}


def test_a_request_the_server_fails_to_answer_ends_the_connection(
    served: tuple[AbciServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers go in request order, so one the server cannot give would leave CometBFT
    waiting for ever: the connection is closed instead (CometBFT then stops the node)."""
    server, address = served

    def broken(raw: bytes, connection: Any = None, timed: bool = True) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "handle_bytes", broken)
    _, (host, port) = parse_address(address)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(frame(abci.Request(echo=abci.RequestEcho(message="hi")).SerializeToString()))
        assert s.recv(1024) == b""  # closed, not left hanging


def test_check_tx_over_the_mempool_connection_is_counted_and_timed_per_batch(
    served: tuple[AbciServer, str],
) -> None:
    """The mempool connection's CheckTx calls are timed a batch at a time (a thread's CPU
    clock is a system call): every call is counted, and the batch's CPU is theirs."""
    server, address = served
    checks = [_check(b"k%d=v" % i) for i in range(200)] + [abci.Request(flush=abci.RequestFlush())]
    answers = _roundtrip(address, checks)
    assert [a.check_tx.code for a in answers[:-1]] == [0] * 200
    assert server.stats.calls["check_tx"] == 200
    assert server.stats.cpu_s["check_tx"] > 0 and not server.stats.untimed


def test_the_stats_line_tells_the_server_rest_and_check_tx_per_read(
    served: tuple[AbciServer, str],
) -> None:
    """Given the serving thread's CPU over the interval, the line also says what it spent
    outside the app's methods (framing, the loop, socket writes) and how many CheckTx each
    read of the mempool connection carried: where a node's CPU goes beyond its app path."""
    server, address = served
    checks = [_check(b"k%d=v" % i) for i in range(200)] + [abci.Request(flush=abci.RequestFlush())]
    assert [a.check_tx.code for a in _roundtrip(address, checks)[:-1]] == [0] * 200
    reads = server.stats.mempool_reads
    assert 1 <= reads <= 200
    in_methods = sum(server.stats.cpu_s.values())
    line = server.stats.summary(thread_cpu_s=in_methods + 0.004)
    assert "check_tx 200x" in line
    assert "server 4ms (20us per CheckTx)" in line
    assert f"{200 / reads:.1f} CheckTx per read" in line
    # Without the thread's CPU the line is the methods alone; the read count still shows.
    assert "server" not in server.stats.summary()
    server.stats.reset_timing()
    assert server.stats.mempool_reads == 0


def test_commit_logs_the_server_rest_from_the_second_interval_on(
    app: FakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    """The serving thread's CPU clock is read at each logged commit: the first line has no
    baseline, the next ones say what the server spent beside the methods."""
    server = AbciServer(app, stats_interval_s=0)
    with caplog.at_level("INFO", logger="medledger.consensus.cometbft.abci_server"):
        for height in (1, 2):
            server.handle(abci.Request(check_tx=abci.RequestCheckTx(tx=b"a=%d" % height)))
            finalize = abci.RequestFinalizeBlock(height=height, time=_ts(height * 1000))
            server.handle(abci.Request(finalize_block=finalize))
            server.handle(abci.Request(commit=abci.RequestCommit()))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ABCI last")]
    assert len(lines) == 2
    assert "server" not in lines[0]
    assert "check_tx 1x" in lines[1] and "server " in lines[1] and "1 CheckTx per" not in lines[1]


def test_an_accepted_check_tx_and_a_flush_are_answered_with_the_bytes_protobuf_writes() -> None:
    """The mempool stream's two usual answers are constants, framed once."""
    accepted = abci.Response(check_tx=abci.ResponseCheckTx()).SerializeToString()
    flushed = abci.Response(flush=abci.ResponseFlush()).SerializeToString()
    assert check_tx_response_bytes(0, "") == accepted
    framed = abci_server._FRAMED
    assert framed == {accepted: frame(accepted), flushed: frame(flushed)}


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 60.0), ("10", 10.0), ("0.5", None), ("ten", None)]
)
def test_the_stats_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float | None
) -> None:
    """`MEDLEDGER_ABCI_STATS_S` (the bench asks every 10 s); a value out of range is refused
    with its name, not silently replaced."""
    if value is None:
        monkeypatch.delenv("MEDLEDGER_ABCI_STATS_S", raising=False)
    else:
        monkeypatch.setenv("MEDLEDGER_ABCI_STATS_S", value)
    if expected is None:
        with pytest.raises(ValueError, match="MEDLEDGER_ABCI_STATS_S"):
            engine._stats_interval_s()
    else:
        assert engine._stats_interval_s() == expected


def test_a_burst_of_check_tx_is_answered_in_few_writes_and_in_order(
    app: FakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write of answers wakes CometBFT's socket client, whose flush timer then spins:
    a burst on the mempool connection is answered a slice at a time but written in batches
    of up to `_WRITE_BATCH` answers, every answer in its request's order."""
    written: list[int] = []
    write_out = abci_server._AbciProtocol._write_out

    def counting(self: Any, transport: Any) -> None:
        written.append(len(self.out))
        write_out(self, transport)

    monkeypatch.setattr(abci_server._AbciProtocol, "_write_out", counting)
    thread = AbciServerThread(AbciServer(app), "tcp://127.0.0.1:0")
    thread.start()
    try:
        flush = abci.Request(flush=abci.RequestFlush())
        burst = [r for i in range(300) for r in (_check(b"k%d=v" % i), flush)]
        answers = _roundtrip(thread.bound_address, burst)
    finally:
        thread.stop()
    assert [a.WhichOneof("value") for a in answers] == ["check_tx", "flush"] * 300
    assert all(a.check_tx.code == 0 for a in answers[::2])
    assert sum(written) == 600
    assert max(written) > abci_server._SLICE  # more than one slice's answers in one write
    assert max(written) < abci_server._WRITE_BATCH + abci_server._SLICE


class _Socket:
    """One client connection, like one of CometBFT's four."""

    def __init__(self, address: str) -> None:
        _, (host, port) = parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = bytearray()
        self.frames: list[bytes] = []

    def send(self, request: Any) -> None:
        self.sock.sendall(frame(request.SerializeToString()))

    def answer(self, timeout: float) -> Any:
        """The next response, or None when none came within timeout seconds."""
        self.sock.settimeout(timeout)
        while True:
            self.frames += split_frames(self.buf)
            if self.frames:
                return abci.Response.FromString(self.frames.pop(0))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            assert data, "server closed the connection"
            self.buf += data

    def close(self) -> None:
        self.sock.close()


def _check(tx: bytes) -> Any:
    return abci.Request(check_tx=abci.RequestCheckTx(tx=tx))


@contextlib.contextmanager
def _sockets(app: FakeApp, hold_s: float, count: int) -> Iterator[list[_Socket]]:
    """A served app whose proposals hold CheckTx at most hold_s, and `count` connections."""
    thread = AbciServerThread(AbciServer(app, proposal_hold_s=hold_s), "tcp://127.0.0.1:0")
    thread.start()
    sockets = [_Socket(thread.bound_address) for _ in range(count)]
    try:
        sockets[0].send(_check(b"a=1"))
        assert sockets[0].answer(5) is not None  # the first carries CheckTx: the mempool one
        yield sockets
    finally:
        for s in sockets:
            s.close()
        thread.stop()


def test_check_tx_waits_while_this_node_decides_a_proposal(app: FakeApp) -> None:
    with _sockets(app, hold_s=30, count=2) as (mempool, consensus):
        proposal = abci.RequestProcessProposal(txs=[b"a=1"], height=1, time=_ts(1_000))
        consensus.send(abci.Request(process_proposal=proposal))
        assert consensus.answer(5) is not None
        mempool.send(_check(b"b=2"))
        assert mempool.answer(0.3) is None  # held: the height waits for this node's votes
        finalize = abci.RequestFinalizeBlock(txs=[b"a=1"], height=1, time=_ts(1_000))
        consensus.send(abci.Request(finalize_block=finalize))
        assert consensus.answer(5) is not None
        held = mempool.answer(5)  # released by FinalizeBlock, long before the 30 s bound
        assert held is not None and held.check_tx.code == 0


def test_a_held_mempool_connection_gives_way_before_cometbft_would_block(
    app: FakeApp,
) -> None:
    """A held connection whose buffer fills is read and checked again: a CometBFT whose writes
    to the app blocked would block the peers' receive routines that call CheckTx, and the
    votes they carry. Without FinalizeBlock, some answers come back early."""
    n = 10_000
    burst = b"".join(
        frame(_check(b"k%d=%s" % (i, b"v" * 900)).SerializeToString()) for i in range(n)
    )
    with _sockets(app, hold_s=30, count=2) as (mempool, consensus):
        proposal = abci.RequestProcessProposal(txs=[b"a=1"], height=1, time=_ts(1_000))
        consensus.send(abci.Request(process_proposal=proposal))
        assert consensus.answer(5) is not None
        mempool.sock.settimeout(20)
        mempool.sock.sendall(burst)  # ≈ 10 MB: far more than the kernel holds without a reader
        early = []
        while (a := mempool.answer(1)) is not None:  # no FinalizeBlock yet: the backlog
            early.append(a)
        assert 0 < len(early) < n  # gave way while the buffer was full, held again after
        finalize = abci.RequestFinalizeBlock(txs=[b"a=1"], height=1, time=_ts(1_000))
        consensus.send(abci.Request(finalize_block=finalize))
        assert consensus.answer(5) is not None
        answers = early + [mempool.answer(10) for _ in range(n - len(early))]
        assert all(a is not None and a.check_tx.code == 0 for a in answers)


def test_a_round_that_never_finalizes_holds_check_tx_only_briefly(app: FakeApp) -> None:
    with _sockets(app, hold_s=1.0, count=2) as (mempool, consensus):
        prepare = abci.RequestPrepareProposal(
            max_tx_bytes=1000, txs=[b"a=1"], height=1, time=_ts(1_000)
        )
        consensus.send(abci.Request(prepare_proposal=prepare))
        assert consensus.answer(5) is not None
        mempool.send(_check(b"b=2"))
        assert mempool.answer(0.3) is None  # held at first,
        assert mempool.answer(5) is not None  # then released by the 1 s bound alone


def test_a_connection_that_also_carries_consensus_is_never_held(app: FakeApp) -> None:
    with _sockets(app, hold_s=30, count=1) as (both,):
        proposal = abci.RequestProcessProposal(txs=[b"a=1"], height=1, time=_ts(1_000))
        both.send(abci.Request(process_proposal=proposal))
        assert both.answer(5) is not None
        both.send(_check(b"b=2"))
        assert both.answer(5) is not None  # not the mempool connection: answered at once


def test_prepare_drops_invalid_txs_and_respects_max_tx_bytes(app: FakeApp) -> None:
    server = AbciServer(app)
    txs = [b"a=1", b"bad", b"b=2", b"a=again", b"c=3", b"d=4"]
    budget = proto_txs_size([b"a=1", b"b=2", b"c=3"])
    req = abci.Request(
        prepare_proposal=abci.RequestPrepareProposal(
            max_tx_bytes=budget, txs=txs, height=1, time=_ts(5_000)
        )
    )
    kept = list(server.handle(req).prepare_proposal.txs)
    assert kept == [b"a=1", b"b=2", b"c=3"]  # "bad" and the replayed key dropped, d=4 too big
    assert proto_txs_size(kept) <= budget
    assert server.stats.prepared_dropped == 3


def test_process_proposal_rejects_a_block_with_an_invalid_tx(app: FakeApp) -> None:
    server = AbciServer(app)

    def process(txs: list[bytes]) -> int:
        req = abci.RequestProcessProposal(txs=txs, height=1, time=_ts(5_000))
        return int(server.handle(abci.Request(process_proposal=req)).process_proposal.status)

    assert process([b"a=1", b"b=2"]) == abci.ResponseProcessProposal.ACCEPT
    assert process([b"a=1", b"bad=2"]) == abci.ResponseProcessProposal.REJECT
    assert process([b"a=1", b"a=1"]) == abci.ResponseProcessProposal.REJECT
    assert server.stats.proposals_rejected == 2


def test_own_proposal_is_not_simulated_twice(app: FakeApp) -> None:
    server = AbciServer(app)
    calls = []
    original = app.simulate_block

    def counting(txs: list[bytes], height: int, time_ms: int) -> list[object]:
        calls.append(len(txs))
        return original(txs, height, time_ms)  # type: ignore[return-value]

    app.simulate_block = counting  # type: ignore[method-assign,assignment]
    prep = abci.RequestPrepareProposal(max_tx_bytes=1000, txs=[b"a=1"], height=1, time=_ts(9))
    server.handle(abci.Request(prepare_proposal=prep))
    proc = abci.RequestProcessProposal(txs=[b"a=1"], height=1, time=_ts(9))
    status = server.handle(abci.Request(process_proposal=proc)).process_proposal.status
    assert status == abci.ResponseProcessProposal.ACCEPT
    assert calls == [1]


def test_a_failing_consensus_method_gets_an_exception_response(app: FakeApp) -> None:
    server = AbciServer(app)
    req = abci.RequestFinalizeBlock(txs=[], height=7, time=_ts(1))  # app is at height 0
    response = server.handle(abci.Request(finalize_block=req))
    assert response.WhichOneof("value") == "exception"
    assert "finalize_block" in response.exception.error
    commit = server.handle(abci.Request(commit=abci.RequestCommit()))
    assert commit.WhichOneof("value") == "exception"  # commit without finalize
    assert server.stats.exceptions == 2


def test_undecodable_request_is_answered_not_dropped(served: tuple[AbciServer, str]) -> None:
    _, address = served
    _, (host, port) = parse_address(address)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(frame(b"\xff\xff\xff") + frame(abci.Request(flush={}).SerializeToString()))
        buf = bytearray()
        answers: list[bytes] = []
        while len(answers) < 2:
            buf += s.recv(4096)
            answers += split_frames(buf)
    first = abci.Response.FromString(answers[0])
    assert first.WhichOneof("value") == "exception"
    assert abci.Response.FromString(answers[1]).WhichOneof("value") == "flush"


def test_info_and_finalize_carry_validator_updates(tmp_path: Path) -> None:
    from medledger.ledger.results import ValidatorUpdate

    key = b"\x07" * 32
    app = FakeApp(tmp_path / "s.json", validators=[ValidatorUpdate(key, 10)])
    server = AbciServer(app)
    init = server.handle(abci.Request(init_chain=abci.RequestInitChain())).init_chain
    assert [(v.pub_key.ed25519, v.power) for v in init.validators] == [(key, 10)]


def test_real_ledger_app_check_tx_over_abci(tmp_path: Path) -> None:
    from tests.support.ledger import make_net

    net = make_net(2)
    ledger = net.app(tmp_path / "ledger.db")
    server = AbciServer(ledger)
    body = {"practitioner": "dr-x", "key": b"\x01" * 32, "roles": ["nurse"]}
    good = net.tx(net.orgs["h0"], "identity.register", body)
    forged = bytearray(good)
    forged[-5] ^= 1  # inside the signature
    replay = net.tx(net.orgs["h0"], "identity.register", {**body, "practitioner": "dr-y"}, 1)

    def check(tx: bytes) -> int:
        req = abci.Request(check_tx=abci.RequestCheckTx(tx=tx))
        return int(server.handle(req).check_tx.code)

    assert check(good) == 0
    assert check(bytes(forged)) == 4  # BAD_SIGNATURE
    assert check(replay) == 5  # BAD_NONCE: nonce 1 is taken by the first tx


def test_unix_socket_address_is_served_and_seen_as_ready(app: FakeApp, tmp_path: Path) -> None:
    from medledger.consensus.cometbft.processes import accepts_connections

    address = f"unix://{tmp_path / 'abci.sock'}"
    thread = AbciServerThread(AbciServer(app), address)
    thread.start()
    try:
        assert accepts_connections(address)  # what `net up` waits for before CometBFT starts
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(tmp_path / "abci.sock"))
            s.sendall(frame(abci.Request(echo=abci.RequestEcho(message="u")).SerializeToString()))
            buf = bytearray()
            while not (frames := split_frames(buf)):
                buf += s.recv(4096)
        assert abci.Response.FromString(frames[0]).echo.message == "u"
    finally:
        thread.stop()
    assert not accepts_connections(address)


class _Node:
    """One replica of the real ledger behind an AbciServer, driven request by request as
    CometBFT drives it (no sockets)."""

    def __init__(self, tmp_path: Path) -> None:
        from tests.support.ledger import make_net

        self.net = make_net(2)
        self.ledger = self.net.app(tmp_path / "ledger.db")
        self.server = AbciServer(self.ledger)

    def check(self, tx: bytes) -> int:
        req = abci.Request(check_tx=abci.RequestCheckTx(tx=tx))
        return int(self.server.handle(req).check_tx.code)

    def prepare(self, txs: list[bytes]) -> list[bytes]:
        height = self.ledger.height + 1
        req = abci.RequestPrepareProposal(
            max_tx_bytes=1 << 20, txs=txs, height=height, time=_ts(height * 1_000)
        )
        return list(self.server.handle(abci.Request(prepare_proposal=req)).prepare_proposal.txs)

    def process(self, txs: list[bytes]) -> int:
        height = self.ledger.height + 1
        req = abci.RequestProcessProposal(txs=txs, height=height, time=_ts(height * 1_000))
        return int(self.server.handle(abci.Request(process_proposal=req)).process_proposal.status)

    def finalize_and_commit(self, txs: list[bytes]) -> list[int]:
        height = self.ledger.height + 1
        req = abci.RequestFinalizeBlock(txs=txs, height=height, time=_ts(height * 1_000))
        answer = self.server.handle(abci.Request(finalize_block=req)).finalize_block
        self.server.handle(abci.Request(commit=abci.RequestCommit()))
        return [int(r.code) for r in answer.tx_results]

    def committed(self, tx: bytes) -> bool:
        import hashlib

        return self.ledger.query_obj("ledger/tx", {"id": hashlib.sha256(tx).digest()}) is not None

    def practitioners(self) -> set[str]:
        return {p["id"] for p in self.ledger.query_obj("identity/practitioners", {})}


def test_a_tx_an_earlier_block_made_invalid_is_dropped_at_prepare_and_never_committed(
    tmp_path: Path,
) -> None:
    """Nodes run with mempool.recheck off: what an earlier block made invalid stays in this
    node's mempool, and its proposal leaves it out."""
    from tests.support.ledger import register_body

    node = _Node(tmp_path)
    h0, h1 = node.net.orgs["h0"], node.net.orgs["h1"]
    # Two txs of one signer with the same nonce (a client retry with another body): this node
    # accepted one, another proposer's block commits the other.
    ours = node.net.tx(h0, "identity.register", register_body("dr-late"), nonce=1)
    theirs = node.net.tx(h0, "identity.register", register_body("dr-first"), nonce=1)
    fresh = node.net.tx(h1, "identity.register", register_body("dr-other"), nonce=1)
    assert node.check(ours) == 0
    assert node.process([theirs]) == abci.ResponseProcessProposal.ACCEPT
    assert node.finalize_and_commit([theirs]) == [0]

    # No recheck: `ours` is still in CometBFT's mempool and reaped for this node's proposal.
    assert node.prepare([ours, fresh]) == [fresh]
    assert node.server.stats.prepared_dropped == 1
    assert node.finalize_and_commit([fresh]) == [0]
    assert not node.committed(ours) and node.committed(fresh)

    # A proposer that includes it anyway: the block is rejected, and were it decided,
    # FinalizeBlock would refuse the tx (its nonce is spent) and change nothing for it.
    stale_again = [ours]
    assert node.process(stale_again) == abci.ResponseProcessProposal.REJECT
    assert node.finalize_and_commit(stale_again) == [5]  # BAD_NONCE
    assert "dr-late" not in node.practitioners()
    assert {"dr-first", "dr-other"} <= node.practitioners()


def test_check_tx_after_a_block_validates_against_it_without_rechecks(tmp_path: Path) -> None:
    from tests.support.ledger import register_body

    node = _Node(tmp_path)
    h0 = node.net.orgs["h0"]
    first = node.net.tx(h0, "identity.register", register_body("dr-a"), nonce=1)
    assert node.check(first) == 0
    assert node.finalize_and_commit([first]) == [0]
    replay = node.net.tx(h0, "identity.register", register_body("dr-b"), nonce=1)
    again = node.net.tx(h0, "identity.register", register_body("dr-a"), nonce=2)
    assert node.check(replay) == 5  # BAD_NONCE: the committed block spent nonce 1
    assert node.check(again) != 0  # dr-a is registered on chain
    assert node.check(node.net.tx(h0, "identity.register", register_body("dr-c"), nonce=3)) == 0


def test_the_signature_cache_cannot_change_a_finalize_block_result(tmp_path: Path) -> None:
    """A tx this node verified is not verified again, but the cache is keyed by the hash of
    the whole tx (signature included): a tx with the same body and a bad signature is
    refused, and a replica without any cache reaches the same results and app hash."""
    from tests.support.ledger import register_body

    node = _Node(tmp_path)
    h0 = node.net.orgs["h0"]
    good = node.net.tx(h0, "identity.register", register_body("dr-good"), nonce=1)
    assert node.check(good) == 0  # decoded and verified once, remembered
    forged = bytearray(good)
    forged[-5] ^= 1  # same payload, a signature that does not verify
    assert node.check(bytes(forged)) == 4  # BAD_SIGNATURE
    assert node.process([bytes(forged)]) == abci.ResponseProcessProposal.REJECT
    assert node.finalize_and_commit([bytes(forged), good]) == [4, 0]

    (tmp_path / "cold").mkdir()
    cold = _Node(tmp_path / "cold")  # a replica that has never seen either tx
    cold.ledger._verified.clear()
    assert cold.finalize_and_commit([bytes(forged), good]) == [4, 0]
    assert cold.ledger.info() == node.ledger.info()


def test_serialized_answers_are_the_responses_protobuf_would_write(tmp_path: Path) -> None:
    """handle_bytes writes each answer's bytes behind its field's key, without building the
    Response: byte for byte what serializing `handle`'s Response gives, for every method."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fast = AbciServer(FakeApp.open(tmp_path / "a"))
    reference = AbciServer(FakeApp.open(tmp_path / "b"))
    for request in _every_method():
        raw = request.SerializeToString()
        assert fast.handle_bytes(raw) == reference.handle(request).SerializeToString()
    wrong_height = abci.Request(finalize_block=abci.RequestFinalizeBlock(height=99))
    answer = abci.Response.FromString(fast.handle_bytes(wrong_height.SerializeToString()))
    assert answer.WhichOneof("value") == "exception"
    assert "finalize_block" in answer.exception.error


def test_check_tx_sees_the_txs_still_waiting_after_a_block(tmp_path: Path) -> None:
    """Without rechecks through the socket, the app carries the accepted txs a block did not
    include into its next mempool view: a tx depending on one still waiting is accepted, and
    one the block made invalid no longer counts."""
    from tests.support.ledger import register_body

    node = _Node(tmp_path)
    h0, h1 = node.net.orgs["h0"], node.net.orgs["h1"]
    waiting = node.net.tx(h0, "identity.register", register_body("dr-new"), nonce=1)
    assert node.check(waiting) == 0
    other = node.net.tx(h1, "identity.register", register_body("dr-h1"), nonce=1)
    assert node.finalize_and_commit([other]) == [0]  # a block without `waiting`

    depends = node.net.tx(
        h0, "identity.update_roles", {"practitioner": "dr-new", "roles": ["nurse"]}, 2
    )
    assert node.check(depends) == 0  # dr-new exists in the mempool's view
    assert node.check(node.net.tx(h0, "identity.register", register_body("dr-x"), nonce=2)) == 5

    # A block that spends h0's nonce 1 with another tx: `waiting` drops out of the view, and
    # so does `depends`, which needed it.
    rival = node.net.tx(h0, "identity.register", register_body("dr-rival"), nonce=1)
    assert node.finalize_and_commit([rival]) == [0]
    assert node.check(node.net.tx(h0, "identity.register", register_body("dr-y"), nonce=2)) == 0


_text = st.text(max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    code=st.integers(0, 2**32 - 1),
    log=_text,
    events=st.lists(st.tuples(_text, st.lists(st.tuples(_text, _text), max_size=3)), max_size=3),
)
def test_a_tx_result_written_by_hand_is_what_protobuf_writes(
    code: int, log: str, events: list[tuple[str, list[tuple[str, str]]]]
) -> None:
    """FinalizeBlock's per-tx results are serialized by hand: byte for byte protobuf's."""
    from medledger.consensus.cometbft.abci_server import _events, exec_tx_result_bytes
    from medledger.ledger.results import Event

    result = TxResult(code, log, tuple(Event(t, tuple(attrs)) for t, attrs in events))
    expected = abci.ExecTxResult(code=code, log=log, events=_events(result.events))
    assert exec_tx_result_bytes(result) == expected.SerializeToString()


def test_a_signers_txs_reaching_the_proposer_out_of_order_are_proposed_in_nonce_order(
    tmp_path: Path,
) -> None:
    """Gossip can bring nonce 2 before nonce 1: proposed in that order, 2 would spend 1 for
    ever (a nonce may skip). The proposer puts each signer's txs in nonce order, in the
    places that signer's txs held."""
    from tests.support.ledger import register_body

    node = _Node(tmp_path)
    h0, h1 = node.net.orgs["h0"], node.net.orgs["h1"]
    first = node.net.tx(h0, "identity.register", register_body("dr-a"), nonce=1)
    second = node.net.tx(h0, "identity.register", register_body("dr-b"), nonce=2)
    other = node.net.tx(h1, "identity.register", register_body("dr-c"), nonce=1)
    proposed = node.prepare([second, other, first])
    assert proposed == [first, other, second]
    assert node.process(proposed) == abci.ResponseProcessProposal.ACCEPT
    assert node.finalize_and_commit(proposed) == [0, 0, 0]
    assert {"dr-a", "dr-b", "dr-c"} <= node.practitioners()


def test_a_gapped_nonce_waits_a_few_heights_for_the_tx_before_it_then_goes(
    tmp_path: Path,
) -> None:
    """Nonce 2 without nonce 1 is held back (1 may still arrive); once 1 arrives both go, in
    order. A gap that never fills is proposed after `HOLD_HEIGHTS`: a client may have signed
    a tx it never sent, and its later txs must not wait for ever."""
    from medledger.ledger.proposal import HOLD_HEIGHTS
    from tests.support.ledger import register_body

    node = _Node(tmp_path)
    h0, h1 = node.net.orgs["h0"], node.net.orgs["h1"]
    first = node.net.tx(h0, "identity.register", register_body("dr-a"), nonce=1)
    second = node.net.tx(h0, "identity.register", register_body("dr-b"), nonce=2)
    assert node.prepare([second]) == []  # held: nonce 1 is missing
    assert node.prepare([second, first]) == [first, second]
    assert node.finalize_and_commit([first, second]) == [0, 0]

    skipped = node.net.tx(h1, "identity.register", register_body("dr-x"), nonce=3)
    after = node.net.tx(h1, "identity.register", register_body("dr-y"), nonce=4)
    waited = 0
    while not (proposed := node.prepare([after, skipped])):
        waited += 1
        node.finalize_and_commit([])  # empty blocks go by while the gap stays
    assert waited == HOLD_HEIGHTS
    assert proposed == [skipped, after]
    assert node.finalize_and_commit(proposed) == [0, 0]
    assert {"dr-x", "dr-y"} <= node.practitioners()


@settings(max_examples=200, deadline=None)
@given(tx=st.binary(max_size=600), recheck=st.booleans())
def test_check_tx_requests_are_read_by_hand_as_protobuf_reads_them(
    tx: bytes, recheck: bool
) -> None:
    kind = abci.RECHECK if recheck else abci.NEW
    raw = abci.Request(check_tx=abci.RequestCheckTx(tx=tx, type=kind)).SerializeToString()
    assert parse_check_tx_request(raw) == (tx, recheck)


@settings(max_examples=200, deadline=None)
@given(code=st.integers(min_value=0, max_value=2**32 - 1), text=st.text(max_size=300))
def test_check_tx_answers_are_written_by_hand_as_protobuf_writes_them(code: int, text: str) -> None:
    expected = abci.Response(check_tx=abci.ResponseCheckTx(code=code, log=text))
    assert check_tx_response_bytes(code, text) == expected.SerializeToString()


_UNKNOWN_TYPE: Any = 7  # a CheckTxType this version of the protocol does not define


def test_requests_the_hand_reader_does_not_know_go_through_protobuf(tmp_path: Path) -> None:
    """Anything but a CheckTx laid out as CometBFT writes it is left to protobuf's parser:
    another method, an extra field, another type, a truncated body."""
    check = abci.Request(check_tx=abci.RequestCheckTx(tx=b"a=1")).SerializeToString()
    odd = [
        abci.Request(echo=abci.RequestEcho(message="a=1")).SerializeToString(),
        check[:-1],  # the body shorter than its length says
        check + b"\x10\x01",  # a field after the Request's body
        abci.Request(
            check_tx=abci.RequestCheckTx(tx=b"a=1", type=_UNKNOWN_TYPE)
        ).SerializeToString(),
        check[:1] + bytes([check[1] + 2]) + check[2:] + b"\x20\x01",  # an unknown field
    ]
    assert all(parse_check_tx_request(raw) is None for raw in odd)

    server = AbciServer(FakeApp.open(tmp_path))
    unknown_type = abci.Response.FromString(server.handle_bytes(odd[3]))
    assert unknown_type.check_tx.code == 0  # protobuf keeps the unknown enum value: a new check
    assert server.stats.calls == {"check_tx": 1}


def test_check_tx_by_hand_answers_like_the_protobuf_path(tmp_path: Path) -> None:
    """Accepted, refused, a recheck and an application that raised: the same bytes and the
    same counters through `handle_bytes` (read by hand) as through `handle`."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fast = AbciServer(FakeApp.open(tmp_path / "a"))
    reference = AbciServer(FakeApp.open(tmp_path / "b"))
    for tx, kind in [(b"a=1", abci.NEW), (b"bad=1", abci.NEW), (b"c=1", abci.RECHECK)]:
        request = abci.Request(check_tx=abci.RequestCheckTx(tx=tx, type=kind))
        assert fast.handle_bytes(request.SerializeToString()) == (
            reference.handle(request).SerializeToString()
        )
    explode = abci.Request(check_tx=abci.RequestCheckTx(tx=b"explode"))
    answer = abci.Response.FromString(fast.handle_bytes(explode.SerializeToString()))
    assert answer.check_tx.code == INTERNAL_ERROR
    assert "RuntimeError" in answer.check_tx.log
    reference.handle(explode)
    assert fast.stats.calls == reference.stats.calls == {"check_tx": 3, "recheck_tx": 1}
    assert fast.stats.check_tx_rejected == reference.stats.check_tx_rejected == 2
