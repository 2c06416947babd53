"""Review 11a's findings 1 and 2 on the sealed research digest, adapted to the merged design
(one sealed row per patient and consent category, and an index row).

1. A put folded its record into the patient's whole row of its category, so a bedside
   monitor's readings (one Observation a minute) made each put cost grow with the history.
   Now a put reads, opens and reseals at most `ROW_BOUND` bytes of a row; past it the row
   is dropped and its next reader rebuilds it from the records.
2. On PostgreSQL, two workers rebuilding one stale digest at once: the second failed on the
   primary key. Now rows are upserted, a rebuild is stored under the key row's lock only if
   the records are still as it read them, on the index stored meanwhile.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import medledger.vault.digest
import medledger.vault.vault
from medledger.interop.research_facts import DIGESTER
from medledger.vault import Vault, VaultConfig
from medledger.vault.digest import ROW_BOUND
from tests.postgres_server import PostgresServer
from tests.vault.conftest import HOSPITAL, VaultEnv, make_pid

VITALS, LABS = "vital-signs", "labs"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _heart_rate(i: int) -> bytes:
    """One bedside monitor reading, as an HL7 ORU feed turns each one into a FHIR
    Observation (one unit, one put, per reading)."""
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": f"hr-{i}",
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/icu-1"},
            "device": {"display": "bedside monitor 12"},
            "effectiveDateTime": f"2026-01-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z",
            "valueQuantity": {
                "value": 60 + i % 40,
                "unit": "beats/minute",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        }
    )


def _hba1c(i: int) -> bytes:
    """A lab result as a laboratory system sends it: its own identifier, a performer."""
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": f"lab-{i}",
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": f"LIS-{i}"}],
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "performer": [{"reference": "Practitioner/bio-7", "display": "Dr Biologiste"}],
            "effectiveDateTime": f"2025-0{1 + i}-15",
            "valueQuantity": {"value": 6.1 + i / 10, "unit": "%", "code": "%"},
        }
    )


def _put_reading(vault: Vault, pid: str, i: int) -> None:
    vault.put(pid, f"hr-{i}", 1, _heart_rate(i), resource_type="Observation", custodian=HOSPITAL)


def _put_lab(vault: Vault, pid: str, i: int) -> None:
    vault.put(pid, f"lab-{i}", 1, _hba1c(i), resource_type="Observation", custodian=HOSPITAL)


class Counting:
    """The node's digester, counting the records it digests (a rebuild's work)."""

    def __init__(self) -> None:
        self.calls = 0
        self.version = DIGESTER.version

    def __call__(self, resource: dict[str, Any]) -> tuple[str, Any]:
        self.calls += 1
        return DIGESTER(resource)

    def types_in(self, categories: Collection[str]) -> Collection[str] | None:
        return DIGESTER.types_in(categories)


class Work:
    """The digest bytes one put reads from the store, opens (AES-GCM) and seals."""

    def __init__(self) -> None:
        self.read = self.opened = self.sealed = 0

    @property
    def total(self) -> int:
        return self.read + self.opened + self.sealed


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Work:
    counted = Work()
    real_open, real_seal = medledger.vault.digest.open_digest, medledger.vault.digest.seal_digest

    def opening(keys: Any, aad: bytes, sealed: bytes) -> Any:
        counted.opened += len(sealed)
        return real_open(keys, aad, sealed)

    def sealing(keys: Any, aad: bytes, payload: Any) -> bytes:
        sealed = real_seal(keys, aad, payload)
        counted.sealed += len(sealed)
        return sealed

    monkeypatch.setattr(medledger.vault.digest, "open_digest", opening)
    monkeypatch.setattr(medledger.vault.digest, "seal_digest", sealing)  # an index's
    monkeypatch.setattr(medledger.vault.vault, "seal_digest", sealing)  # a row's
    return counted


def _count_reads(vault: Vault, work: Work) -> None:
    real = vault._backend.read_digests

    def reading(*args: Any) -> dict[str, bytes | None]:
        rows = real(*args)
        work.read += sum(len(sealed) for sealed in rows.values() if sealed is not None)
        return rows

    setattr(vault._backend, "read_digests", reading)  # noqa: B010 (this instance only)


# -- finding 1: a put's digest work is bounded whatever the patient's history -------------


def test_a_bedside_monitors_4000th_reading_costs_no_more_digest_work_than_the_bound(
    tmp_path: Path, work: Work
) -> None:
    """An ICU patient's monitor sends a reading a minute (4,000: under three days), and a
    study reads their vital signs half way through (rebuilding and storing the whole row).
    No put reads, opens or seals more than about three rows of `ROW_BOUND` bytes, while the
    patient's vital signs alone are more than ten times that; the study still gets every
    reading's facts, as the records give them."""
    config = VaultConfig(
        HOSPITAL,
        path=tmp_path / "vault.db",
        kek=secrets.token_bytes(32),
        sqlite_synchronous="OFF",
        digester=DIGESTER,  # as HospitalConfig.vault_config gives the node's vault
    )
    pid = make_pid("icu-1")
    with Vault.open(config) as vault:
        _count_reads(vault, work)
        for i in range(3):
            _put_lab(vault, pid, i)
        per_put: list[tuple[int, int]] = []
        for i in range(4000):
            work.read = work.opened = work.sealed = 0
            _put_reading(vault, pid, i)
            per_put.append((work.total, work.sealed))
            if i == 2000:
                assert len(next(iter(vault.research_digests([pid], DIGESTER, [VITALS])))[1]) == 2001
        slack = 4096  # the index, and the put's own facts
        assert max(total for total, _ in per_put) <= 3 * ROW_BOUND + slack
        assert per_put[-1][1] <= ROW_BOUND + slack
        assert per_put[0][0] > 0  # a put does keep the digest

        by_records = sorted(
            (info.rid, DIGESTER(orjson.loads(data))[1])
            for info, data in vault.latest_records([pid], None)
            if data is not None
        )
        digested = Counting()
        _, facts = next(iter(vault.research_digests([pid], digested, [LABS, VITALS])))
        assert facts == [fact for _, fact in by_records]
        assert len(facts) == 4003
        assert len(orjson.dumps(facts)) > 10 * ROW_BOUND  # what a put used to reseal
        assert digested.calls == 4003  # the rows the puts dropped, rebuilt from the records
        _, again = next(iter(vault.research_digests([pid], digested, [LABS, VITALS])))
        assert again == facts and digested.calls == 4003  # and stored by that reader


