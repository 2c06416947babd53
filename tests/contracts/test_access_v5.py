"""`access` v5 (issue 13, session 11): v4's body and checks, each row's entries stored by
column (`count`, `same`, `cols`) instead of a list of 13 or 14 columns per entry. The trail
reads the same under either layout, and an older chain keeps its rows."""

from __future__ import annotations

import random
from typing import Any

import pytest

from medledger.contracts import access
from medledger.contracts.access import log_body
from medledger.ledger.app import Application
from tests.support.access import ORG_KEYS, PID, _entry, signed_request
from tests.support.ledger import ACCESS_VERSION, Net, make_net, run_block
from tests.support.world import World

OTHER = "cd" * 32


def _net(version: int) -> tuple[Net, Application]:
    before = ACCESS_VERSION[0]
    ACCESS_VERSION[0] = version
    try:
        net = make_net()
    finally:
        ACCESS_VERSION[0] = before
    app = net.app()
    assert app.query_obj("governance/contracts", {})["access"] == version
    return net, app


def _log(net: Net, app: Application, entries: list[dict[str, Any]], version: int) -> Any:
    tx = net.tx(net.orgs["h0"], "access.log", log_body(entries, version))
    return run_block(app, [tx], net.solo).results[0]


def _rows(app: Application, pid: str) -> list[Any]:
    with app.read_view() as view:
        return [row for _, row in view.scan(f"acc/ptx/{pid}/")]


def _raw_rows(app: Application, pid: str) -> list[bytes]:
    with app.read_view() as view:
        return [raw for _, raw in view.scan_raw(f"acc/ptx/{pid}/".encode())]


def _journal_reads(n: int, first_seq: int = 1) -> list[dict[str, Any]]:
    """What a hospital's journal sends under a read load: its own reads of one patient."""
    return [
        _entry(actor="org:h0", actor_org="h0", basis="custodian", rids=[f"obs-{i}"], seq=s)
        for i, s in enumerate(range(first_seq, first_seq + n))
    ]


def _mixed(w: World) -> list[dict[str, Any]]:
    """Entries of every shape a row holds, about alice and another patient: a read by
    several rids, a denial, a remote read with h1's signed request, an export naming its
    receiver (h1, a co-custodian of alice)."""
    asked = {"pid": w.pid, "purpose": "treatment"}
    request = signed_request(ORG_KEYS["h1"], time_ms=w.now, asked=asked)
    own = {"actor": "org:h0", "actor_org": "h0", "pid": w.pid, "basis": "custodian"}
    return [
        _entry(**own, rids=["r1", "r2"], seq=1),
        _entry(**{**own, "basis": ""}, outcome="denied", reason="no consent", rids=["r3"], seq=2),
        _entry(**{**own, "pid": OTHER}, seq=3),
        _entry(**{**own, "actor": "org:h1", "actor_org": "h1"}, request=request, rids=[], seq=4),
        _entry(
            **{**own, "basis": "enrolment:s1"},
            action="export",
            purpose="research",
            rids=[],
            to="h1",
            seq=5,
        ),
    ]


def _journaled(trail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The journal's entries of a trail (not the registrations' `create` entries)."""
    return [e for e in trail if e.get("seq")]


def _same_trail(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Two trails of the same entries, logged on two chains: equal but for where they are."""
    where = {"tx", "key", "request"}  # the tx's id, and the request's digest (its nonce)
    assert [{k: v for k, v in e.items() if k not in where} for e in a] == [
        {k: v for k, v in e.items() if k not in where} for e in b
    ]
    assert [bool(e["request"]) for e in a] == [bool(e["request"]) for e in b]


def test_a_journals_reads_of_one_patient_are_one_row_by_column() -> None:
    net4, app4 = _net(4)
    net5, app5 = _net(5)
    reads = _journal_reads(300)
    assert _log(net4, app4, reads, 4).ok and _log(net5, app5, reads, 5).ok
    ((_, _, _, stored),) = _rows(app5, PID)
    # every field the 300 reads share once; what differs per read by column
    count, same, cols = stored
    assert count == 300
    assert dict(zip(same[::2], same[1::2], strict=True)) == {
        "actor": "org:h0",
        "actor_org": "h0",
        "action": "read",
        "purpose": "treatment",
        "outcome": "granted",
        "basis": "custodian",
    }
    varying = dict(zip(cols[::2], cols[1::2], strict=True))
    assert sorted(varying) == ["n", "rids", "seq"]
    assert varying["rids"][:2] == [["obs-0"], ["obs-1"]]
    # the same trail, from a row a fraction of v4's bytes
    trail4 = app4.query_obj("access/of_patient", {"pid": PID})
    trail5 = app5.query_obj("access/of_patient", {"pid": PID})
    _same_trail(trail4, trail5)
    assert [e["seq"] for e in trail5] == list(range(1, 301))
    (raw4,), (raw5,) = _raw_rows(app4, PID), _raw_rows(app5, PID)
    assert len(raw5) * 2 < len(raw4)


