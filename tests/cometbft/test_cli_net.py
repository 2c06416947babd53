"""`medledger init --engine cometbft` then `net up`, `net status`, `net down`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.consensus.cometbft import processes

from .conftest import requires_cometbft

pytestmark = [requires_cometbft, pytest.mark.cometbft, pytest.mark.timeout(120)]


def test_net_up_status_down(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "net"
    result = runner.invoke(
        app, ["init", str(d), "--hospitals", "4", "--engine", "cometbft", "--block-time", "250ms"]
    )
    assert result.exit_code == 0, result.output
    try:
        result = runner.invoke(app, ["net", "up", str(d)])
        assert result.exit_code == 0, result.output
        assert all(p.running for p in processes.processes(d))
        again = runner.invoke(app, ["net", "up", str(d)])  # idempotent: nothing new started
        assert again.exit_code == 0, again.output
        import time

        def ready(rows: list[dict[str, Any]]) -> bool:
            return all(
                r["validator"] and r["peers"] == 3 and r["height"] >= 1 and r["supervised"]
                for r in rows
            )

        deadline = time.monotonic() + 30  # peers connect within a few seconds of each other
        while True:
            result = runner.invoke(app, ["net", "status", str(d), "--json"])
            assert result.exit_code == 0, result.output
            rows = json.loads(result.output)
            if ready(rows) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [r["org"] for r in rows] == json.loads((d / "consortium.json").read_text())[
            "hospitals"
        ]
        assert ready(rows), rows
        table = runner.invoke(app, ["net", "status", str(d)])
        assert table.exit_code == 0 and "chu-lyon" in table.output
    finally:
        result = runner.invoke(app, ["net", "down", str(d)])
    assert result.exit_code == 0, result.output
    assert not any(p.running for p in processes.processes(d))
    assert list((d / "run").iterdir()) == []
    assert (d / "logs" / "chu-lyon.cometbft.log").stat().st_size > 0
    down = runner.invoke(app, ["net", "status", str(d)])
    assert down.exit_code == 0 and "not running" in down.output


def test_net_refuses_a_solo_consortium(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "solo"
    assert runner.invoke(app, ["init", str(d), "--hospitals", "2"]).exit_code == 0
    result = runner.invoke(app, ["net", "up", str(d)])
    assert result.exit_code == 1
    assert "solo" in result.output


def test_commands_on_a_stopped_network_say_so_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "net"
    assert runner.invoke(app, ["init", str(d), "--engine", "cometbft"]).exit_code == 0
    synth = tmp_path / "synth"
    made = runner.invoke(
        app, ["synth", "--patients", "1", "--hospitals", "chu-lyon", "--out", str(synth)]
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        app, ["ingest", "--home", str(d / "hospitals" / "chu-lyon"), str(synth / "chu-lyon")]
    )
    assert result.exit_code == 1
    assert "cannot reach the node" in result.output
    assert "Traceback" not in result.output