# -- finding 2: PostgreSQL, workers rebuilding one patient's digest at once ---------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VaultEnv]:
    kek = secrets.token_bytes(32)
    if request.param == "sqlite":
        made = VaultEnv("sqlite", kek, sqlite_path=tmp_path / "vault.db")
        yield made
        for vault in made.opened:
            vault.close()
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    with server.database() as dsn:
        made = VaultEnv("postgres", kek, dsn=dsn, pg_server=server)
        try:
            yield made
        finally:
            for vault in made.opened:
                vault.close()


@pytest.fixture
def pg_env(pg_server: PostgresServer) -> Iterator[VaultEnv]:
    with pg_server.database() as dsn:
        made = VaultEnv("postgres", secrets.token_bytes(32), dsn=dsn, pg_server=pg_server)
        try:
            yield made
        finally:
            for vault in made.opened:
                vault.close()


def _lock_waiters(env: VaultEnv) -> int:
    rows = env.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    return int(rows[0][0])


def _race(
    env: VaultEnv, first: Vault, second: Vault, reads: dict[str, list[str]], pid: str
) -> dict[str, Any]:
    """`first` reads its categories and holds its transaction open once it stored its
    rebuilt rows; `second` reads its own meanwhile (and waits on first's lock); then first
    commits. Each one's facts, or what it raised; and whether second was seen waiting."""
    stored, release = threading.Event(), threading.Event()
    real_put = first._backend.put_digests

    def put_then_hold(*args: Any, **kwargs: Any) -> None:
        real_put(*args, **kwargs)
        stored.set()
        release.wait(30)  # the first worker's transaction stays open here

    setattr(first._backend, "put_digests", put_then_hold)  # noqa: B010 (this instance only)
    outcomes: dict[str, Any] = {}

    def read(name: str, vault: Vault) -> None:
        try:
            outcomes[name] = list(vault.research_digests([pid], DIGESTER, reads[name]))
        except Exception as exc:  # what the study agent would log as a failed answer
            outcomes[name] = exc

    one = threading.Thread(target=read, args=("first", first))
    two = threading.Thread(target=read, args=("second", second))
    one.start()
    assert stored.wait(30)
    two.start()
    deadline = time.monotonic() + 15
    while _lock_waiters(env) == 0 and time.monotonic() < deadline and two.is_alive():
        time.sleep(0.05)
    outcomes["waited"] = _lock_waiters(env) > 0
    release.set()
    one.join(30)
    two.join(30)
    return outcomes


