"""A solo sandbox of three hospitals in this process, each with its gateway on a free port.

Chu-lyon (A) is the custodian in most tests, aphp-paris (B) the hospital that asks, and
chu-bordeaux (C) a third party. Gateways listen on 127.0.0.1 port 0 and publish their bound
address in one shared directory; everything is stopped by the fixture.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.exchange.client import Directory
from medledger.exchange.service import HospitalExchange
from medledger.interop.synth import bundle_label, generate, hba1c_observation
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium
from medledger.vault import Vault

A, B, C = "chu-lyon", "aphp-paris", "chu-bordeaux"
EVIDENCE = hashlib.sha256(b"the patient's signed consent form").digest()


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Hospital:
    node: Node
    vault: Vault
    exchange: HospitalExchange | None = None

    @property
    def org(self) -> str:
        return self.node.config.org


@dataclass
class Sandbox:
    dir: Path
    homes: list[Path]
    root: Node
    directory: Directory
    h: dict[str, Hospital] = field(default_factory=dict)

    def start(self, org: str, sync: bool = True) -> HospitalExchange:
        hosp = self.h[org]
        hosp.exchange = HospitalExchange(
            hosp.node, hosp.vault, directory=self.directory, port=0
        ).start(sync=sync)
        return hosp.exchange

    def x(self, org: str) -> HospitalExchange:
        exchange = self.h[org].exchange
        assert exchange is not None
        return exchange

    def stop_all(self) -> None:
        for hosp in self.h.values():
            if hosp.exchange is not None:
                hosp.exchange.stop()
                hosp.exchange = None

    def ingest(self, org: str, bundle: dict[str, Any]) -> tuple[str, list[str]]:
        hosp = self.h[org]
        result = Ingestor(hosp.node, hosp.vault).ingest_bytes(orjson.dumps(bundle), "b.json")
        assert result.rejections == [], result.rejections
        (pid,) = result.pids
        return pid, result.rids

    def consent(self, by: str, pid: str, grantee: str, **over: Any) -> int:
        """A treatment consent recorded by hospital `by`, a custodian of the patient, on the
        patient's behalf: the patient asked for it on `by`'s portal."""
        body = {
            "pid": pid,
            "grantee": f"org:{grantee}",
            "categories": ["*"],
            "purpose": "treatment",
            "start_ms": 0,
            "evidence_hash": EVIDENCE,
            "channel": "portal",
            **over,
        }
        committed = self.h[by].node.wallet.send("consent.grant", body)
        (event,) = [e for e in committed.result.events if e.type == "consent.granted"]
        return int(event.get("id") or 0)

    def erasure_takes_effect(self, pid: str) -> None:
        """A request filed on the patient's behalf waits on_behalf_delay_ms (72 h): move the
        chain's clock past it and cut a block, whose end opens the request."""
        engine: Any = self.root.engine
        pending = engine.query("erasure/pending", {"pid": pid})
        assert pending is not None, "no pending erasure request"
        ahead = (pending["effective_ms"] - time.time() * 1000) / 1000 + 1
        base = engine.clock
        engine.clock = lambda: base() + max(ahead, 0)
        engine.empty_blocks = True  # a block with no tx runs end_block too
        try:
            wait_for(
                lambda: engine.query("erasure/status", {"pid": pid}) is not None,
                what="the erasure request in effect",
            )
        finally:
            engine.empty_blocks = False

    def trail(self, pid: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.root.engine.query("access/of_patient", {"pid": pid})
        return found


def bundles(n: int = 2, seed: int = 3) -> list[dict[str, Any]]:
    """Synthetic patients' bundles as chu-lyon would hold them."""
    return generate(n, [A, B, C], seed=seed)[A]


def observation(sandbox: Sandbox, org: str, pid: str, value: float = 7.1) -> dict[str, Any]:
    """A new HbA1c result for a patient the hospital already holds (one resource)."""
    patient = next(
        i.rid for i in sandbox.h[org].vault.records_of(pid, False) if i.resource_type == "Patient"
    )
    return hba1c_observation(f"Patient/{patient}", "2025-01-15T08:30:00+01:00", value)


def open_sandbox(directory: Path, homes: list[Path]) -> Sandbox:
    root = Node.open(homes[0], serve=True, interval=0.05)
    sandbox = Sandbox(directory, homes, root, Directory())
    for home in homes:
        node = root if home == homes[0] else root.sibling(home)
        sandbox.h[node.config.org] = Hospital(node, Vault.open(node.config.vault_config()))
    return sandbox


def close_sandbox(sandbox: Sandbox) -> None:
    sandbox.stop_all()
    for hosp in sandbox.h.values():
        hosp.vault.close()
    sandbox.root.close()


@pytest.fixture
def net_dir(tmp_path: Path) -> tuple[Path, list[Path]]:
    directory = tmp_path / "net"
    homes = create_consortium(directory, 3, genesis_time_ms=int(time.time() * 1000))
    return directory, homes


@pytest.fixture
def sandbox(net_dir: tuple[Path, list[Path]]) -> Iterator[Sandbox]:
    """Three hospitals, gateways and sync agents running."""
    sb = open_sandbox(*net_dir)
    try:
        for org in (A, B, C):
            sb.start(org)
        yield sb
    finally:
        close_sandbox(sb)


def _copies_from_a_and_c(sandbox: Sandbox) -> tuple[str, list[str], list[str]]:
    """A patient with care records at A and at C, and B holding copies of both (only copies)."""
    by_org = generate(6, [A, B, C], seed=3)
    at_c = {bundle_label(b): b for b in by_org[C]}
    bundle_a = next(b for b in by_org[A] if bundle_label(b) in at_c)
    pid, from_a = sandbox.ingest(A, bundle_a)
    pid_c, from_c = sandbox.ingest(C, at_c[bundle_label(bundle_a)])
    assert pid_c == pid
    sandbox.consent(A, pid, B)
    vault_b = sandbox.h[B].vault
    wait_for(lambda: len(vault_b.records_of(pid)) == len(from_a) + len(from_c), what="prefetch")
    return pid, from_a, from_c


def _erase_jobs(sandbox: Sandbox, org: str) -> list[str]:
    return [j["detail"] for j in sandbox.x(org).store.history() if j["kind"] == "erase"]
