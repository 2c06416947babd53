"""Review 13a: the study query's chain inputs read ahead (study2s), attacked.

A hospital reads the plan's chain inputs while the query awaits its approvals and uses them
when it runs (its plan, the gateway's check of a co-answerer's partials, the tally's
enrolment re-check) while every block since was heard and left them. Here, as an attacker
and as Murphy would have it:
- finding 1: a block whose writes the answerer never heard (its commit failed after the
  store's, or a write listener before the answerer's raised) must void them, even when the
  next block is heard and leaves them: its writes are unknown;
- finding 2: they are bounded in memory (they scan the chain's custodies and key bindings
  whole, and every query the sponsor's ethics approval makes preparable kept its own), and
  dropped when the query ends without this hospital's answer;
- the receiver's check on them refuses, and leaves unkept, exactly what the chain's does
  (a pid not in its custody, another study's patient, a withdrawn or erased patient, a
  sender who is no answerer, a pid listed twice, a closed study), or reads the chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from medledger.contracts.study_query import PatientFacts
from medledger.ledger.store import StateView
from medledger.node.study_partials import ChainReads, PartialsRefused, Unread, check
from medledger.research import answer as answer_mod
from medledger.research.answer import Answerer
from tests.research.test_plan_ahead import (
    NEW,
    ORG,
    OTHER,
    P1,
    P2,
    P3,
    STATE,
    STUDY,
    DictReader,
    enrolled,
    reads_of,
)
from tests.support.ledger import make_net, run_block
from tests.support.studies import HBA1C_QUERY

THIRD = "chu-nantes"
P4, P5, P6, P7 = ("4" * 64, "5" * 64, "6" * 64, "7" * 64)
QUERY = f"{STUDY}/q0001"

#: STATE, with more patients: P4 held here and at OTHER, enrolled by this hospital (it
#: counts them); P5 OTHER's, enrolled in another study only; P6 withdrawn; P7 erased.
WIDE: dict[str, Any] = STATE | {
    f"rec/custody/{P4}/{ORG}": 5,
    f"rec/custody/{P4}/{OTHER}": 6,
    f"research/enrol/{STUDY}/{P4}": enrolled(ORG),
    f"rec/custody/{P5}/{OTHER}": 5,
    f"research/enrol/other-study/{P5}": enrolled(OTHER),
    f"rec/custody/{P6}/{ORG}": 5,
    f"rec/custody/{P6}/{OTHER}": 5,
    f"research/enrol/{STUDY}/{P6}": {"status": "withdrawn", "since": 10, "history": []},
    f"rec/custody/{P7}/{ORG}": 5,
    f"rec/custody/{P7}/{OTHER}": 5,
    f"research/enrol/{STUDY}/{P7}": enrolled(OTHER),
    f"erasure/pid/{P7}": 99,
}

RUNNING: dict[str, Any] = {
    "id": QUERY,
    "study": STUDY,
    "status": "running",
    "deadline_ms": 2**62,
    "started": 5000,
    "answerers": [ORG, OTHER, THIRD],
}


class Engine:
    """A committed state in a dict, at a height, answering the queries the answerer asks."""

    def __init__(self, state: dict[str, Any], records: dict[str, Any]) -> None:
        self.committed = 7
        self.state = state
        self.records = records

    def height(self) -> int:
        return self.committed

    @contextmanager
    def read_view(self) -> Iterator[StateView]:
        yield StateView(DictReader(self.state))

    def query(self, path: str, args: dict[str, Any]) -> Any:
        if path == "research/query":
            return self.records.get(args["query"])
        if path == "research/study":
            return self.state.get(f"research/study/{args['study']}")
        raise AssertionError(f"unexpected query {path}")


class App:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.listeners: list[Any] = []

    @property
    def height(self) -> int:
        return self.engine.committed

    def add_write_listener(self, fn: Any) -> None:
        self.listeners.append(fn)


class Inbox:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, query_id: str) -> None:
        self.forgotten.append(query_id)


def read_at(state: dict[str, Any], height: int = 7) -> ChainReads:
    """The reads ahead of `state`, read at `height`."""
    reads = reads_of(state)[0]
    reads.height = height
    return reads


def answerer(
    state: dict[str, Any], records: dict[str, Any] | None = None, vault: Any = None
) -> tuple[Answerer, Engine, App]:
    engine = Engine(state, records or {})
    app = App(engine)
    node = SimpleNamespace(config=SimpleNamespace(org=ORG), engine=engine, app=app)
    return Answerer(node, vault, Inbox(), None), engine, app  # type: ignore[arg-type]


# -- finding 1: a block never heard ------------------------------------------------------------
def test_a_block_whose_writes_were_never_heard_voids_the_reads_ahead() -> None:
    """A real app: block 2's commit reaches its store, but a write listener registered before
    the answerer's raises, so the answerer never hears what block 2 wrote (an enrolment, a
    withdrawal: unknown). Block 3 is heard and writes nothing they read: the reads, taken
    at height 1, must not be served at height 3."""
    net = make_net()
    app = net.app()

    def failing(height: int, keys: Any) -> None:
        if height == 2:
            raise RuntimeError("a write listener before the answerer's failed")

    app.add_write_listener(failing)
    engine = SimpleNamespace(height=lambda: app.height)
    node = SimpleNamespace(config=SimpleNamespace(org=ORG), engine=engine, app=app)
    found = Answerer(node, None, None, None)  # type: ignore[arg-type]
    run_block(app, [], net.solo)  # block 1, heard
    reads = read_at(STATE, app.height)
    found._reads["q1"] = reads
    assert found.reads_ahead("q1", STUDY) is reads  # read at the last committed height
    with pytest.raises(RuntimeError):
        run_block(app, [], net.solo)  # block 2: in the store, its writes never heard
    assert app.height == 2
    assert found.reads_ahead("q1", STUDY) is None
    run_block(app, [], net.solo)  # block 3: heard, it left them
    assert app.height == 3
    assert found.reads_ahead("q1", STUDY) is None
    assert "q1" not in found._reads  # dropped for good


def test_reads_taken_after_a_blocks_store_commit_and_before_its_listener_hold() -> None:
    """On the solo engine the write listeners run after the app's lock is released: a
    preparation may read at height 8 before block 8's listener runs. That block is in its
    reads: its listener neither drops them nor moves them on; block 9, heard, does."""
    found, engine, app = answerer(STATE)
    (wrote,) = app.listeners
    engine.committed = 8
    reads = read_at(STATE, 8)
    found._reads["q1"] = reads
    wrote(8, [f"research/enrol/{STUDY}/{P1}".encode()])  # already read as it stands
    assert found.reads_ahead("q1", STUDY) is reads
    engine.committed = 9
    assert found.reads_ahead("q1", STUDY) is None  # not heard yet
    wrote(9, [f"research/enrol/{STUDY}/{NEW}".encode()])
    assert found.reads_ahead("q1", STUDY) is None
    assert "q1" not in found._reads


# -- finding 2: memory ---------------------------------------------------------------------------
def test_a_query_that_ended_unanswered_here_drops_its_reads_ahead() -> None:
    records = {QUERY: RUNNING | {"status": "done"}}
    found, engine, app = answerer(STATE, records)
    found._reads[QUERY] = read_at(STATE)
    assert found.answer(QUERY) is None  # nothing to answer: it ended
    assert QUERY not in found._reads
    assert found.inbox.forgotten == [QUERY]  # type: ignore[attr-defined]


def test_the_reads_ahead_of_many_queries_stay_within_their_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sponsor whose own approval is the ethics one makes any number of queries
    preparable (up to 9999 a study) in a study whose custodians need not approve: each
    preparation reads the chain's custodies and key bindings whole. What is kept is bounded
    (the oldest dropped), and reads larger than the bound alone are not kept at all."""
    one = read_at(WIDE).size
    monkeypatch.setattr(answer_mod, "READS_AHEAD_MAX_ITEMS", 3 * one)
    monkeypatch.setattr(
        answer_mod,
        "Evaluator",
        lambda vault, q, categories: SimpleNamespace(facts=lambda pids: {}),
    )
    submitted = {
        "study": STUDY,
        "status": "submitted",
        "sponsor": OTHER,
        "approvals": [{"org": OTHER, "role": "ethics"}],
        "custodians_approve": False,
        "doc": HBA1C_QUERY,
    }
    ids = [f"{STUDY}/q{n:04d}" for n in range(1, 9)]
    records = {q: submitted | {"id": q} for q in ids}
    state = WIDE | {f"research/study/{STUDY}": {"status": "open", "end_ms": 0}}
    vault = SimpleNamespace(own_states=lambda pids: {})
    found, _, _ = answerer(state, records, vault)
    for query_id in ids:
        assert found.prepare(query_id) is not None
    assert list(found._reads) == ids[-3:]  # the newest, within the bound
    assert sum(r.size for r in found._reads.values()) <= 3 * one
    monkeypatch.setattr(answer_mod, "READS_AHEAD_MAX_ITEMS", one - 1)
    found.discard(ids[-1])
    assert found.prepare(ids[-1]) is not None  # prepared, its reads too large to keep
    assert ids[-1] not in found._reads


