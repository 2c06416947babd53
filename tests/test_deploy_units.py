"""The systemd units shipped in deploy/: one per process, restarted when they die, bounded,
in order, and confined (own user, read-only system, write access to the home only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NODE, COMETBFT = "medledger-node@.service", "medledger-cometbft@.service"


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat); comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("name", [NODE, COMETBFT])
def test_each_unit_restarts_its_process_within_a_bound_and_is_confined(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"] and float(service["RestartSec"][0]) > 0
    assert unit["Unit"]["StartLimitBurst"] == ["5"]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["60"]
    assert service["User"] == ["medledger"] and service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"] and service["ProtectHome"] == ["yes"]
    (writable,) = service["ReadWritePaths"]
    assert writable.startswith("/var/lib/medledger/%i")
    assert service["CapabilityBoundingSet"] == [""]  # no capability at all


def test_the_node_runs_first_and_cometbft_follows_it() -> None:
    node, cometbft = _unit(NODE), _unit(COMETBFT)
    (start,) = node["Service"]["ExecStart"]
    assert start.split()[1:] == ["node", "run", "--home", "/var/lib/medledger/%i"]
    (start,) = cometbft["Service"]["ExecStart"]
    assert start.split()[1:] == ["start", "--home", "/var/lib/medledger/%i/cometbft"]
    assert "medledger-node@%i.service" in cometbft["Unit"]["After"][0].split()
    assert cometbft["Unit"]["BindsTo"] == ["medledger-node@%i.service"]
    assert "medledger-cometbft@%i.service" in node["Unit"]["Wants"]


def test_systemd_reads_the_units_without_an_error() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: `make setup` installs it (scripts/setup-system.sh)"
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(DEPLOY / NODE), str(DEPLOY / COMETBFT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Tolerated: the programs are not installed on this machine, and the backoff keys that
    # systemd < 254 does not know yet (it ignores them).
    tolerated = ("is not executable", "Unknown key 'RestartSteps'", "Unknown key 'RestartMax")
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not any(t in line for t in tolerated)
    ]
    assert problems == []
