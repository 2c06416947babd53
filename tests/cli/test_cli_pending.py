"""`medledger records pending` and `medledger ingest` after an ingestion died half-way."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.node import registrations
from tests.support.ingest import _bundle, _crash_while_ingesting

runner = CliRunner()


def test_pending_records_are_shown_then_settled(
    consortium: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = consortium[0]
    _crash_while_ingesting(home, _bundle(tmp_path), "after-commit")

    shown = runner.invoke(app, ["records", "pending", "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert "1 provisional units" in shown.output
    assert "signed, outcome unknown" in shown.output

    # Within the lease it is left to the ingestion that may still own it...
    early = runner.invoke(app, ["records", "pending", "--home", str(home), "--settle"])
    assert "0 confirmed" in early.output and "1 too recent" in early.output
    # ...after it, settled: the tx committed, so the records are confirmed.
    monkeypatch.setattr(registrations, "LEASE_S", 0.0)
    settled = runner.invoke(app, ["records", "pending", "--home", str(home), "--settle"])
    assert settled.exit_code == 0, settled.output
    assert "1 confirmed, 0 withdrawn" in settled.output
    assert "0 provisional units" in settled.output


def test_ingest_first_settles_what_an_earlier_crash_left(
    consortium: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = consortium[0]
    _crash_while_ingesting(home, _bundle(tmp_path), "before-claim")
    monkeypatch.setattr(registrations, "LEASE_S", 0.0)
    again = runner.invoke(app, ["ingest", "--home", str(home), str(_bundle(tmp_path))])
    assert again.exit_code == 0, again.output
    assert "earlier ingestions: 0 confirmed, 1 withdrawn" in again.output
    assert "accepted" in again.output and "rejected 0" in again.output


def test_ingest_says_per_file_what_was_new_updated_or_unchanged(
    consortium: list[Path], tmp_path: Path
) -> None:
    home, bundle = consortium[0], _bundle(tmp_path)
    n = len(orjson.loads(bundle.read_bytes())["entry"])
    args = ["ingest", "--home", str(home), "--sender", "https://his.example.org/fhir"]

    first = runner.invoke(app, [*args, str(bundle)])
    again = runner.invoke(app, [*args, str(bundle)])

    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert f"p1.json: {n} stored, 0 updated, 0 unchanged" in first.output
    # The Patient is found again by its identifiers; the synthetic resources carry no
    # sender's id, so they are new records each time.
    assert f"p1.json: {n - 1} stored, 0 updated, 1 unchanged" in again.output
