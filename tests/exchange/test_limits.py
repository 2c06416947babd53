"""What one member can cost a custodian: far-future heights, big bodies, many requests at once.

Every member has a valid certificate and keys, so these are the requests a misbehaving or
compromised hospital can send; none of them may hold the custodian's workers for long or keep
another hospital from being served.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from medledger.exchange.client import ExchangeError
from medledger.exchange.gateway import Caller, Gateway, Refused, Timing
from medledger.exchange.signing import RequestSigner

from .conftest import A, B, C, Sandbox, bundles, wait_for

PID = "ab" * 32  # a patient chu-lyon knows nothing of: the index answer is empty


def _run(coro: Any) -> Any:
    """Run a coroutine on a fresh loop in its own thread (whatever loop this thread runs)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _signed_post(sandbox: Sandbox, name: str, body: bytes, **kw: Any) -> httpx.Response:
    """A genuine request from aphp-paris to chu-lyon, with whatever body it chooses to send."""
    path = f"/exchange/v1/{name}"
    headers = RequestSigner(sandbox.h[B].node.org_key).headers("POST", path, body, A)
    client = sandbox.x(B).client._client(A)
    return client.post(path, headers={**headers, "content-type": "application/json"}, **kw)


def test_a_height_far_beyond_the_custodian_is_refused_at_once(sandbox: Sandbox) -> None:
    client = sandbox.x(B).client
    with pytest.raises(ExchangeError) as far:
        client.post(A, "index", {"pid": PID, "purpose": "treatment", "height": 10**12})
    assert far.value.status == 503
    assert "blocks ahead of this replica" in far.value.reason
    assert not far.value.refused  # a lagging replica is worth asking again later
    # A height this replica has reached is served as before.
    near = sandbox.h[A].node.engine.height()
    answer, _ = client.post(A, "index", {"pid": PID, "purpose": "treatment", "height": near})
    assert answer["entries"] == []


def test_an_oversize_body_is_refused_with_413(sandbox: Sandbox) -> None:
    limit = sandbox.x(A).gateway.query_body_limit
    big = orjson.dumps({"pid": PID, "purpose": "treatment", "padding": "x" * (2 * limit)})
    declared = _signed_post(sandbox, "index", big, content=big)
    assert declared.status_code == 413
    assert f"limit of {limit}" in declared.json()["error"]
    # Without a Content-Length (chunked), the body is refused once the chunks pass the limit.
    chunks = [big[i : i + 16384] for i in range(0, len(big), 16384)]
    chunked = _signed_post(sandbox, "index", big, content=iter(chunks))
    assert chunked.status_code == 413
    # A body within the limit still goes through.
    small = orjson.dumps({"pid": PID, "purpose": "treatment"})
    assert _signed_post(sandbox, "index", small, content=small).status_code == 200


def test_a_chunked_body_is_not_read_past_the_limit() -> None:
    from medledger.exchange.gateway import read_body

    consumed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(1000):  # 1000 chunks of 1 KiB offered
            consumed += 1
            yield b"x" * 1024

    with pytest.raises(Refused) as too_big:
        _run(read_body(None, chunks(), 10 * 1024))
    assert too_big.value.status == 413
    assert consumed == 11  # stopped at the first chunk past 10 KiB
    with pytest.raises(Refused) as declared:
        _run(read_body("50000000", chunks(), 10 * 1024))
    assert declared.value.status == 413 and "50000000 bytes" in declared.value.reason
    assert consumed == 11  # refused on the header: not a chunk more was read