# -- the receiver's check on the reads ahead ---------------------------------------------------
FACTS = PatientFacts(matched={}).to_obj()


def outcome(state: StateView, sender: str, pids: list[str], record: dict[str, Any]) -> Any:
    body = {"query": QUERY, "patients": [[pid, FACTS] for pid in pids]}
    try:
        query_id, found, dropped = check(state, record, sender, ORG, body, 10_000)
    except PartialsRefused as exc:
        return ("refused", exc.status, exc.reason)
    return (query_id, sorted(found), sorted(dropped))


@pytest.mark.parametrize(
    ("sender", "pids", "expected"),
    [
        (OTHER, [P4], "kept"),  # this hospital counts them: kept
        (OTHER, [P2, P3], "not kept"),  # the sender counts them
        (OTHER, [P1], 403),  # not a custodian of the pid
        (OTHER, [NEW], 403),  # nobody's custody
        (THIRD, [P4], 403),  # an answerer, no custodian of it
        ("chu-evil", [P4], 403),  # no answerer
        (OTHER, [P5], "not kept"),  # another study's patient
        (OTHER, [P6], "not kept"),  # withdrawn
        (OTHER, [P7], "not kept"),  # an erasure request
        (OTHER, [P4, P4], 400),  # listed twice
        (OTHER, [], "not kept"),  # an empty message
    ],
)
def test_the_check_on_the_reads_ahead_decides_as_the_chain_does(
    sender: str, pids: list[str], expected: Any
) -> None:
    found, engine, app = answerer(WIDE)
    app.listeners[0](7, [])
    found._reads[QUERY] = read_at(WIDE)
    for record in (RUNNING, RUNNING | {"links_by": 4000}):
        chain = outcome(StateView(DictReader(WIDE)), sender, pids, record)
        ahead_view = found.check_view(QUERY, STUDY)
        assert ahead_view is not None
        ahead = outcome(ahead_view, sender, pids, record)  # never Unread: all were read
        assert ahead == chain
        if expected == "kept":
            assert ahead == (QUERY, pids, [])
        elif expected == "not kept":
            assert ahead == (QUERY, [], [])
        else:
            assert ahead[:2] == ("refused", expected)


