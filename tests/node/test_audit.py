"""The audit journal: entries durable before a read is served, gathered into shared txs, and
on the chain exactly once whatever the network does (drops, nonce clashes, an outage)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medledger.consensus.cometbft.rpc import RpcUnavailable
from medledger.consensus.engine import Engine, Submitted
from medledger.contracts import queries
from medledger.contracts.access import journal_ref, log_body
from medledger.contracts.authorize import Decision
from medledger.ledger import codec
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from medledger.ledger.tx import decode_tx
from medledger.node import Node, decisions
from medledger.node import audit as audit_module
from medledger.node.audit import WINDOW_S, AuditJournal, read_journal, window_for
from medledger.node.wallet import TxRejected, Wallet

PID = hashlib.sha256(b"a patient of chu-lyon").hexdigest()


@pytest.fixture
def node(consortium: list[Path]) -> Iterator[Node]:
    with Node.open(consortium[0], serve=True, interval=0.02) as n:
        yield n


class FlakyEngine:
    """The node's engine, except that submitting may fail (`down`) or be silently lost
    (`drop_next`: accepted, as a mempool would, then never committed)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.down = False
        self.drop_next = 0
        self.dropped: list[bytes] = []

    def submit(self, tx: bytes) -> Submitted:
        if self.down:
            raise RpcUnavailable("connection refused: the node's CometBFT is down")
        if self.drop_next:
            self.drop_next -= 1
            self.dropped.append(tx)
            return Submitted(hashlib.sha256(tx).digest(), TxResult(0, ""))
        return self.engine.submit(tx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def _journal(node: Node, directory: Path, engine: Any = None, **options: Any) -> AuditJournal:
    wallet = Wallet(node.org_key, node.config.chain_id, engine or node.engine)
    options.setdefault("resend_s", 0.3)
    options.setdefault("retry_s", 0.1)
    return AuditJournal(directory, wallet, **options).start()


def _entries(node: Node, n: int = 1, *, rid: str = "obs-1") -> list[dict[str, Any]]:
    org = node.config.org
    access = decisions.Access(f"org:{org}", org, PID, "read", "treatment")
    return [
        e for _ in range(n) for e in decisions.audit(access, Decision(True, "custodian", ""), [rid])
    ]


def _body(node: Node, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """An `access.log` body for the version of `access` active on the node's chain."""
    return log_body(entries, queries.contract_versions(node.engine)["access"])


def _count(body: dict[str, Any]) -> int:
    """How many entries an `access.log` body holds (v1: a list, v2: columns, v3: a count)."""
    if "count" in body:
        return int(body["count"])
    return len(body["entries"]) if "entries" in body else len(body["columns"]["actor"])


def _on_chain(node: Node) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = node.engine.query("access/by_custodian", {"org": node.config.org})
    return found


def test_concurrent_reads_share_txs_and_each_entry_lands_once(node: Node, tmp_path: Path) -> None:
    journal = _journal(node, tmp_path / "audit", wait_window_s=0.05)
    try:
        threads = [
            threading.Thread(target=journal.log, args=(_entries(node),), kwargs={"wait": True})
            for _ in range(40)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trail = _on_chain(node)
        assert len(trail) == 40 and len({journal_ref(e) for e in trail}) == 40
        assert len({bytes(e["tx"]) for e in trail}) == journal.stats["txs"] < 40
        assert journal.pending() == 0
    finally:
        journal.stop()


def test_a_batch_past_the_size_bound_is_split_into_several_txs(node: Node, tmp_path: Path) -> None:
    journal = _journal(node, tmp_path / "audit", max_tx_entries=5)
    try:
        journal.log(_entries(node, 12), wait=True)
        trail = _on_chain(node)
        assert len(trail) == 12
        assert sorted(
            sum(1 for e in trail if bytes(e["tx"]) == tx) for tx in {bytes(e["tx"]) for e in trail}
        ) == [2, 5, 5]
    finally:
        journal.stop()


def test_an_entry_is_on_disk_before_log_returns_and_reaches_the_chain_after_a_restart(
    node: Node, tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    stalled = _journal(node, directory, window_s=3600.0)  # never sends: as if killed after fsync
    stalled.log(_entries(node, 3), wait=False)
    (pending, _, _) = read_journal(directory / "journal")
    assert [len(group) for group in pending] == [3]  # durable when log returned
    stalled.stop()
    assert _on_chain(node) == []

    journal = _journal(node, directory)  # start-up re-sends what the journal holds
    try:
        assert journal.drain(30)
        assert len(_on_chain(node)) == 3
    finally:
        journal.stop()
    assert read_journal(directory / "journal")[0] == []  # marked done


def test_a_read_prepares_its_answer_while_its_entry_is_written_and_serves_once_durable(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`begin` queues the entry and returns at once (the read's own work overlaps the
    fsync); `end` returns only once the entry is on disk."""
    import os

    directory = tmp_path / "audit"
    journal = _journal(node, directory, window_s=3600.0)
    disk = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        disk.wait(30)  # the disk takes its time
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    try:
        logging = journal.begin(_entries(node), wait=False)  # returns with the disk busy
        ended = threading.Event()

        def serve() -> None:
            logging.end()
            ended.set()

        reader = threading.Thread(target=serve)
        reader.start()
        assert not ended.wait(0.3)  # nothing may leave yet
        disk.set()
        assert ended.wait(30)
        reader.join(30)
        (pending, _, _) = read_journal(directory / "journal")
        assert [len(group) for group in pending] == [1]  # durable when end returned
    finally:
        disk.set()
        journal.stop()


def test_a_write_the_disk_refused_is_cut_off_and_the_next_one_follows_it_whole(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync is refused to its caller (nothing served) and its bytes cut off; the
    journal keeps the file's length itself (no fstat per write), so the next write, the
    rewrite threshold and a restart all see the file as it is."""
    import os

    from medledger.node.audit import JournalUnavailable

    directory = tmp_path / "audit"
    journal = _journal(node, directory, window_s=3600.0)
    real_fsync = os.fsync
    fail = threading.Event()
    fail.set()

    def failing_once(fd: int) -> None:
        if fail.is_set():
            fail.clear()
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    try:
        with pytest.raises(JournalUnavailable):
            journal.log(_entries(node, 3, rid="obs-refused"), wait=False)
        assert journal.pending() == 0
        journal.log(_entries(node, 2), wait=False)
        (pending, _, whole) = read_journal(directory / "journal")
        assert [[e["rids"] for e in group] for group in pending] == [[["obs-1"], ["obs-1"]]]
        assert whole == (directory / "journal").stat().st_size == journal._length
    finally:
        journal.stop()
    journal = _journal(node, directory)  # a restart sends what the file holds, once
    try:
        assert journal.drain(30)
        assert [e["rids"] for e in _on_chain(node)] == [["obs-1"], ["obs-1"]]
    finally:
        journal.stop()


def test_done_marks_cut_short_by_a_full_disk_hide_no_entry_written_after_them(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A done frame half-written (the disk filled mid-write) is cut off: the groups
    appended after it are found at start-up and sent, not lost behind a torn frame."""
    import os

    directory = tmp_path / "audit"
    journal = _journal(node, directory, window_s=0.02)
    real_write = os.write
    torn = threading.Event()

    def write(fd: int, data: Any) -> int:
        if b"done" in bytes(data) and not torn.is_set():
            torn.set()
            real_write(fd, bytes(data)[: len(data) // 2])  # half the frame, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    try:
        monkeypatch.setattr(os, "write", write)
        journal.log(_entries(node, rid="obs-committed"), wait=True)  # its done mark tears
        assert journal.drain(30)
        deadline = time.monotonic() + 30
        while not torn.is_set() and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert torn.is_set()
        monkeypatch.setattr(journal, "window_s", 3600.0)  # the next entry stays journaled
        journal.log(_entries(node, rid="obs-after"), wait=False)
    finally:
        journal.stop()
    (pending, done, whole) = read_journal(directory / "journal")
    assert whole == (directory / "journal").stat().st_size  # no torn frame in the middle
    assert [[e["rids"] for e in group] for group in pending] == [[["obs-after"]]]
    assert len(done) == 1  # the first entry's mark, written again after the failure


def test_a_torn_write_that_cannot_be_cut_off_is_rewritten_away_before_the_next(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses a write half-way, then refuses to cut it off too: the torn bytes
    would hide every later group at start-up, so the journal is rewritten from its pending
    groups before the next append (review 12a, finding 5)."""
    import os

    from medledger.node.audit import JournalUnavailable

    directory = tmp_path / "audit"
    journal = _journal(node, directory, window_s=3600.0)
    journal.log(_entries(node, rid="obs-before"), wait=False)
    real_write, real_truncate = os.write, os.ftruncate
    full = threading.Event()
    full.set()

    def write(fd: int, data: Any) -> int:
        if full.is_set() and b"obs-refused" in bytes(data):
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    def truncate(fd: int, length: int) -> None:
        if full.is_set():
            full.clear()
            raise OSError(5, "Input/output error")
        real_truncate(fd, length)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "ftruncate", truncate)
    try:
        with pytest.raises(JournalUnavailable):
            journal.log(_entries(node, rid="obs-refused"), wait=False)
        journal.log(_entries(node, rid="obs-after"), wait=False)
    finally:
        journal.stop()
    (pending, _, whole) = read_journal(directory / "journal")
    assert whole == (directory / "journal").stat().st_size  # no torn frame left in it
    assert [[e["rids"] for e in group] for group in pending] == [
        [["obs-before"]],
        [["obs-after"]],
    ]


def test_many_readers_at_once_while_the_journal_is_rewritten_lose_none(
    node: Node, tmp_path: Path
) -> None:
    """Many readers at once while the writer rewrites the file again and again (a tiny
    `compact_bytes`; it keeps the file's length itself): every entry is in it once after."""
    directory = tmp_path / "audit"
    journal = _journal(node, directory, window_s=3600.0, compact_bytes=2048)

    def reader(n: int) -> None:
        for i in range(40):
            journal.log(_entries(node, rid=f"obs-{n}-{i}"), wait=False)

    try:
        threads = [threading.Thread(target=reader, args=(n,), name=f"reader-{n}") for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert journal.pending() == 320
    finally:
        journal.stop()
    (pending, _, _) = read_journal(directory / "journal")
    rids = sorted(e["rids"][0] for group in pending for e in group)
    assert rids == sorted(f"obs-{n}-{i}" for n in range(8) for i in range(40))


def test_an_entry_that_is_not_ledger_data_is_refused_to_its_caller_and_nothing_written(
    node: Node, tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    journal = _journal(node, directory, window_s=3600.0)
    try:
        bad = _entries(node)[0] | {"rids": [1.5]}  # a float: not ledger data
        with pytest.raises(codec.CodecError):
            journal.log([*_entries(node), bad], wait=False)
        assert journal.pending() == 0 and read_journal(directory / "journal")[0] == []
        journal.log(_entries(node, 2), wait=False)  # the writer goes on
        (pending, _, _) = read_journal(directory / "journal")
        assert [len(group) for group in pending] == [2]
        assert [e["seq"] for e in pending[0]] == sorted(e["seq"] for e in pending[0])
    finally:
        journal.stop()


def test_an_entry_re_sent_after_it_committed_is_written_once(node: Node, tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    journal = _journal(node, directory)
    journal.log(_entries(node, 2), wait=True)
    journal.stop()
    committed = _on_chain(node)
    # A crash lost the done mark: the journal holds the group again, as if never sent.
    from medledger.node.audit import _frame

    group = [  # as the journal frames them: checked, keys in canonical order
        codec.in_canonical_order(
            {k: v for k, v in e.items() if k in _entries(node)[0] or k in ("id", "seq")}
        )
        for e in committed
    ]
    (directory / "journal").write_bytes(_frame({"g": group}))
    journal = _journal(node, directory)
    try:
        assert journal.drain(30) and journal.stats["txs"] == 1  # re-sent, and committed
        trail = _on_chain(node)
        assert sorted(map(journal_ref, trail)) == sorted(map(journal_ref, committed))
    finally:
        journal.stop()


def test_a_tx_whose_nonce_another_tx_spent_is_re_sent_under_a_fresh_nonce(
    node: Node, tmp_path: Path
) -> None:
    """The fault-run finding: after a restart the first access.log reused a nonce that a
    block not yet applied had spent, and was dropped. The journal finds it and re-sends."""
    flaky = FlakyEngine(node.engine)
    flaky.drop_next = 1
    journal = _journal(node, tmp_path / "audit", engine=flaky)
    try:
        journal.log(_entries(node, rid="obs-lost"), wait=False)
        while not flaky.dropped:
            threading.Event().wait(0.01)
        lost = decode_tx(flaky.dropped[0])
        node.wallet.send("access.log", _body(node, _entries(node, rid="obs-other")))
        assert queries.nonce(node.engine, node.org_key.public_key) >= lost.nonce  # spent
        assert journal.drain(30)
        trail = _on_chain(node)
        assert sorted(e["rids"][0] for e in trail) == ["obs-lost", "obs-other"]
        assert journal.stats["resent"] == 1
    finally:
        journal.stop()


def test_while_the_ledger_is_down_entries_wait_in_the_journal_then_land(
    node: Node, tmp_path: Path
) -> None:
    flaky = FlakyEngine(node.engine)
    flaky.down = True
    journal = _journal(node, tmp_path / "audit", engine=flaky)
    try:
        journal.log(_entries(node, 4), wait=False)  # served: durable, not yet sent
        threading.Event().wait(0.3)
        assert journal.pending() == 4 and _on_chain(node) == []
        with pytest.raises(TimeoutError):  # a remote read would be refused (503), not served
            journal.log(_entries(node), wait=True, timeout=0.3)
        flaky.down = False
        assert journal.drain(30)
        assert len(_on_chain(node)) == 5
    finally:
        journal.stop()


def test_a_group_the_ledger_refuses_is_kept_aside_and_its_batch_still_lands(
    node: Node, tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    journal = _journal(node, directory, wait_window_s=0.3)
    bad = _entries(node, rid="obs-bad")
    bad[0]["actor"] = "org:aphp-paris"  # not of actor_org: the contract refuses it
    errors: list[BaseException] = []

    def log_bad() -> None:
        try:
            journal.log(bad, wait=True)
        except TxRejected as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=log_bad)
        thread.start()
        journal.log(_entries(node, rid="obs-good"), wait=True)
        thread.join()
        assert [e["rids"] for e in _on_chain(node)] == [["obs-good"]]
        assert len(errors) == 1 and "is not of" in str(errors[0])
        assert "obs-bad" in (directory / "refused").read_text()
        assert journal.pending() == 0
    finally:
        journal.stop()


def test_a_torn_last_frame_is_cut_off_and_the_rest_kept(node: Node, tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    stalled = _journal(node, directory, window_s=3600.0)
    stalled.log(_entries(node, 2), wait=False)
    stalled.stop()
    whole = (directory / "journal").stat().st_size
    with open(directory / "journal", "ab") as f:
        f.write(b"\x00\x00\x10\x00torn")  # a crash in the middle of the next write
    journal = _journal(node, directory)
    try:
        assert journal.drain(30) and len(_on_chain(node)) == 2
    finally:
        journal.stop()
    assert read_journal(directory / "journal")[2] == (directory / "journal").stat().st_size
    assert whole > 0


def test_one_process_holds_a_hospitals_journal(node: Node, tmp_path: Path) -> None:
    from medledger.node.audit import JournalBusy

    journal = _journal(node, tmp_path / "audit")
    try:
        with pytest.raises(JournalBusy, match="in use"):
            _journal(node, tmp_path / "audit")
    finally:
        journal.stop()


def test_access_log_writes_an_id_once_per_custodian_and_checks_its_shape(
    node: Node, consortium: list[Path]
) -> None:
    entry = {**_entries(node)[0], "id": "ab" * 16}
    first = node.wallet.send("access.log", _body(node, [entry]))
    again = node.wallet.send("access.log", _body(node, [entry, {**entry, "id": "cd" * 16}]))
    assert first.result.ok and again.result.ok  # the re-sent one is skipped, not refused
    assert sorted(e["id"] for e in _on_chain(node)) == ["ab" * 16, "cd" * 16]

    other = node.sibling(consortium[1])  # ids are per custodian: another's is its own
    org = other.config.org
    theirs = {**entry, "actor": f"org:{org}", "actor_org": org}
    assert other.wallet.send("access.log", _body(other, [theirs])).result.ok
    assert [e["id"] for e in _on_chain(other)] == ["ab" * 16]

    with pytest.raises(TxRejected, match=r"entries\[0\]\.id: 32 lowercase hex"):
        node.wallet.send("access.log", _body(node, [{**entry, "id": "AB" * 16}]))


def test_at_most_max_inflight_txs_are_in_flight_and_the_rest_waits_durable(
    node: Node, tmp_path: Path
) -> None:
    flaky = FlakyEngine(node.engine)
    flaky.drop_next = 1000  # accepted, never committed: every tx stays in flight
    journal = _journal(
        node,
        tmp_path / "audit",
        engine=flaky,
        max_tx_entries=1,
        max_inflight=2,
        max_inflight_full=2,
        resend_s=60,
    )
    try:
        journal.log(_entries(node, 10), wait=False)
        threading.Event().wait(0.5)
        assert len(flaky.dropped) == 2 and journal.pending() == 10
        flaky.drop_next = 0
    finally:
        journal.stop()
    journal = _journal(node, tmp_path / "audit")  # the 10 are still journaled
    try:
        assert journal.drain(30) and len(_on_chain(node)) == 10
    finally:
        journal.stop()


def test_a_backlog_goes_out_in_more_full_txs_at_once_but_a_partial_one_waits(
    node: Node, tmp_path: Path
) -> None:
    """Beyond `max_inflight`, only full txs go (up to `max_inflight_full`): a backlog is sent
    at the validators' pace, never as a flood of small txs."""
    flaky = FlakyEngine(node.engine)
    flaky.drop_next = 1000  # accepted, never committed: every tx stays in flight
    journal = _journal(
        node,
        tmp_path / "audit",
        engine=flaky,
        max_tx_entries=2,
        max_inflight=1,
        max_inflight_full=3,
        resend_s=60,
    )
    try:
        journal.log(_entries(node, 7), wait=False)
        threading.Event().wait(0.5)
        sent = [_count(decode_tx(tx).body) for tx in flaky.dropped]
        assert sent == [2, 2, 2] and journal.pending() == 7  # the seventh waits
        flaky.drop_next = 0
    finally:
        journal.stop()
    journal = _journal(node, tmp_path / "audit")
    try:
        assert journal.drain(30) and len(_on_chain(node)) == 7
    finally:
        journal.stop()


def test_the_journal_is_rewritten_with_what_is_pending_once_it_grows(
    node: Node, tmp_path: Path
) -> None:
    directory = tmp_path / "audit"
    journal = _journal(node, directory, compact_bytes=4096)
    try:
        for _ in range(30):
            journal.log(_entries(node, 2), wait=True)
        assert journal.stats["entries"] == 60
    finally:
        journal.stop()
    assert (directory / "journal").stat().st_size < 4096 * 2  # 30 groups of 2: 14 KiB written
    assert read_journal(directory / "journal")[0] == []
    assert len(_on_chain(node)) == 60


class CheckRecorder(FlakyEngine):
    """FlakyEngine that also keeps the CheckTx code of every tx it passed on."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.codes: list[int] = []

    def submit(self, tx: bytes) -> Submitted:
        submitted = super().submit(tx)
        if tx not in self.dropped:
            self.codes.append(submitted.check.code)
        return submitted


def test_a_tx_that_would_lift_the_mark_over_an_entry_in_flight_waits_for_it(
    node: Node, tmp_path: Path
) -> None:
    """Entry A's tx is lost on its way (accepted, never in a block); entry B's tx, sent
    meanwhile, must not commit first: the chain would then skip A for good (its sequence
    below the mark). B's tx says it rests on A (`need`), waits (NOT_YET), and both land."""
    recorder = CheckRecorder(node.engine)
    recorder.drop_next = 1
    journal = _journal(node, tmp_path / "audit", recorder, window_s=0.02)
    try:
        journal.log(_entries(node, rid="obs-a"), wait=False)
        while not recorder.dropped:
            time.sleep(0.01)
        journal.log(_entries(node, rid="obs-b"), wait=True)  # returns once B committed
        assert journal.drain(30)
        trail = _on_chain(node)
        assert [e["rids"] for e in trail] == [["obs-a"], ["obs-b"]]  # A first, each once
        assert Code.NOT_YET in recorder.codes  # B waited for A
        assert journal.stats["held"] >= 1  # held for a block, not taken for an outage
        assert queries.access_seq(node.engine, node.org_key.public_key) == trail[-1]["seq"]
    finally:
        journal.stop()


def _activate_access(node: Node, other: Node, version: int) -> None:
    """A vote of two of the three hospitals: the active version of `access` becomes `version`."""
    body = {"action": "activate_contract", "args": {"name": "access", "version": version}}
    node.wallet.send("governance.propose", body)
    proposal = max(p["id"] for p in queries.proposals(node.engine))
    other.wallet.send("governance.vote", {"proposal": proposal, "approve": True})
    assert queries.contract_versions(node.engine)["access"] == version


def test_the_journal_follows_the_active_version_of_access_across_votes(
    node: Node, consortium: list[Path], tmp_path: Path
) -> None:
    """A consortium on v1 (as chains made before v2 are) activates v2, then v3, while the
    journal runs: it sends v1 bodies (entry ids) before, columns and sequences after, then
    v3's compact bodies; every entry lands once, and the trail reads both layouts in order."""
    other = node.sibling(consortium[1])
    _activate_access(node, other, 1)
    journal = _journal(node, tmp_path / "audit")
    try:
        journal.log(_entries(node, 2, rid="obs-v1"), wait=True)
        _activate_access(node, other, 2)
        journal.log(_entries(node, 2, rid="obs-v2"), wait=True)
        _activate_access(node, other, 3)
        journal.log(_entries(node, 2, rid="obs-v3"), wait=True)
        assert journal.drain(30)
    finally:
        journal.stop()
    trail = queries.access_of_patient(node.engine, PID)
    assert [e["rids"] for e in trail] == [["obs-v1"]] * 2 + [["obs-v2"]] * 2 + [["obs-v3"]] * 2
    assert [journal_ref(e)[:3] for e in trail] == ["id:", "id:", "seq", "seq", "seq", "seq"]
    assert len({journal_ref(e) for e in trail}) == 6


def test_on_cometbft_entries_no_caller_waits_for_go_out_once_per_block_time() -> None:
    """A read load's entries fill one tx per block time on CometBFT (each tx costs every
    validator a fixed share), never less than the default window; the solo sandbox's blocks
    follow its txs, so it keeps the default. A caller that waits for the commit is sent
    after `wait_window_s` whatever the engine."""
    assert window_for("cometbft", 1000) == 1.0
    assert window_for("cometbft", 3000) == 3.0
    assert window_for("cometbft", 50) == WINDOW_S
    assert window_for("solo", 1000) == WINDOW_S


def test_quiet_keeps_unwaited_entries_durable_off_the_chain_until_it_ends(
    node: Node, tmp_path: Path
) -> None:
    """A study answer's partials: journaled at once, sent once its answer has its block."""
    journal = _journal(node, tmp_path / "audit", window_s=0.02)
    try:
        journal.quiet(30.0)
        journal.log(_entries(node, 3), wait=False)  # durable when this returns
        assert len(read_journal(journal.path)[0]) == 1
        time.sleep(0.5)  # 25 send windows: none of them sent it
        assert journal.stats["txs"] == 0 and journal.pending() == 3 and _on_chain(node) == []
        journal.quiet(0)
        assert journal.drain(10.0)
        assert len(_on_chain(node)) == 3
    finally:
        journal.stop()


def test_an_entry_a_caller_waits_for_is_not_kept_back_by_quiet(node: Node, tmp_path: Path) -> None:
    """A remote read waits for its commit: it sends what was kept back before it, too."""
    journal = _journal(node, tmp_path / "audit", window_s=0.02, wait_window_s=0.02)
    try:
        journal.quiet(30.0)
        journal.log(_entries(node, 2, rid="obs-2"), wait=False)
        journal.log(_entries(node), wait=True, timeout=10.0)
        assert journal.drain(10.0)
        assert len(_on_chain(node)) == 3
    finally:
        journal.stop()


def test_a_quiet_renewed_again_and_again_holds_no_entry_longer_than_its_bound(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Study answers one after another each ask for a quiet: the trail still reaches the
    chain, each entry at most MAX_QUIET_S after it was journaled."""
    monkeypatch.setattr(audit_module, "MAX_QUIET_S", 0.3)
    journal = _journal(node, tmp_path / "audit", window_s=0.02)
    try:
        journal.quiet(30.0)
        journal.log(_entries(node, 3), wait=False)
        renewed_until = time.monotonic() + 2.0
        while time.monotonic() < renewed_until and len(_on_chain(node)) < 3:
            journal.quiet(30.0)  # another answer's partials
            time.sleep(0.05)
        assert len(_on_chain(node)) == 3, "the entries stayed off the chain behind renewals"
    finally:
        journal.stop()


def test_a_write_is_held_for_a_request_under_way_and_one_fsync_serves_both(
    node: Node, tmp_path: Path
) -> None:
    """`expecting`: a request under way that has not logged yet holds the write of another's
    entry back (up to `hold_s`); once it logs, one write and one fsync make both durable."""
    journal = _journal(node, tmp_path / "audit", window_s=3600.0, hold_s=3600.0)
    first_logged = threading.Event()
    second_may_log = threading.Event()
    ended: list[str] = []
    under_way = threading.Barrier(3)

    def read(name: str, gate: threading.Event | None) -> None:
        with journal.expecting():
            under_way.wait(30)
            if gate is not None:
                gate.wait(30)
            logging = journal.begin(_entries(node), wait=False)
            if gate is None:
                first_logged.set()
            logging.end()
            ended.append(name)

    threads = [
        threading.Thread(target=read, args=("first", None)),
        threading.Thread(target=read, args=("second", second_may_log)),
    ]
    try:
        for t in threads:
            t.start()
        under_way.wait(30)
        assert first_logged.wait(30)
        deadline = time.monotonic() + 30
        while not journal.stats["writes_held"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert journal.stats["writes_held"] == 1 and journal.stats["fsyncs"] == 0
        assert ended == []  # the first read's entry is not durable yet: it waits
        second_may_log.set()
        for t in threads:
            t.join(30)
        assert sorted(ended) == ["first", "second"]
        assert journal.stats["fsyncs"] == 1  # one for both
        (pending, _, _) = read_journal(tmp_path / "audit" / "journal")
        assert [len(group) for group in pending] == [1, 1]
    finally:
        second_may_log.set()
        under_way.abort()
        for t in threads:
            t.join(30)
        journal.stop()


def test_a_lone_request_is_written_at_once_and_one_that_never_logs_releases_the_hold(
    node: Node, tmp_path: Path
) -> None:
    journal = _journal(node, tmp_path / "audit", window_s=3600.0, hold_s=3600.0)
    try:
        with journal.expecting():  # nobody else under way: no hold at all
            journal.log(_entries(node), wait=False)
        assert journal.stats == {**journal.stats, "fsyncs": 1, "writes_held": 0}
        never_logs = threading.Event()
        left = threading.Event()

        def idle() -> None:
            with journal.expecting():
                never_logs.wait(30)
            left.set()

        other = threading.Thread(target=idle)
        other.start()
        deadline = time.monotonic() + 30
        while not journal._coming and time.monotonic() < deadline:
            time.sleep(0.01)
        logging = journal.begin(_entries(node), wait=False)  # held for the one under way
        deadline = time.monotonic() + 30
        while not journal.stats["writes_held"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert journal.stats["writes_held"] == 1 and journal.stats["fsyncs"] == 1
        never_logs.set()  # it ends without logging: the write goes on
        logging.end()
        other.join(30)
        assert left.is_set() and journal.stats["fsyncs"] == 2 and journal._coming == 0
    finally:
        never_logs.set()
        journal.stop()


def test_a_request_whose_entry_is_logged_as_it_ends_is_counted_off_once(
    node: Node, tmp_path: Path
) -> None:
    """A request's `begin` runs in a thread its context was copied to while the request
    itself leaves `expecting` (review14): it is no longer awaited once, not twice. Counted off
    twice, the journal would count -1 requests under way, and its writer would hold every
    later write back for good."""
    import contextvars
    import inspect
    import sys

    journal = _journal(node, tmp_path / "audit", window_s=3600.0)
    copied: list[contextvars.Context] = []
    inside = threading.Event()
    leave = threading.Event()

    def request() -> None:
        with journal.expecting():
            copied.append(contextvars.copy_context())
            inside.set()
            leave.wait(30)

    # The line where leaving `expecting` takes the journal's lock (the last `with self._cond`).
    lines, first = inspect.getsourcelines(inspect.unwrap(AuditJournal.expecting))
    lock_line = first + max(i for i, line in enumerate(lines) if "with self._cond" in line)
    thread = threading.Thread(target=request)
    try:
        thread.start()
        assert inside.wait(30)
        with journal._cond:
            leave.set()  # the request ends; it stops where it takes the lock, held here
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                frame = sys._current_frames().get(thread.ident or 0)
                while frame is not None and frame.f_code.co_name != "expecting":
                    frame = frame.f_back
                if frame is not None and frame.f_lineno == lock_line:
                    break
                time.sleep(0.001)
            else:
                raise AssertionError("the request never reached the lock")
            # Meanwhile its entry is logged in a thread its context was copied to.
            logging = copied[0].run(journal.begin, _entries(node), wait=False)
        thread.join(30)
        logging.end()
        assert journal._coming == 0
    finally:
        leave.set()
        thread.join(30)
        journal.stop()


def test_a_request_under_way_that_never_logs_nor_ends_holds_each_write_only_hold_s(
    node: Node, tmp_path: Path
) -> None:
    """A GET that stays under way (a slow client, a flood of requests that log nothing) keeps
    `_coming` above zero: each write is still held at most `hold_s`, then written; the entry
    is durable and its caller answered while that request is still under way (review14)."""
    journal = _journal(node, tmp_path / "audit", window_s=3600.0, hold_s=0.01)
    stuck = threading.Event()
    inside = threading.Event()

    def request() -> None:
        with journal.expecting():
            inside.set()
            stuck.wait(60)

    thread = threading.Thread(target=request)
    try:
        thread.start()
        assert inside.wait(30)
        for _ in range(3):
            journal.log(_entries(node), wait=False, timeout=30.0)  # JournalUnavailable if never
        assert journal.stats["writes_held"] == 3 and journal.stats["fsyncs"] == 3
        assert thread.is_alive() and journal._coming == 1
    finally:
        stuck.set()
        thread.join(30)
        journal.stop()
    assert journal._coming == 0


def test_entries_whose_caller_never_ends_are_still_written(node: Node, tmp_path: Path) -> None:
    """A `begin` whose `end` never comes (its request failed in between): the journal's
    writer thread still writes its entries, and they reach the chain as any other."""
    journal = _journal(node, tmp_path / "audit", window_s=0.05)
    try:
        journal.begin(_entries(node), wait=False)  # never ended
        assert journal.drain(30)
        assert journal.stats["fsyncs"] == 1 and journal.stats["entries"] == 1
    finally:
        journal.stop()
