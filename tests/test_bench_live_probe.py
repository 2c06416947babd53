"""`medledger bench cometbft --set probe=1`: node 0's CheckTx split into parts
(bench/live_probe.py), and `bench apptx --set fresh=1`, the same work in process."""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

import pytest

from medledger.contracts import default_registry
from medledger.ledger import app as app_module
from medledger.ledger import store as store_module
from medledger.ledger.app import Application
from medledger.ledger.keys import SigningKey

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_probe_splits_checktx_into_its_parts_and_logs_the_line_the_bench_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # what install() replaces comes back after the test
    for owner, name in (
        (app_module, "decode_tx"),
        (app_module, "verify_signature"),
        (app_module.Application, "check_tx"),
        (store_module.Store, "get_raw"),
    ):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    monkeypatch.setattr(gc, "callbacks", list(gc.callbacks))
    probe = _load("live_probe").install(report_every_s=0)
    txpath = _load("bench_txpath")
    orgs = [SigningKey.generate() for _ in range(txpath.SIGNERS)]
    genesis = txpath._genesis(orgs)
    app = Application.open(tmp_path / "probe.db", genesis, default_registry())
    try:
        app.init_chain()
        for raw in txpath._registrations(orgs, 10):
            assert app.check_tx(raw).ok
    finally:
        app.close()
    assert probe.counts["check_tx"] == 10
    assert probe.counts["ed25519"] == probe.counts["decode"] == 10  # each tx verified once
    assert probe.parts["check_tx"] > probe.parts["ed25519"]  # a part is inside the whole
    with caplog.at_level(logging.WARNING, logger="medledger.probe"):
        probe.report()
    (line,) = [r.getMessage() for r in caplog.records if "PROBE " in r.getMessage()]
    assert "10 CheckTx; per CheckTx: " in line and "ed25519 " in line, line
    assert probe.counts == {}  # each line tells its own interval
    # the bench keeps what follows the marker, as it does for the server's ABCI lines
    cometbft = _load("bench_cometbft")
    log_file = tmp_path / "app.log"
    log_file.write_text(f"10:00:00 WARNING medledger.probe: {line}\nABCI other\n")
    monkeypatch.setattr(cometbft.testnet, "list_hospitals", lambda directory: ["h1"])
    monkeypatch.setattr(cometbft.processes, "log_path", lambda d, org, role: log_file)
    assert cometbft._abci_stats(tmp_path, "PROBE ") == [line.split("PROBE ", 1)[1]]


def test_apptx_fresh_reports_the_mean_and_the_minimum_of_checktx_on_unseen_txs() -> None:
    result = _load("bench_apptx").run(batch=4, batches=3, committed=5, fresh=1)
    figures = result["check_tx_fresh_us_per_tx"]
    assert figures["min"] <= figures["median"] and figures["min"] <= figures["mean"], figures
    assert (result["batch"], result["batches"]) == (4, 3)
