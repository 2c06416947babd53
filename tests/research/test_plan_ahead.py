"""The plan's chain inputs read ahead (issue 18): good only while provably unchanged.

`Answerer.prepare` keeps every key and prefix the plan (and a receiver's check) reads
(`read_plan_inputs` through a `Recorder`); the app's write listener drops them as soon as a
committed block writes one of those keys or a key under one of those prefixes. Here: a write
of each kind of input (a new enrolment, a withdrawal, an erasure request, a custody begun or
shredded, a key bound, a binding's act, a member, a contract activated, the parameters)
voids them; what the plan does not read (the query's and the study's records, another
study's enrolments, the audit) does not; a read they did not make is `Unread`, never an
answer; and the answerer never serves them while a committed block is still unheard.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from medledger.ledger import codec
from medledger.ledger.store import StateView
from medledger.node.study_partials import ChainReads, Recorder, Unread
from medledger.research.answer import Answerer, read_plan_inputs

STUDY = "lyon-2026-007"
ORG = "chu-lyon"
OTHER = "chu-lille"
P1, P2, P3, NEW = ("1" * 64, "2" * 64, "3" * 64, "9" * 64)


class DictReader:
    """A committed state in a dict (sorted scans), as the store answers."""

    def __init__(self, items: dict[str, Any]) -> None:
        self.items = {k.encode(): codec.encode_trusted(v) for k, v in items.items()}
        self.keys = sorted(self.items)

    def get_raw(self, key: bytes) -> bytes | None:
        return self.items.get(key)

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self.keys, prefix)
        while i < len(self.keys) and self.keys[i].startswith(prefix):
            yield self.keys[i], self.items[self.keys[i]]
            i += 1


def enrolled(org: str) -> dict[str, Any]:
    return {"status": "enrolled", "since": 10, "by": {"org": org}, "history": [], "releases": []}


STATE: dict[str, Any] = {
    f"rec/custody/{P1}/{ORG}": 5,
    f"rec/custody/{P2}/{ORG}": 6,
    f"rec/custody/{P2}/{OTHER}": 7,
    f"rec/custody/{P3}/{OTHER}": 8,
    f"research/enrol/{STUDY}/{P1}": enrolled(ORG),
    f"research/enrol/{STUDY}/{P2}": enrolled(OTHER),
    f"research/enrol/{STUDY}/{P3}": enrolled(OTHER),
    f"patients/key/{P2}": {"org": OTHER, "time": 11, "tx": b"\x01" * 32},
    f"patients/acted/{P2}/{11:016d}/{'01' * 32}": {"act": "patients.bind", "org": OTHER},
    f"gov/member/{ORG}": {"org": ORG, "box_key": b"\x02" * 32},
    f"gov/member/{OTHER}": {"org": OTHER, "box_key": b"\x03" * 32},
    "gov/contract/research": 3,
    "policy/params": {"study_link_settle_ms": 1000},
    f"research/study/{STUDY}": {"status": "open", "end_ms": 0},
}


def reads_of(state: dict[str, Any], height: int = 7) -> tuple[ChainReads, list[str]]:
    """The reads ahead of `state`, read at `height` (the fake engine's)."""
    recorder = Recorder(StateView(DictReader(state)))
    pids = read_plan_inputs(StateView(recorder), STUDY, ORG)
    return ChainReads(recorder.keys, recorder.scans, STUDY, height), pids


@pytest.mark.parametrize(
    "written",
    [
        f"research/enrol/{STUDY}/{NEW}",  # a new enrolment in the study
        f"research/enrol/{STUDY}/{P1}",  # a withdrawal (or a consent changed) of one held
        f"erasure/pid/{P1}",  # an erasure request
        f"rec/custody/{NEW}/{ORG}",  # a custody begun here
        f"rec/custody/{P3}/{ORG}",  # a co-custody begun
        f"rec/shredded/{ORG}/{P1}",  # a custody ended
        f"patients/key/{P1}",  # a key bound
        f"patients/acted/{P2}/{11:016d}/{'01' * 32}",  # the binding's act
        "gov/member/chu-new",  # a member joins (its box key)
        f"gov/member/{OTHER}",  # a member's box key rotated
        "gov/contract/research",  # a contract activated
        "policy/params",  # the link settle time
    ],
)
def test_a_write_of_each_input_voids_the_reads(written: str) -> None:
    reads, _ = reads_of(STATE)
    assert reads.touched([written.encode()])
    # and the reads hold what the chain held: served back unchanged
    view = reads.view()
    for key, value in reads.keys.items():
        assert view.get_raw(key) == value


@pytest.mark.parametrize(
    "written",
    [
        f"research/query/{STUDY}/q1",  # the query's own record (approvals, its start)
        f"research/study/{STUDY}",  # the study's record (the query's start writes it)
        f"research/enrol/{STUDY}x/{P1}",  # another study's enrolments
        f"research/enrol/other-study/{P1}",
        "audit/entry/0000000001",
        f"patients/acted/{P1}/{12:016d}/{'ab' * 32}",  # an act of a patient with no binding
    ],
)
def test_what_the_plan_does_not_read_leaves_them(written: str) -> None:
    reads, pids = reads_of(STATE)
    assert pids == sorted([P1, P2])  # the enrolled held here
    assert not reads.touched([written.encode()])


def test_a_read_they_did_not_make_is_unread_never_an_answer() -> None:
    reads, _ = reads_of(STATE)
    view = reads.view()
    with pytest.raises(Unread):
        view.get_raw(f"research/study/{STUDY}".encode())  # not read ahead
    with pytest.raises(Unread):
        list(view.scan_raw(f"patients/acted/{P1}/".encode()))
    # what a caller read since is answered, as read
    extra: dict[bytes, bytes | None] = {f"research/study/{STUDY}".encode(): b"x"}
    assert reads.view(extra).get_raw(f"research/study/{STUDY}".encode()) == b"x"


class Engine:
    def __init__(self) -> None:
        self.committed = 7
        self.state = STATE

    def height(self) -> int:
        return self.committed

    @contextmanager
    def read_view(self) -> Iterator[StateView]:
        yield StateView(DictReader(self.state))


class App:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_write_listener(self, fn: Any) -> None:
        self.listeners.append(fn)


def answerer() -> tuple[Answerer, Engine, App]:
    engine, app = Engine(), App()
    node = SimpleNamespace(config=SimpleNamespace(org=ORG), engine=engine, app=app)
    return Answerer(node, None, None, None), engine, app  # type: ignore[arg-type]


def test_the_answerer_serves_them_only_while_every_block_since_was_heard_and_left_them() -> None:
    found, engine, app = answerer()
    (wrote,) = app.listeners
    wrote(7, [])  # the height they are read at
    reads, _ = reads_of(STATE)
    found._reads["q1"] = reads
    assert found.reads_ahead("q1", STUDY) is reads
    assert found.reads_ahead("q1", "another-study") is None
    engine.committed = 8  # a block committed, its writes not heard yet
    assert found.reads_ahead("q1", STUDY) is None
    wrote(8, [f"research/query/{STUDY}/q1".encode()])  # heard: it left them
    assert found.reads_ahead("q1", STUDY) is reads
    engine.committed = 9
    wrote(9, [f"research/enrol/{STUDY}/{NEW}".encode()])  # an enrolment: dropped for good
    assert found.reads_ahead("q1", STUDY) is None
    assert "q1" not in found._reads


def test_the_plan_on_the_reads_equals_the_plan_on_the_chain() -> None:
    found, _, app = answerer()
    app.listeners[0](7, [])
    reads, _ = reads_of(STATE)
    record = {
        "id": f"{STUDY}/q1",
        "study": STUDY,
        "started": 5000,
        "answerers": [ORG, OTHER],
        "box_keys": {},
    }
    fresh = found._chain(StateView(DictReader(STATE)), record, {})
    assert found._chain(reads.view(), record, {}) == fresh
    assert fresh[2] == {P1: ORG, P2: OTHER}  # P2: linked to OTHER (its enrolment, its key)
    # A binding whose act the chain lacks sends the plan to the patient's acts: not read
    # ahead, so the plan reads the chain (`Answerer.plan` falls back on `Unread`).
    lacking = {k: v for k, v in STATE.items() if not k.startswith("patients/acted/")}
    reads, _ = reads_of(lacking)
    with pytest.raises(Unread):
        found._chain(reads.view(), record, {})


def test_the_tally_counts_a_withdrawal_the_reads_ahead_never_saw() -> None:
    found, engine, app = answerer()
    (wrote,) = app.listeners
    wrote(7, [])
    reads, _ = reads_of(STATE)
    found._reads["q1"] = reads
    plan = SimpleNamespace(query_id="q1", study=STUDY, ahead=True)
    assert found._counted(plan, [P1, P2], set()) == {P1, P2}  # type: ignore[arg-type]
    # P1 withdraws in block 8: until its writes are heard, the tally reads the chain
    engine.state = STATE | {f"research/enrol/{STUDY}/{P1}": {"status": "withdrawn"}}
    engine.committed = 8
    assert found._counted(plan, [P1, P2], set()) == {P2}  # type: ignore[arg-type]
    wrote(8, [f"research/enrol/{STUDY}/{P1}".encode()])  # heard: the reads are dropped
    assert "q1" not in found._reads
    assert found._counted(plan, [P1, P2], set()) == {P2}  # type: ignore[arg-type]
