"""The event stream: filtered per caller, resumable by id or height, once across restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pytest

from medledger.exchange.client import ExchangeClient, ExchangeError
from medledger.exchange.events import StreamEvent, Viewer, block_events, parse_resume
from medledger.interop.synth import generate
from medledger.ledger.keys import SigningKey

from .conftest import A, B, C, Sandbox, bundles, close_sandbox, observation, open_sandbox


def _collect(events: Iterator[dict[str, Any]], limit: int | None = None) -> list[dict[str, Any]]:
    """Read a stream until `limit` events, or until it stays quiet (read timeout)."""
    out: list[dict[str, Any]] = []
    try:
        for ev in events if limit is None else islice(events, limit):
            out.append(ev)
    except httpx.ReadTimeout:
        pass
    return out


def _expected(sandbox: Sandbox, viewer: Viewer) -> list[str]:
    """What the node should stream to this viewer from block 1, computed from the blocks."""
    stream = sandbox.x(B).events
    ids = []
    for record in sandbox.root.engine.blocks(1):
        ids += [ev.id for ev in stream._visible(record, viewer, -1, ())]
    return ids


def _settle(sandbox: Sandbox) -> None:
    for org in (A, B, C):
        assert sandbox.x(org).agent.wait_idle()


def test_the_stream_resumes_across_a_node_restart_exactly_once(
    net_dir: tuple[Path, list[Path]],
) -> None:
    sandbox = open_sandbox(*net_dir)
    try:
        for org in (A, B, C):
            sandbox.start(org)
        pid, _ = sandbox.ingest(A, bundles(1)[0])
        sandbox.consent(A, pid, B)
        other, _ = sandbox.ingest(C, bundles(1, seed=8)[0])  # nothing to do with B
        _settle(sandbox)
        client = sandbox.x(B).client

        first = _collect(client.events(B, from_height=1, timeout=1.0), limit=7)
        assert len(first) == 7
        assert [e["id"] for e in first] == [e["data"]["id"] for e in first]
        assert all(e["event"] == e["data"]["type"] for e in first)
        assert all(e["data"]["attrs"].get("pid") != other for e in first)
        last_id = first[-1]["id"]
    finally:
        close_sandbox(sandbox)  # the node stops: gateway, agent, engine, ledger

    sandbox = open_sandbox(*net_dir)  # ... and starts again from its files
    try:
        for org in (A, B, C):
            sandbox.start(org)
        sandbox.ingest(A, observation(sandbox, A, pid))  # new events while B is away
        _settle(sandbox)
        client = sandbox.x(B).client
        resumed = _collect(client.events(B, last_event_id=last_id, timeout=1.0))
        seen = [e["id"] for e in first + resumed]
        assert len(seen) == len(set(seen)), "an event was repeated"
        assert seen == _expected(sandbox, Viewer(B)), "an event was lost or out of order"
        types = {e["event"] for e in first + resumed}
        assert {"record.registered", "consent.granted", "access.logged"} <= types

        # ?from=H gives every visible event from that block on, the same ids.
        height = int(resumed[0]["id"].split("-")[0])
        from_h = _collect(client.events(B, from_height=height, timeout=1.0))
        assert [e["id"] for e in from_h] == [i for i in seen if int(i.split("-")[0]) >= height]
    finally:
        close_sandbox(sandbox)


def test_live_events_arrive_as_blocks_commit(sandbox: Sandbox) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B)
    _settle(sandbox)
    client = sandbox.x(B).client
    got: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        stream = client.events(B, timeout=10.0)  # no id, no height: from the next block on
        connected.set()
        got.append(next(stream))
        stream.close()

    reader = threading.Thread(target=listen)
    reader.start()
    connected.wait(5)
    time.sleep(0.3)  # the stream is open and waiting for a block
    sandbox.ingest(A, observation(sandbox, A, pid))
    reader.join(15)
    (ev,) = got
    assert ev["event"] == "record.registered"
    assert ev["data"]["attrs"]["pid"] == pid and ev["data"]["attrs"]["custodian"] == A


def test_visibility_per_viewer(sandbox: Sandbox) -> None:
    pid_a, _ = sandbox.ingest(A, bundles(1)[0])
    pid_c, _ = sandbox.ingest(C, bundles(1, seed=8)[0])
    visibility = sandbox.x(B).events.visibility

    def ev(type_: str, **attrs: str) -> StreamEvent:
        return StreamEvent(1, 0, 0, type_, attrs, None)

    registered_a = ev("record.registered", pid=pid_a, custodian=A, rid="r")
    assert visibility.visible(Viewer(A), registered_a)
    assert not visibility.visible(Viewer(B), registered_a)  # not B's patient (yet)
    assert visibility.visible(Viewer(pid=pid_a), registered_a)
    assert not visibility.visible(Viewer(pid=pid_c), registered_a)
    sandbox.consent(A, pid_a, B)
    visibility._cache.clear()
    assert visibility.visible(Viewer(B), registered_a)  # now it is
    assert visibility.visible(Viewer(B), ev("consent.granted", pid=pid_c, grantee=f"org:{B}"))
    assert visibility.visible(Viewer(B), ev("member.admitted", proposal="3"))  # consortium-wide
    assert not visibility.visible(Viewer(B), ev("emergency.notify", pid=pid_c, custodian=C))
    assert visibility.visible(Viewer(C), ev("emergency.notify", pid=pid_c, custodian=C))


def test_a_self_grant_reaches_the_patient_and_the_other_custodians_streams(
    sandbox: Sandbox,
) -> None:
    both = generate(1, [A, C], seed=5)
    pid, _ = sandbox.ingest(A, both[A][0])
    assert sandbox.ingest(C, both[C][0])[0] == pid  # followed at A and at C
    # A records, in the patient's name, a consent giving itself what C holds.
    sandbox.consent(A, pid, A, custodian=C)
    stream = sandbox.x(B).events
    events = [ev for block in sandbox.root.engine.blocks(1) for ev in block_events(block)]
    told = next(ev for ev in events if ev.type == "consent.self_granted")
    notify = next(ev for ev in events if ev.type == "consent.notify")
    assert notify.attrs["custodian"] == C and told.attrs["org"] == A
    visibility = stream.visibility
    assert visibility.visible(Viewer(pid=pid), told)  # the patient's stream
    assert visibility.visible(Viewer(C, "dpo"), notify)  # C's DPO queue
    assert not visibility.visible(Viewer(B), notify)  # B has nothing of this patient


def test_resume_points() -> None:
    assert parse_resume("12-3", None, 40) == (12, 3)
    assert parse_resume(None, 5, 40) == (5, -1)
    assert parse_resume(None, None, 40) == (41, -1)
    assert parse_resume("7-0", 2, 40) == (7, 0)  # the id wins, as browsers send it
    with pytest.raises(ValueError):
        parse_resume("7", None, 40)


def test_positions_are_stable_and_count_every_event(sandbox: Sandbox) -> None:
    sandbox.ingest(A, bundles(1)[0])
    record = next(iter(sandbox.root.engine.blocks(sandbox.root.engine.height())))
    events = block_events(record)
    assert [e.position for e in events] == list(range(len(events)))
    assert all(e.id == f"{record.height}-{e.position}" for e in events)
    # A reader asking for a few types gets those events at the same positions, same ids.
    kinds = frozenset({"record.registered"})
    wanted = [e for e in events if e.type in kinds]
    assert wanted and block_events(record, kinds) == wanted
    assert len(wanted) < len(events)


def test_the_planner_builds_every_event_type_it_acts_on() -> None:
    """The planner asks block_events for `PLANNED` only: every type `_classify` compares an
    event with must be in it, or those events would never reach it."""
    import ast
    import inspect
    import textwrap

    from medledger.exchange.sync.planner import PLANNED, Planner

    tree = ast.parse(textwrap.dedent(inspect.getsource(Planner._classify)))
    compared = {
        c.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "t"
        for c in ast.walk(node)
        if isinstance(c, ast.Constant) and isinstance(c.value, str)
    }
    assert compared and compared == PLANNED


def test_a_bad_resume_point_or_signature_is_refused(sandbox: Sandbox) -> None:
    client: ExchangeClient = sandbox.x(B).client
    with pytest.raises(ExchangeError) as bad:
        next(client.events(A, last_event_id="not-an-id"))
    assert bad.value.status == 400
    stranger = client.with_signer(SigningKey.generate())
    with pytest.raises(ExchangeError) as unknown:
        next(stranger.events(A))
    assert unknown.value.status == 401
