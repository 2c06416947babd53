"""A hospital under `net up`'s supervisor: kill -9 its CometBFT, then its app, and find it
serving again (a FHIR read, and a write that commits) with no command typed; while its
CometBFT is gone its API answers 503 with the reason, never 500."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from medledger.cli.demo import demo_token
from medledger.consensus.cometbft import processes
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.node.config import load_config
from medledger.provisioning import create_consortium
from tests.support.exposition import parse

from .conftest import requires_cometbft

pytestmark = [requires_cometbft, pytest.mark.cometbft, pytest.mark.timeout(420)]

ORG = "chu-lyon"
_numbers = itertools.count(1)


def _patient() -> bytes:
    """A Patient as a hospital's EMR posts it: its own id and local identifier."""
    n = next(_numbers)
    return orjson.dumps(
        {
            "resourceType": "Patient",
            "id": f"emr-{n}",
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.7", "value": f"sup-{n}"}],
            "name": [{"family": f"SUPERVISE{n}", "given": ["Ana"]}],
            "gender": "female",
            "birthDate": "1980-01-01",
        }
    )


class Hospital:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.home = directory / "hospitals" / ORG
        host, port = load_config(self.home).api.address
        self.url = f"http://{host}:{port}"
        token = demo_token(self.home, ORG, "Practitioner/dr-sup", "user/*.cruds")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.location = ""  # of the last Patient written

    def pid(self, role: str) -> int | None:
        return processes.read_pid(self.dir, ORG, role)

    def write_and_read(self) -> int:
        """Create a Patient (committed on the chain) and read it back; the statuses seen."""
        created = self.http.post(
            "/fhir/Patient",
            content=_patient(),
            headers={**self.headers, "Content-Type": "application/fhir+json"},
        )
        if created.status_code != 201:
            return created.status_code
        self.location = created.headers["location"].removeprefix(self.url)
        return self.http.get(self.location, headers=self.headers).status_code

    def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while time.monotonic() < deadline:
            try:
                status = self.write_and_read()
            except httpx.TransportError:  # the app itself restarting
                status = 0
            if status == 200:
                return
            assert status != 500, "the node answered 500"
            seen.add(status)
            time.sleep(0.3)
        raise AssertionError(f"not serving again within {timeout}s (statuses seen: {seen})")


@pytest.fixture
def hospital(tmp_path: Path) -> Iterator[Hospital]:
    directory = tmp_path / "net"
    create_consortium(
        directory,
        1,
        engine="cometbft",
        chain_id="medledger-supervise-test",
        block_time_ms=200,
        genesis_time_ms=int(time.time() * 1000),
    )
    try:
        processes.up(directory, timeout=60, supervise=True)
        with Node.open(directory / "hospitals" / ORG) as node:  # a client of the running node
            key = SigningKey.generate()
            key.save(node.config.practitioner_key_path("dr-sup"))
            body = {"practitioner": "dr-sup", "key": key.public_key, "roles": ["physician"]}
            node.wallet.send("identity.register", body)
        h = Hospital(directory)
        h.wait_serving(60)
        yield h
        h.http.close()
    finally:
        processes.down(directory, timeout=10)
        assert not [p for p in processes.processes(directory) if p.running]
        assert processes.read_pid(directory, ORG, "supervisor") is None


def test_each_process_killed_comes_back_by_itself(hospital: Hospital) -> None:
    # CometBFT dies: the app stays and says why it cannot serve, then serves again.
    app_pid, cometbft_pid = hospital.pid("app"), hospital.pid("cometbft")
    assert app_pid and cometbft_pid
    os.kill(cometbft_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        read = hospital.http.get(hospital.location, headers=hospital.headers)
        if read.status_code == 503 or time.monotonic() > deadline:
            break
        assert read.status_code == 200, read.text
        time.sleep(0.05)
    assert read.status_code == 503, read.text
    issue = read.json()["issue"][0]
    assert read.json()["resourceType"] == "OperationOutcome" and issue["code"] == "transient"
    assert "CometBFT" in issue["diagnostics"] and read.headers["retry-after"]
    page = hospital.http.get("/explorer")
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
    assert "CometBFT" in page.text
    health = hospital.http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert "CometBFT" in health.json()["reasons"][0]

    hospital.wait_serving()
    assert hospital.pid("app") == app_pid  # the app was never restarted
    assert hospital.pid("cometbft") not in (None, cometbft_pid)
    assert hospital.http.get("/health").json()["status"] == "ok"
    series, _ = parse(hospital.http.get("/metrics").text)  # this test runs on loopback
    me = (("org", ORG),)
    assert series[("medledger_up", me)] == 1 and series[("medledger_catching_up", me)] == 0
    assert series[("medledger_chain_height", me)] >= series[("medledger_height", me)] - 1 > 0
    assert series[("medledger_peers", me)] == 0  # a consortium of one
    assert ("medledger_mempool_txs", me) in series and ("medledger_sync_lag_blocks", me) in series

    # The app dies (and with it the API): app and CometBFT come back, in that order.
    cometbft_pid = hospital.pid("cometbft")
    assert cometbft_pid
    os.kill(app_pid, signal.SIGKILL)
    hospital.wait_serving()
    assert hospital.pid("app") not in (None, app_pid)
    assert hospital.pid("cometbft") not in (None, cometbft_pid)

    log = (hospital.dir / "logs" / f"{ORG}.supervisor.log").read_text()
    assert "cometbft is gone: restarting" in log and "app is gone: restarting" in log