def test_the_check_on_the_reads_ahead_sees_the_study_closed_now() -> None:
    """The study's record is read at check time, not taken from the reads: a study closed
    since they were read refuses the message."""
    found, engine, app = answerer(WIDE)
    app.listeners[0](7, [])
    found._reads[QUERY] = read_at(WIDE)
    engine.state = WIDE | {f"research/study/{STUDY}": {"status": "closed", "end_ms": 0}}
    engine.committed = 8
    app.listeners[0](8, [f"research/study/{STUDY}".encode()])  # not among their reads
    view = found.check_view(QUERY, STUDY)
    assert view is not None
    assert outcome(view, OTHER, [P4], RUNNING)[:2] == ("refused", 409)


def test_a_withdrawal_committed_before_the_check_is_never_missed() -> None:
    """P4 withdraws in block 8. Until block 8's writes are heard the check reads the chain
    (no view from the reads); once heard the reads are dropped: never kept from them."""
    found, engine, app = answerer(WIDE)
    (wrote,) = app.listeners
    wrote(7, [])
    found._reads[QUERY] = read_at(WIDE)
    assert outcome(found.check_view(QUERY, STUDY), OTHER, [P4], RUNNING)[1] == [P4]  # type: ignore[arg-type]
    withdrawn = {"status": "withdrawn", "since": 20, "history": []}
    engine.state = WIDE | {f"research/enrol/{STUDY}/{P4}": withdrawn}
    engine.committed = 8
    assert found.check_view(QUERY, STUDY) is None
    wrote(8, [f"research/enrol/{STUDY}/{P4}".encode()])
    assert found.check_view(QUERY, STUDY) is None
    assert outcome(StateView(DictReader(engine.state)), OTHER, [P4], RUNNING)[1] == []


def test_a_pid_the_reads_never_read_of_sends_the_check_to_the_chain() -> None:
    """A patient linked since the query started (their acts, not read ahead): `Unread`, so
    the gateway reads the chain, never an answer from what was not read."""
    late = WIDE | {
        f"patients/key/{P4}": {"org": OTHER, "time": 9000, "tx": b"\x05" * 32},
    }
    found, engine, app = answerer(late)
    app.listeners[0](7, [])
    found._reads[QUERY] = read_at(late)
    view = found.check_view(QUERY, STUDY)
    assert view is not None
    with pytest.raises(Unread):
        check(view, RUNNING, OTHER, ORG, {"query": QUERY, "patients": [[P4, FACTS]]}, 10_000)
    # what the chain says of it, for the record
    assert outcome(StateView(DictReader(late)), OTHER, [P4], RUNNING)[0] == QUERY


def test_a_stopped_agent_keeps_nothing_read_ahead() -> None:
    """The app keeps every write listener (none is removed): a stopped agent's answerer
    stays reachable from it, and must not keep the chain's scans nor a query's facts."""
    from medledger.research.agent import StudyAgent

    engine = Engine(STATE, {})
    app = App(engine)
    app.add_commit_listener = lambda fn: None  # type: ignore[attr-defined]
    app.add_check_listener = lambda fn: None  # type: ignore[attr-defined]
    node = SimpleNamespace(config=SimpleNamespace(org=ORG), engine=engine, app=app)
    agent = StudyAgent(node, None, Inbox(), None)  # type: ignore[arg-type]
    agent.answerer._reads["q1"] = read_at(STATE)
    agent.answerer._prepared["q1"] = answer_mod.Prepared((), {}, {P1: PatientFacts(matched={})})
    agent.stop()
    assert not agent.answerer._reads
    assert not agent.answerer._prepared
    assert app.listeners == [agent.answerer._wrote]  # still called, with nothing to look at