def test_one_hospital_flooding_a_gateway_does_not_starve_another(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = sandbox.x(A).gateway
    limit = gateway.peers.limit
    real_index = Gateway.index
    release = threading.Event()
    held: list[str] = []
    lock = threading.Lock()

    def slow_index(self: Gateway, caller: Caller, body: bytes, timing: Timing) -> Any:
        """aphp-paris's requests stay in their worker until the test lets them go."""
        if caller.actor.org == B:
            with lock:
                held.append(caller.label)
            release.wait(60)
        return real_index(self, caller, body, timing)

    monkeypatch.setattr(gateway, "index", slow_index.__get__(gateway))
    flood = limit + 4
    outcomes: list[int] = []

    def ask() -> None:
        try:
            sandbox.x(B).client.post(A, "index", {"pid": PID, "purpose": "treatment"})
            status = 200
        except ExchangeError as exc:
            status = exc.status
        with lock:
            outcomes.append(status)

    threads = [threading.Thread(target=ask) for _ in range(flood)]
    try:
        for t in threads:
            t.start()
        # `limit` requests are held in workers; the others are turned away at once.
        wait_for(lambda: len(outcomes) == flood - limit, what="the excess answered")
        assert outcomes == [429] * (flood - limit)
        wait_for(lambda: len(held) == limit, what="aphp-paris's requests in workers")
        assert gateway.peers.busy(B) == limit
        # While aphp-paris holds all it may, chu-bordeaux is served.
        answer, _ = sandbox.x(C).client.post(A, "index", {"pid": PID, "purpose": "treatment"})
        assert answer["entries"] == [] and not release.is_set()
        assert len(held) == limit
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert sorted(outcomes) == [200] * limit + [429] * (flood - limit)
    assert gateway.peers.busy(B) == 0


def test_peer_slots_count_each_hospital_apart() -> None:
    from medledger.exchange.gateway import PeerSlots

    slots = PeerSlots(2)
    assert slots.acquire(B) and slots.acquire(B)
    assert not slots.acquire(B)  # a third at once is refused...
    assert slots.acquire(C)  # ...but not another hospital's first
    slots.release(B)
    assert slots.acquire(B)
    for peer in (B, B, C):
        slots.release(peer)
    assert slots.busy(B) == slots.busy(C) == 0


def test_an_answer_too_large_is_not_read_whole(sandbox: Sandbox) -> None:
    # chu-lyon holds a patient; its index answer to aphp-paris is a few kilobytes.
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B)
    client = sandbox.x(B).client
    assert client.index(A, pid)  # within the default limit
    client.max_answer = 1000
    with pytest.raises(ExchangeError) as big:
        client.index(A, pid)
    assert big.value.status == 0 and "over 1000" in big.value.reason


