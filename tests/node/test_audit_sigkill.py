"""A hospital node killed with SIGKILL in the middle of a read load loses no access entry:
every read a client was served is on the chain once the node has run again.

The node is `medledger node run` (solo engine) in a child process, with the real journal and
its fsync; the load is FHIR reads over HTTP from several threads; the kill comes while the
journal holds entries not yet on the chain.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

from medledger.api.services import issuer_key
from medledger.api.tokens import mint
from medledger.contracts.access import journal_ref
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.audit import read_journal
from medledger.node.config import load_config
from medledger.provisioning import create_consortium
from medledger.vault import Vault

MEDLEDGER = str(Path(sys.executable).parent / "medledger")


def _ingest(home: Path) -> tuple[str, str]:
    with (
        Node.open(home, serve=True, interval=0.02) as node,
        Vault.open(node.config.vault_config()) as vault,
    ):
        from medledger.node.ingest import Ingestor

        bundle = generate(1, ["chu-lyon"], seed=9)["chu-lyon"][0]
        result = Ingestor(node, vault).ingest_bytes(orjson.dumps(bundle), "p.json")
        (pid,) = result.pids
        rid = next(r for r in result.rids if vault.info(r).resource_type == "Observation")
    return pid, rid


def _start(home: Path, url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [MEDLEDGER, "node", "run", "--home", str(home), "--no-sync"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/fhir/metadata", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("the node did not serve its API in time")
        time.sleep(0.1)


def _pending(home: Path) -> int:
    groups, _, _ = read_journal(home / "audit" / "journal")
    return sum(len(g) for g in groups)


def test_sigkill_mid_load_loses_no_served_read(tmp_path: Path) -> None:
    (home,) = create_consortium(
        tmp_path / "net", 1, engine="solo", genesis_time_ms=int(time.time() * 1000)
    )
    pid, rid = _ingest(home)
    config = load_config(home)
    host, port = config.api.address
    url = f"http://{host}:{port}"
    now = int(time.time())
    token = mint(
        issuer_key(home),
        {
            "iss": f"urn:medledger:{config.org}:issuer",
            "aud": f"urn:medledger:{config.org}:fhir",
            "sub": f"Patient/{pid}",
            "scope": "patient/*.rs",
            "patient": pid,
            "iat": now,
            "exp": now + 600,
        },
    )
    served: list[int] = []
    attempted: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            while not stop.is_set():
                attempted.append(1)
                try:
                    answer = client.get(
                        f"/fhir/Observation/{rid}", headers={"Authorization": f"Bearer {token}"}
                    )
                except httpx.TransportError:
                    continue  # killed: not served
                if answer.status_code == 200:
                    served.append(1)

    proc = _start(home, url)
    threads = [threading.Thread(target=load) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(served) < 40 or _pending(home) == 0:
            assert time.monotonic() < deadline, "the load never left entries in the journal"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        assert _pending(home) > 0  # the kill left entries off the chain

        proc = _start(home, url)  # its start-up re-sends them
        deadline = time.monotonic() + 60
        while _pending(home):
            assert time.monotonic() < deadline, "the journal was not emptied in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    with Node.open(home) as node:
        trail = node.engine.query("access/of_patient", {"pid": pid})
    reads = [e for e in trail if e["action"] == "read" and e["rids"] == [rid]]
    assert len({journal_ref(e) for e in reads}) == len(reads)  # none written twice
    assert len(served) <= len(reads) <= len(attempted)
