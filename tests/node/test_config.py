"""A hospital's config.json is read once into typed sections; a wrong one is refused at load.

Each refusal is one line naming the file and the field, so an operator knows what to fix
without reading a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.node.config import (
    ConfigError,
    HospitalConfig,
    load_config,
    load_consortium,
    save_config,
)


def _raw(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "config.json").read_text())
    return data


def _write(home: Path, raw: dict[str, Any]) -> None:
    (home / "config.json").write_text(json.dumps(raw))


def _refusal(home: Path) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(home)
    return str(refused.value)


def test_a_home_made_by_init_loads_with_typed_sections(consortium: list[Path]) -> None:
    config = load_config(consortium[0])
    assert isinstance(config, HospitalConfig)
    assert config.org == "chu-lyon" and config.engine == "solo"
    assert config.home == consortium[0].resolve()
    assert config.consortium_dir == consortium[0].parent.parent.resolve()
    host, port = config.api.address
    assert host == "127.0.0.1" and port > 0
    assert config.gateway_address[1] > 0
    assert set(config.exchange.peers) == {"chu-lyon", "aphp-paris", "chu-bordeaux"}
    assert config.vault.backend == "sqlite"
    assert config.vault_config().path == config.home / "vault.db"
    assert config.tls_dir == config.home / "keys" / "tls"
    assert config.clinician.duplicate_window_days == 42  # the default when unset
    assert config.ingest.max_bytes is None  # unset: the ingestor's own default
    assert config.ports() >= {port, config.gateway_address[1]}


def test_a_home_without_a_gateway_address_says_so_when_one_is_needed(
    consortium: list[Path],
) -> None:
    home = consortium[0]
    raw = _raw(home)
    del raw["exchange"]["listen"]
    _write(home, raw)
    config = load_config(home)  # a CLI command that never serves still works
    with pytest.raises(ConfigError, match=r"config.json: exchange.listen: missing"):
        _ = config.gateway_address


@pytest.mark.parametrize(
    ("section", "key", "value", "why"),
    [
        ("api", "listen", "localhost", "api.listen: must be host:port, got 'localhost'"),
        ("api", "listen", 8080, "api.listen: must be a string"),
        ("api", "max_body_bytes", "8MB", "api.max_body_bytes: must be an integer"),
        ("api", "max_form_bytes", 0, "api.max_form_bytes: must be greater than 0"),
        ("exchange", "listen", "127.0.0.1:99999", "exchange.listen: must be host:port"),
        ("exchange", "peers", ["chu-lyon"], "exchange.peers: must be an object"),
        ("exchange", "tls", None, "exchange.tls: must be a string"),
        ("vault", "backend", "mysql", "vault.backend: must be 'sqlite' or 'postgres'"),
        ("vault", "path", 3, "vault.path: must be a string"),
        ("cometbft", "rpc", 26657, "cometbft.rpc: must be a string"),
        ("clinician", "duplicate_window_days", "42", "clinician.duplicate_window_days: must be"),
        ("clinician", "duplicate_window_days", -1, "must be greater than or equal to 0"),
        ("ingest", "max_bytes", 1.5, "ingest.max_bytes: must be an integer"),
        ("ingest", "max_resources", True, "ingest.max_resources: must be an integer"),
    ],
)
def test_a_bad_field_of_each_section_is_refused_naming_file_and_field(
    consortium: list[Path], section: str, key: str, value: object, why: str
) -> None:
    home = consortium[0]
    raw = _raw(home)
    raw[section] = {**raw.get(section, {}), key: value}
    _write(home, raw)
    message = _refusal(home)
    assert message.startswith(f"{home / 'config.json'}: ")
    assert why in message
    assert "\n" not in message  # one line, not pydantic's report


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"engine": "paxos"}, "engine: unknown engine 'paxos' (solo or cometbft)"),
        ({"org": None}, "org: must be a string"),
        ({"block_time_ms": "1s"}, "block_time_ms: must be an integer"),
        ({"api": "127.0.0.1:8080"}, "api: must be an object"),
    ],
)
def test_a_bad_top_level_field_is_refused(
    consortium: list[Path], change: dict[str, object], why: str
) -> None:
    home = consortium[0]
    _write(home, {**_raw(home), **change})
    assert _refusal(home) == f"{home / 'config.json'}: {why}"


def test_a_missing_field_is_named(consortium: list[Path]) -> None:
    home = consortium[0]
    raw = _raw(home)
    del raw["chain_id"]
    _write(home, raw)
    assert _refusal(home) == f"{home / 'config.json'}: chain_id: missing"


@pytest.mark.parametrize("where", ["top", "api", "vault"])
def test_an_unknown_key_is_refused_as_a_likely_typo(consortium: list[Path], where: str) -> None:
    home = consortium[0]
    raw = _raw(home)
    if where == "top":
        raw["vualt"] = {"backend": "postgres"}
        field = "vualt"
    else:
        raw[where] = {**raw[where], "max_body_byte": 10}
        field = f"{where}.max_body_byte"
    _write(home, raw)
    assert _refusal(home) == f"{home / 'config.json'}: {field}: unknown key (a typo?)"


def test_a_home_key_in_the_file_is_refused(consortium: list[Path]) -> None:
    """`home` is where the file was found, never something the file may claim."""
    home = consortium[0]
    _write(home, {**_raw(home), "home": "/etc"})
    assert _refusal(home) == f"{home / 'config.json'}: home: unknown key (a typo?)"


def test_a_file_that_is_not_json_or_absent_is_named(tmp_path: Path) -> None:
    assert "config.json: not found" in _refusal(tmp_path)
    (tmp_path / "config.json").write_text('{"org": "chu-lyon",\n  oops}')
    assert _refusal(tmp_path).startswith(f"{tmp_path / 'config.json'}: invalid JSON at line 2")
    (tmp_path / "config.json").write_text("[]")
    assert _refusal(tmp_path) == f"{tmp_path / 'config.json'}: must be a JSON object"


def test_save_then_load_gives_the_same_config_and_the_same_file(consortium: list[Path]) -> None:
    home = consortium[0]
    before = (home / "config.json").read_text()
    config = load_config(home)
    save_config(config)
    assert (home / "config.json").read_text() == before  # defaults stay implicit
    assert load_config(home) == config


def test_a_changed_section_is_saved_and_read_back(consortium: list[Path]) -> None:
    config = load_config(consortium[0])
    wider = config.clinician.model_copy(update={"duplicate_window_days": 90})
    save_config(config.model_copy(update={"clinician": wider}))
    again = load_config(consortium[0])
    assert again.clinician.duplicate_window_days == 90
    assert again.model_copy(update={"clinician": config.clinician}) == config
    assert not list(consortium[0].glob("*.tmp"))  # written through a temporary file, replaced


def test_the_consortium_file_is_typed_too(consortium: list[Path]) -> None:
    directory = consortium[0].parent.parent
    meta = load_consortium(directory)
    assert meta.hospitals == ["chu-lyon", "aphp-paris", "chu-bordeaux"]
    (directory / "consortium.json").write_text(json.dumps({**meta.model_dump(), "hospitals": "x"}))
    with pytest.raises(ConfigError, match=r"consortium.json: hospitals: must be a valid list"):
        load_consortium(directory)


def test_a_command_stops_on_a_bad_config_with_one_line(consortium: list[Path]) -> None:
    home = consortium[0]
    raw = _raw(home)
    raw["api"]["listen"] = "127.0.0.1:http"
    _write(home, raw)
    out = CliRunner().invoke(app, ["practitioner", "list", "-H", str(home)])
    assert out.exit_code == 1
    assert "config.json: api.listen: must be host:port" in out.output
    assert "Traceback" not in out.output


def test_the_hospitals_hl7_tables_are_checked_at_load(consortium: list[Path]) -> None:
    home = consortium[0]
    raw = _raw(home)
    raw["hl7"] = {
        "coding_systems": {"99LAB": "https://lab.example.org/codes"},
        "code_maps": {
            "PID-8": {"1": "male", "2": "female"},
            "OBX-3": {"GLU": "http://loinc.org|2345-7"},
        },
    }
    _write(home, raw)
    codes = load_config(home).hl7.codes()
    assert codes.fixed("PID-8", "2") == "female"
    assert codes.fixed("PID-8", "F") == "female"  # HL7's own codes still hold
    assert codes.coded("OBX-3", "GLU") == ("http://loinc.org", "2345-7")
    assert codes.system("99lab") == "https://lab.example.org/codes"
    raw["hl7"]["code_maps"]["PID-8"]["3"] = "intersex"
    _write(home, raw)
    assert _refusal(home) == (
        f"{home / 'config.json'}: hl7: code_maps.PID-8.3: must be one of female, male, other, "
        "unknown"
    )
