"""`medledger sandbox run` and `node run` as processes: they serve, then stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from medledger.exchange import pki
from medledger.ledger.genesis import Genesis
from medledger.provisioning import create_consortium

MEDLEDGER = str(Path(sys.executable).parent / "medledger")


def _health(home: Path, url: str, timeout: float = 20.0) -> dict[str, object]:
    genesis = Genesis.load(home.parent.parent / "genesis.json")
    pins = {m.org: m.tls_key for m in genesis.members}
    ctx = pki.client_context(pki.TlsFiles.of_home(home), pins)
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=ctx, timeout=2) as client:
        while True:
            try:
                found: dict[str, object] = client.get(url + "/exchange/v1/health").json()
                return found
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _gateway(home: Path) -> str:
    raw = json.loads((home / "config.json").read_text())
    return str(raw["exchange"]["peers"][home.name])


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_sandbox_run_serves_every_hospital_until_sigterm(tmp_path: Path) -> None:
    homes = create_consortium(tmp_path / "net", 3, genesis_time_ms=int(time.time() * 1000))
    added = subprocess.run(
        [MEDLEDGER, "practitioner", "add", "-H", str(homes[0]), "--id", "dr-x", "--roles", "nurse"],
        capture_output=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen(
        [MEDLEDGER, "sandbox", "run", str(tmp_path / "net")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for home in homes:
            # Each gateway answers a peer's certificate with its own hospital's name.
            health = _health(homes[0], _gateway(home))
            assert health["org"] == home.name and health["peer"] == homes[0].name
    finally:
        output = _stop(proc)
    assert "3 hospitals running" in output
    # Sign-in tokens for its clinicians, and why other commands wait while it runs.
    assert "sign-in token of dr-x (12 h): ey" in output
    assert "holds the solo ledger" in output


def test_node_run_on_a_single_solo_hospital(tmp_path: Path) -> None:
    (home,) = create_consortium(tmp_path / "net", 1, genesis_time_ms=int(time.time() * 1000))
    proc = subprocess.Popen(
        [MEDLEDGER, "node", "run", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _health(home, _gateway(home))["org"] == home.name
    finally:
        _stop(proc)
