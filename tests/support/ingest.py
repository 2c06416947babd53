"""Crashing an ingestion at a chosen step, in a child process (tests of registrations' recovery,
the CLI's pending list and the CometBFT network)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

from medledger.interop.synth import generate

_CHILD = """
import os, sys
from pathlib import Path
import orjson
from medledger.node.ingest import Ingestor
from medledger.node import Node
from medledger.vault import Vault

home, bundle, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def die(*args, **kwargs):
    os._exit(17)

with Node.open(home) as node, Vault.open(node.config.vault_config()) as vault:
    if step == "before-claim":
        vault.claim = die
    elif step == "before-submit":
        node.engine.submit = die
    elif step == "after-commit":
        vault.confirm = die
    Ingestor(node, vault).ingest_bytes(bundle.read_bytes(), bundle.name)
sys.exit("the child should have died")
"""


def _bundle(tmp_path: Path) -> Path:
    path = tmp_path / "p1.json"
    path.write_bytes(orjson.dumps(generate(2, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]))
    return path


def _crash_while_ingesting(home: Path, bundle: Path, step: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(home), str(bundle), step],
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 17, child.stderr.decode()[-2000:]
