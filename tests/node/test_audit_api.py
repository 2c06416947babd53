"""What a FHIR client sees of the audit journal: a read is served once its entry is durable
here, while the ledger is unreachable too; if the entry cannot be kept, 503 with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from medledger.api.services import HospitalServices, issuer_key
from medledger.api.tokens import mint
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.vault import Vault
from medledger.web.site import create_app
from tests.node.test_audit import FlakyEngine


class Served:
    def __init__(self, client: TestClient, svc: HospitalServices, pid: str, rid: str) -> None:
        self.client, self.svc, self.pid, self.rid = client, svc, pid, rid

    def read(self, rid: str | None = None) -> Any:
        now = int(time.time())
        claims = {
            "iss": self.svc.issuer_id,
            "aud": self.svc.audience,
            "sub": f"Patient/{self.pid}",
            "scope": "patient/*.rs",
            "patient": self.pid,
            "iat": now,
            "exp": now + 600,
        }
        token = mint(issuer_key(self.svc.node.config.home), claims)
        return self.client.get(
            f"/fhir/Observation/{rid or self.rid}", headers={"Authorization": f"Bearer {token}"}
        )

    def reads_on_chain(self) -> int:
        trail = self.svc.node.engine.query("access/of_patient", {"pid": self.pid})
        return sum(1 for e in trail if e["action"] == "read" and self.rid in e["rids"])


@pytest.fixture
def served(consortium: list[Path]) -> Iterator[Served]:
    with (
        Node.open(consortium[0], serve=True, interval=0.02) as node,
        Vault.open(node.config.vault_config()) as vault,
    ):
        svc = HospitalServices(node, vault)
        bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]
        result = svc.ingestor.ingest_bytes(orjson.dumps(bundle), "p.json")
        (pid,) = result.pids
        rid = next(r for r in result.rids if vault.info(r).resource_type == "Observation")
        with TestClient(create_app(svc)) as client:
            yield Served(client, svc, pid, rid)


def test_reads_are_served_while_the_ledger_is_down_and_recorded_once_it_is_back(
    served: Served,
) -> None:
    node = served.svc.node
    flaky = FlakyEngine(node.engine)
    flaky.down = True
    node.wallet.engine = flaky  # what the journal submits through
    assert [served.read().status_code for _ in range(3)] == [200, 200, 200]
    assert node.audit.pending() == 3 and served.reads_on_chain() == 0
    flaky.down = False
    assert node.audit.drain(30)
    assert served.reads_on_chain() == 3


def test_a_read_whose_entry_cannot_be_kept_is_refused_503_with_the_reason(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    assert served.svc.node.audit.pending() == 0  # running, then the disk fills up
    monkeypatch.setattr(os, "fsync", disk_full)  # what the journal calls
    answer = served.read()
    assert answer.status_code == 503
    issue = answer.json()["issue"][0]
    assert "cannot be written" in issue["diagnostics"] and "No space" in issue["diagnostics"]
    assert "Observation" not in answer.text  # nothing of the record left
    monkeypatch.undo()
    assert served.read().status_code == 200  # the disk has room again


def test_a_read_is_answered_only_once_its_entry_is_on_disk(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever way the read waits for its entry (a blocked worker thread today; session
    13 tried the event loop), the answer leaves only after the journal's fsync returned."""
    import os
    import threading

    from medledger.node.audit import read_journal

    disk = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        disk.wait(30)  # the disk takes its time
        real_fsync(fd)

    journal = served.svc.node.audit
    monkeypatch.setattr(os, "fsync", slow_fsync)
    answers: list[Any] = []
    reader = threading.Thread(target=lambda: answers.append(served.read()))
    try:
        reader.start()
        reader.join(0.5)
        assert answers == []  # nothing may leave yet
        assert journal.stats["fsyncs"] == 0
        disk.set()
        reader.join(30)
        assert [a.status_code for a in answers] == [200]
        assert served.rid in answers[0].text
        (pending, done, _) = read_journal(journal.path)
        assert journal.stats["fsyncs"] == 1
        assert sum(len(g) for g in pending) + len(done) >= 1  # written before it was served
    finally:
        disk.set()
        reader.join(30)


def test_two_reads_under_way_share_one_fsync_and_neither_is_answered_before_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both reads arrived (the API told the journal, `expecting`) before either logged; the
    first logs: the writer holds its write for the second's entry (here as long as it takes),
    one fsync makes both durable, and no answer leaves before that fsync has returned."""
    import os
    import threading

    from medledger.node.audit import read_journal

    assert served.read().status_code == 200  # the first read starts the journal
    journal = served.svc.node.audit
    journal.hold_s = 3600.0  # the writer waits for the second read whatever the machine does
    fsyncs = journal.stats["fsyncs"]
    both_under_way = threading.Barrier(2)
    second_may_log = threading.Event()
    disk = threading.Event()
    synced: list[int] = []
    real_fsync = os.fsync
    original = HospitalServices.log_later

    def log_later(self: HospitalServices, entries: Any, *, wait: bool) -> Any:
        if both_under_way.wait(30) == 0:  # neither logs before both have arrived
            second_may_log.wait(30)  # and one of them only once the other's write is held
        return original(self, entries, wait=wait)

    def slow_fsync(fd: int) -> None:
        synced.append(fd)
        disk.wait(30)  # the disk takes its time
        real_fsync(fd)

    monkeypatch.setattr(HospitalServices, "log_later", log_later)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    answers: list[Any] = []
    readers = [threading.Thread(target=lambda: answers.append(served.read())) for _ in range(2)]
    try:
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 30
        while not (journal.stats["writes_held"] or synced) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert journal.stats["writes_held"] == 1 and synced == []  # held, nothing written
        second_may_log.set()
        while not synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(synced) == 1  # one write, now in its fsync
        readers[0].join(0.3)
        assert answers == []  # neither leaves before the fsync returns
        pending, _, _ = read_journal(journal.path)
        assert sum(len(g) for g in pending) >= 3  # both entries in that one write
        disk.set()
        for reader in readers:
            reader.join(30)
        assert [a.status_code for a in answers] == [200, 200]
        assert journal.stats["fsyncs"] - fsyncs == 1  # one fsync served both
    finally:
        second_may_log.set()
        disk.set()
        both_under_way.abort()
        for reader in readers:
            reader.join(30)


def test_a_read_that_never_logs_does_not_keep_the_next_write_waiting(served: Served) -> None:
    """A GET under /fhir that logs nothing (a record not known here) stops being awaited when
    its answer is sent; the next read's entry is written at once, however long a hold."""
    assert served.read().status_code == 200
    journal = served.svc.node.audit
    journal.hold_s = 3600.0
    assert served.read("no-such-record").status_code == 404
    assert served.read().status_code == 200  # not held: nobody else is under way
    assert journal.stats["writes_held"] == 0
