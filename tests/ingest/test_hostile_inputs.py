"""Inputs that used to stop a batch or exhaust memory: each is refused and named; the batch goes on.

A number too large for JSON (an OBX-5 of 20 digits) ended a batch with a traceback, storing
the files before it and not those after; a 50 MB Bundle was read and validated whole. Now every
refusal names the file and, when it can, the segment or field; a file above the size limit is
refused on its size, before it is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.vault import Vault

HL7 = Path(__file__).resolve().parent.parent / "data" / "hl7"
MAX_BYTES = 20 * 1024 * 1024  # the default limit (ingest.max_bytes)


@pytest.fixture
def hospital(consortium: list[Path]) -> Iterator[tuple[Node, Vault, Ingestor]]:
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault, Ingestor(node, vault)


def _bundle(n: int = 0) -> bytes:
    return orjson.dumps(generate(n + 1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][n])


def _huge_obx() -> bytes:
    """The laboratory's ORU^R01 with a first result of 74000000000000000000 (20 digits)."""
    data = (HL7 / "oru_r01.hl7").read_bytes()
    assert b"||7.4|" in data
    return data.replace(b"||7.4|", b"||74000000000000000000|")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_number_out_of_range_refuses_its_file_and_the_batch_goes_on(
    hospital: tuple[Node, Vault, Ingestor], workers: int
) -> None:
    node, vault, ingestor = hospital
    inputs = [(_bundle(0), "before.json"), (_huge_obx(), "huge.hl7"), (_bundle(1), "after.json")]
    results = {r.source: r for r in ingestor.ingest_many(inputs, workers=workers)}
    assert results["before.json"].rejections == [] and results["before.json"].accepted > 0
    assert results["after.json"].rejections == [] and results["after.json"].accepted > 0
    (refused,) = results["huge.hl7"].rejections
    assert refused.source == "huge.hl7"
    assert refused.where == "message 1, OBX 1, field OBX-5"
    assert "out of range" in refused.reason
    assert results["huge.hl7"].accepted == 0 and results["huge.hl7"].rids == []


def test_a_file_above_the_limit_is_refused_on_its_size_unread(
    hospital: tuple[Node, Vault, Ingestor], tmp_path: Path
) -> None:
    node, vault, ingestor = hospital
    big = tmp_path / "export.json"
    with big.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: 20 MiB + 1 that cost nothing to make
    result = ingestor.ingest_path(big)
    (refused,) = result.rejections
    assert refused.source == "export.json"
    assert f"{MAX_BYTES + 1} bytes" in refused.reason
    assert f"limit of {MAX_BYTES} bytes" in refused.reason
    assert vault.patients() == []


def test_bytes_above_the_limits_are_refused_before_parsing(
    hospital: tuple[Node, Vault, Ingestor],
) -> None:
    node, vault, _ = hospital
    bundle = _bundle()
    small = Ingestor(node, vault, max_bytes=len(bundle) - 1)
    (too_large,) = small.ingest_bytes(bundle, "p.json").rejections
    assert too_large.source == "p.json"
    assert f"{len(bundle)} bytes, more than the ingestion limit of {len(bundle) - 1}" in (
        too_large.reason
    )
    entries = len(orjson.loads(bundle)["entry"])
    few = Ingestor(node, vault, max_resources=entries - 1)
    (too_many,) = few.ingest_bytes(bundle, "p.json").rejections
    assert f"too many resources: {entries}, more than the ingestion limit of {entries - 1}" in (
        too_many.reason
    )
    ndjson = b"\n".join(orjson.dumps(e["resource"]) for e in orjson.loads(bundle)["entry"])
    (lines,) = few.ingest_bytes(ndjson, "bulk.ndjson").rejections
    assert "too many resources" in lines.reason
    assert vault.patients() == []
    # Within the limits, the same bundle goes in.
    assert Ingestor(node, vault).ingest_bytes(bundle, "p.json").rejections == []


def test_the_ingest_command_names_the_file_too_large_and_takes_the_others(
    consortium: list[Path], tmp_path: Path
) -> None:
    files = tmp_path / "drop"
    files.mkdir()
    (files / "good.json").write_bytes(_bundle())
    with (files / "huge.ndjson").open("wb") as f:
        f.truncate(2 * 1024 * 1024)
    (files / "huge.hl7").write_bytes(_huge_obx())
    ran = CliRunner().invoke(
        app,
        ["ingest", "--home", str(consortium[0]), "--max-mb", "1", "--workers", "1", str(files)],
        terminal_width=200,
    )
    assert ran.exit_code == 1, ran.output
    assert "from 3 files; rejected 2" in ran.output
    assert "huge.ndjson" in ran.output and "limit of 1048576 bytes" in ran.output
    assert "huge.hl7" in ran.output and "OBX-5" in ran.output
    assert "Traceback" not in ran.output


def test_no_patient_value_reaches_the_logs_while_ingesting(
    hospital: tuple[Node, Vault, Ingestor], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, ingestor = hospital
    # PID-5 with an escape sequence python-hl7 cannot decode: it logs the whole field.
    message = (HL7 / "oru_r01.hl7").read_bytes().replace(b"PAT-TROIS^", b"PAT-TROIS\\Q\\^")
    with caplog.at_level(logging.DEBUG):
        escaped = ingestor.ingest_bytes(message, "escape.hl7")
        huge = ingestor.ingest_bytes(_huge_obx(), "huge.hl7")
    assert escaped.rejections == [] and escaped.accepted > 0
    assert huge.rejections
    assert any("python-hl7" in r.getMessage() for r in caplog.records)  # the event is kept...
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for value in ("PAT-TROIS", "Dominique", "279035121518989", "00451287", "19790328", "7400000"):
        assert value not in logged  # ...its values are not


def test_the_limits_are_set_per_hospital_in_its_config(consortium: list[Path]) -> None:
    config = consortium[0] / "config.json"
    raw = orjson.loads(config.read_bytes())
    raw["ingest"] = {"max_bytes": 1000, "max_resources": 5}
    config.write_bytes(orjson.dumps(raw))
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        ingestor = Ingestor(node, vault)
        assert (ingestor.max_bytes, ingestor.max_resources) == (1000, 5)
        (refused,) = ingestor.ingest_bytes(_bundle(), "p.json").rejections
        assert "limit of 1000 bytes (ingest.max_bytes)" in refused.reason


def test_an_unforeseen_failure_while_storing_refuses_that_file_only(
    hospital: tuple[Node, Vault, Ingestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from medledger.interop import metadata

    node, vault, ingestor = hospital
    real = metadata.extract_metadata
    calls = 0

    def breaks_once(resource: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first resource of the first file
            raise KeyError(resource["resourceType"])
        return real(resource)

    monkeypatch.setattr(metadata, "extract_metadata", breaks_once)
    first, second = ingestor.ingest_many([(_bundle(0), "a.json"), (_bundle(1), "b.json")], 1)
    assert first.accepted == 0
    assert [r.reason for r in first.rejections] == [
        "could not be stored (KeyError); see the node's log"
    ]
    assert second.rejections == [] and second.accepted > 0
    assert vault.patients() == list(second.pids)  # nothing of the first file stayed
