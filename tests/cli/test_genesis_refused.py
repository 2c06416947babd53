"""A genesis naming a parameter no contract knows is refused before a ledger starts from it.

`consortium genesis` and `init` refuse a misspelt parameter when they write a genesis; a
genesis.json edited since reached the node's InitChain, which ignored the name: the consortium
started without the setting its founders wrote (session 14). InitChain refuses it now (from
governance v6, tests/contracts/test_genesis_params.py), and the tools that start a new ledger
say so first, naming the file and the parameter, before anything is written: a solo node, a
CometBFT app process, `net up`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.consensus.cometbft import processes
from medledger.node import Node
from medledger.node.config import ConfigError
from medledger.node.run_app import open_application
from medledger.provisioning import create_consortium

runner = CliRunner()
REFUSAL = "field params.study_min_cel: no such parameter"


def _misspell(directory: Path) -> Path:
    """Edit the consortium's genesis as a founder might: `study_min_cel` for study_min_cell."""
    path = directory / "genesis.json"
    document = json.loads(path.read_text())
    document["params"] = {**document.get("params", {}), "study_min_cel": 10}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def _files(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_solo_node_does_not_start_its_ledger_from_a_misspelt_parameter(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "net"
    homes = create_consortium(directory, 2, genesis_time_ms=int(time.time() * 1000))
    genesis = _misspell(directory)
    before = _files(directory)
    with pytest.raises(ConfigError) as refused:
        Node.open(homes[0])
    assert str(refused.value).startswith(f"{genesis}: {REFUSAL}")
    assert _files(directory) == before  # no ledger, no lock: nothing half-written
    # The right name starts it.
    genesis.write_text(genesis.read_text().replace('"study_min_cel"', '"study_min_cell"'))
    with Node.open(homes[0]) as node:
        assert node.engine.query("governance/params", {})["study_min_cell"] == 10


def test_cometbft_app_and_net_up_refuse_it_before_anything_starts(
    tmp_path: Path, cometbft_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "net"
    homes = create_consortium(
        directory, 2, engine="cometbft", genesis_time_ms=int(time.time() * 1000)
    )
    genesis = _misspell(directory)
    before = _files(directory)
    with pytest.raises(ConfigError, match=REFUSAL):
        open_application(homes[1])
    started: list[Path] = []

    def up(consortium_dir: Path, **_: object) -> list[str]:
        started.append(consortium_dir)
        return []

    monkeypatch.setattr(processes, "up", up)
    result = runner.invoke(app, ["net", "up", str(directory)])
    assert result.exit_code == 1, result.output
    said = result.output.replace("\n", "")  # the console may wrap the line
    assert str(genesis) in said and REFUSAL in said
    assert started == []  # no process was asked to start
    assert _files(directory) == before  # nothing written