@pytest.mark.postgres
def test_two_workers_rebuilding_one_stale_digest_on_postgresql_both_answer(
    pg_env: VaultEnv,
) -> None:
    """Two API/study workers on one PostgreSQL vault read a patient whose digest is stale
    (written by a vault without a digester) at the same moment: the second waits for the
    first one's key row lock, then stores its rows over the first's. Both answer alike."""
    writer = pg_env.open()  # a vault without a digester: the digests go stale
    first, second = pg_env.open(), pg_env.open()
    pid = make_pid("shared-1")
    for i in range(3):
        _put_reading(writer, pid, i)
    outcomes = _race(pg_env, first, second, {"first": [VITALS], "second": [VITALS]}, pid)
    assert not isinstance(outcomes["first"], Exception), outcomes["first"]
    assert not isinstance(outcomes["second"], Exception), repr(outcomes["second"])
    assert outcomes["waited"]  # they did overlap
    assert outcomes["first"] == outcomes["second"]
    assert [len(facts) for _, facts in outcomes["second"]] == [3]


@pytest.mark.postgres
def test_two_workers_rebuilding_different_categories_at_once_keep_both_rows(
    pg_env: VaultEnv,
) -> None:
    """One worker rebuilds a patient's vital signs while another rebuilds their labs: the
    second stores its row on the index the first stored, so both rows stay listed and the
    next study reads both without decrypting a record."""
    writer = pg_env.open()
    first, second, third = pg_env.open(), pg_env.open(), pg_env.open()
    pid = make_pid("shared-2")
    for i in range(3):
        _put_reading(writer, pid, i)
        _put_lab(writer, pid, i)
    outcomes = _race(pg_env, first, second, {"first": [VITALS], "second": [LABS]}, pid)
    assert outcomes["waited"]
    assert [len(facts) for _, facts in outcomes["first"]] == [3]
    assert [len(facts) for _, facts in outcomes["second"]] == [3]
    digested = Counting()
    assert [len(f) for _, f in third.research_digests([pid], digested, [LABS, VITALS])] == [6]
    assert digested.calls == 0


def test_a_rebuild_of_an_older_state_leaves_a_writers_fresher_rows(env: VaultEnv) -> None:
    """A study worker rebuilds a patient's vital signs row (missing) while the node stores
    a new lab result for them: the rebuild, made for the records as they were before, stores
    nothing, and the node's fresh labs row stays readable without decrypting a record."""
    node = env.open()
    node.digester = DIGESTER  # as HospitalConfig.vault_config gives the node's vault
    worker, later = env.open(), env.open()
    pid = make_pid("icu-2")
    _put_reading(node, pid, 0)
    _put_lab(node, pid, 0)
    env.execute("DELETE FROM research_digest_rows WHERE category = ?", (VITALS,))

    real = worker.latest_records

    def then_a_put(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from real(*args, **kwargs)
        _put_lab(node, pid, 1)  # after the worker read the records, before it stores

    setattr(worker, "latest_records", then_a_put)  # noqa: B010 (this instance only)
    ((_, facts),) = worker.research_digests([pid], DIGESTER, [VITALS])
    assert len(facts) == 1
    digested = Counting()
    ((_, labs),) = later.research_digests([pid], digested, [LABS])
    assert len(labs) == 2 and digested.calls == 0  # the node's rows, not the worker's
    ((_, vitals),) = later.research_digests([pid], digested, [VITALS])
    assert len(vitals) == 1 and digested.calls > 0  # still missing: rebuilt now