def test_a_failure_in_the_gateway_is_a_500_that_logs_no_value(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = sandbox.x(A).gateway

    def broken(caller: Caller, body: bytes, timing: Timing) -> Any:
        raise ValueError(f"cannot handle {body.decode()} for PAT-TROIS 279035121518989")

    monkeypatch.setattr(gateway, "index", broken)
    with caplog.at_level(logging.DEBUG), pytest.raises(ExchangeError) as failed:
        sandbox.x(B).client.post(A, "index", {"pid": PID, "purpose": "treatment"})
    assert failed.value.status == 500 and "internal error" in failed.value.reason
    (logged,) = [r for r in caplog.records if r.name == "medledger.exchange.gateway"]
    assert "index request failed: ValueError at test_limits.py" in logged.getMessage()
    for value in (PID, "PAT-TROIS", "279035121518989"):
        assert value not in caplog.text and value not in failed.value.reason


def test_event_streams_are_bounded_per_hospital(sandbox: Sandbox) -> None:
    from contextlib import ExitStack

    gateway = sandbox.x(A).gateway
    path = "/exchange/v1/events"

    def open_stream(org: str, stack: ExitStack) -> httpx.Response:
        headers = RequestSigner(sandbox.h[org].node.org_key).headers("GET", path, b"", A)
        client = sandbox.x(org).client._client(A)
        return stack.enter_context(client.stream("GET", path, headers=headers, timeout=10))

    with ExitStack() as stack:
        opened = [open_stream(B, stack) for _ in range(gateway.streams.limit)]
        assert [r.status_code for r in opened] == [200] * gateway.streams.limit
        refused = open_stream(B, stack)
        assert refused.status_code == 429
        assert "event streams open here already" in refused.read().decode()
        assert open_stream(C, stack).status_code == 200  # another hospital is not held back


def test_one_hospital_cannot_hold_every_connection(sandbox: Sandbox) -> None:
    import socket
    import ssl

    from medledger.exchange import server as gateway_server

    limit = gateway_server.MAX_PEER_CONNECTIONS
    uvicorn_server = sandbox.x(A).server.server
    url = httpx.URL(sandbox.x(A).url)
    ctx = sandbox.x(B).client.trust.client()  # B's own, pinned to the members on the chain

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection((url.host, url.port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname="localhost")

    def held() -> int:
        return gateway_server.open_connections(uvicorn_server, B)

    before = held()
    sockets: list[ssl.SSLSocket] = []
    try:
        # aphp-paris opens idle connections (no request on them) up to the limit...
        sockets += [connect() for _ in range(limit - before)]
        wait_for(lambda: held() == limit, what="aphp-paris's connections counted")
        # ...one more is closed by the server as soon as it knows whose it is.
        extra = connect()
        sockets.append(extra)
        try:
            closed = extra.recv(1) == b""
        except (ConnectionError, ssl.SSLError):  # a reset or a TLS alert: closed all the same
            closed = True  # (a timeout is no answer: it fails the test)
        assert closed and held() == limit
        # chu-bordeaux still gets in and is served.
        answer, _ = sandbox.x(C).client.post(A, "index", {"pid": PID, "purpose": "treatment"})
        assert answer["entries"] == []
    finally:
        for s in sockets:
            s.close()
    wait_for(lambda: held() == before, what="aphp-paris's connections released")


def test_body_budget_bounds_each_hospital_and_the_gateway() -> None:
    """Issue 11 review, item 8: 8 deliveries of 32 MB per peer were held in memory at once."""
    from medledger.exchange.gateway import BodyBudget

    budget = BodyBudget(total=100, per_peer=60)
    budget.take(B, 50)
    with pytest.raises(Refused) as own:
        budget.take(B, 20)  # past aphp-paris's own budget: 429, its own doing
    assert own.value.status == 429 and "budget of 60" in own.value.reason
    budget.take(C, 50)
    with pytest.raises(Refused) as full:
        budget.take("chu-lille", 10)  # past the gateway's total: 503, try again later
    assert full.value.status == 503
    assert (budget.held(B), budget.held(C), budget.held()) == (50, 50, 100)
    budget.give(B, 50)
    budget.take("chu-lille", 10)  # room again once a body is done with
    assert budget.held() == 60


def test_a_chunked_body_stops_at_the_memory_budget() -> None:
    from medledger.exchange.gateway import BodyBudget, read_body

    budget = BodyBudget(total=10 * 1024, per_peer=4 * 1024)
    consumed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(100):  # 100 KiB offered, well within the 1 MiB size limit
            consumed += 1
            yield b"x" * 1024

    with pytest.raises(Refused) as refused:
        _run(read_body(None, chunks(), 1024 * 1024, lambda n: budget.take(B, n)))
    assert refused.value.status == 429
    assert consumed == 5  # the fifth KiB is refused: nothing more is read
    # A declared length is reserved whole before a byte is read.
    consumed = 0
    with pytest.raises(Refused):
        _run(read_body("8192", chunks(), 1024 * 1024, lambda n: budget.take(C, n)))
    assert consumed == 0


def test_the_gateway_refuses_a_body_past_the_budget_and_frees_what_it_held(
    sandbox: Sandbox,
) -> None:
    from medledger.exchange.gateway import BodyBudget

    gateway = sandbox.x(A).gateway
    gateway.bodies = BodyBudget(total=64 * 1024, per_peer=16 * 1024)
    big = orjson.dumps({"pid": PID, "purpose": "treatment", "padding": "x" * 20000})
    assert len(big) < gateway.query_body_limit  # within the size limit, past the budget
    refused = _signed_post(sandbox, "index", big, content=big)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    chunks = [big[i : i + 4096] for i in range(0, len(big), 4096)]
    assert _signed_post(sandbox, "index", big, content=iter(chunks)).status_code == 429
    small = orjson.dumps({"pid": PID, "purpose": "treatment"})
    assert _signed_post(sandbox, "index", small, content=small).status_code == 200
    assert gateway.bodies.held() == 0  # every body's bytes given back, served or refused