def test_every_shape_of_entry_reads_back_as_under_v4() -> None:
    worlds = {}
    for version in (4, 5):
        before = ACCESS_VERSION[0]
        ACCESS_VERSION[0] = version
        try:
            w = World()
        finally:
            ACCESS_VERSION[0] = before
        w.records("h1", w.pid, ["r-h1-labs"])  # h1 may receive alice's data (v4's check)
        result = w.send("h0", "access.log", log_body(_mixed(w), version))
        assert result.ok, result.log
        worlds[version] = w
    of = {v: _journaled(w.q("access/of_patient", {"pid": w.pid})) for v, w in worlds.items()}
    _same_trail(of[4], of[5])
    assert [(e["outcome"], e["reason"], e["rids"], e["to"]) for e in of[5]] == [
        ("granted", "", ["r1", "r2"], ""),
        ("denied", "no consent", ["r3"], ""),
        ("granted", "", [], ""),
        ("granted", "", [], "h1"),
    ]
    assert of[5][2]["request_signer"] == "org:h1" and of[5][2]["request"]
    assert of[5][0]["request"] == b"" and of[5][0]["request_signer"] == ""
    by = {v: _journaled(w.q("access/by_custodian", {"org": "h0"})) for v, w in worlds.items()}
    _same_trail(by[4], by[5])
    assert OTHER in {e["pid"] for e in by[5]}


def test_an_older_chain_keeps_its_rows_and_reads_both_after_the_vote() -> None:
    net, app = _net(4)
    assert _log(net, app, _journal_reads(3), 4).ok
    propose = net.tx(
        net.orgs["h0"],
        "governance.propose",
        {"action": "activate_contract", "args": {"name": "access", "version": 5}},
    )
    vote = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    assert all(r.ok for r in run_block(app, [propose, vote], net.solo).results)
    assert app.query_obj("governance/contracts", {})["access"] == 5
    assert _log(net, app, _journal_reads(2, first_seq=2), 5).ok  # seq 2, 3 written: skipped
    assert _log(net, app, _journal_reads(2, first_seq=4), 5).ok
    old, new = _rows(app, PID)
    assert type(old[3]) is list and len(old[3][0]) == 13  # v4's row, as it was written
    assert new[3][0] == 2  # v5's: the count, then the columns
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [e["seq"] for e in trail] == [1, 2, 3, 4, 5]
    assert [access.journal_ref(e) for e in trail][-1] == "seq:5"
    assert len(app.query_obj("access/by_custodian", {"org": "h0"})) == 5


def _random_entries(rng: random.Random, seq: int) -> tuple[list[dict[str, Any]], int]:
    """A journal's tx as real loads make them, and the odd one a check refuses: one patient
    or several, the hospital or its practitioners, a patient reading their own records,
    denials, another hospital without its signed request, sequences re-sent or out of order."""
    entries = []
    actors = ["org:h0", "org:h0", "practitioner:h0/dr-x", "practitioner:h0/dr-y"]
    if rng.random() < 0.2:
        actors.append("org:h1")
    for _ in range(rng.randint(1, 12)):
        seq += rng.choice([1, 1, 1, 2, 40])
        actor = rng.choice(actors)
        entry = _entry(
            actor=actor,
            actor_org=actor.partition(":")[2].partition("/")[0],
            pid=rng.choice([PID, PID, OTHER]),
            basis="custodian",
            rids=[f"obs-{rng.randint(0, 9)}" for _ in range(rng.randint(0, 3))],
            seq=seq,
        )
        if rng.random() < 0.03:
            entry.update(actor=f"patient:{entry['pid']}")
        if rng.random() < 0.15:
            entry.update(outcome="denied", basis="", reason="no consent")
        entries.append(entry)
    if rng.random() < 0.1:
        entries.reverse()  # sequences must increase: refused
    if rng.random() < 0.2:
        seq -= rng.randint(1, 30)  # the journal re-sends some of them
    return entries, seq


def test_v5s_column_path_writes_and_refuses_as_its_entry_by_entry_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_plain_rows` (a plain journal tx, by column) against `_log_rows`' loop: the same
    results, events and app hash after every block of 200 random txs."""
    rng = random.Random(11)
    net, fast = _net(5)
    _, slow = _net(5)
    seq = 0
    accepted = refused = 0
    for height in range(40):
        txs = []
        for _ in range(5):
            entries, seq = _random_entries(rng, seq)
            txs.append(net.tx(net.orgs["h0"], "access.log", log_body(entries, 5)))
        with monkeypatch.context() as m:
            one = run_block(fast, txs, net.solo)
            m.setattr(access, "_plain_rows", lambda *args: None)
            other = run_block(slow, txs, net.solo)
        assert one.results == other.results, height
        assert one.app_hash == other.app_hash, height
        accepted += sum(r.ok for r in one.results)
        refused += sum(not r.ok for r in one.results)
    assert accepted > 100 and refused > 10  # both kinds were tried
    trail = fast.query_obj("access/of_patient", {"pid": PID})
    assert trail == slow.query_obj("access/of_patient", {"pid": PID}) and len(trail) > 100
