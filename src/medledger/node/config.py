"""A hospital home's `config.json` and its consortium's `consortium.json`, typed and checked once.

Every reader of a hospital's configuration goes through `load_config(home)`: the file is
parsed and validated here, at load, against one pydantic model per section, so a typo or a
wrong type stops the command with ONE line naming the file and the field
(`net/hospitals/chu-lyon/config.json: api.listen: must be host:port`) instead of surfacing
later, far away, as a `KeyError`. Unknown keys are refused for the same reason: a misspelt
`max_body_byte` would otherwise silently keep the default.

    HOME/config.json
        org, name, chain_id, engine ("solo" | "cometbft"), consortium_dir (relative to HOME),
        block_time_ms
        api        listen "host:port" (port 0: any), max_body_bytes, max_form_bytes
        exchange   listen "host:port" of the mTLS gateway, tls (folder under HOME),
                   peers {org: gateway URL}
        vault      backend ("sqlite" | "postgres"), path (under HOME), dsn
        cometbft   home (folder under HOME), node_id, p2p, rpc, abci, prometheus
        clinician  duplicate_window_days
        ingest     max_bytes, max_resources
        hl7        coding_systems {name: URI}, code_maps {field: {local code: FHIR code}}
    DIR/consortium.json   chain_id, engine, hospitals, block_time_ms
    DIR/hospitals/<org>/  one home per hospital

A limit left unset (None) means the reading module's own default (`api.services`,
`ingest`). The module imports nothing above the ledger: provisioning, the node, the
exchange and the API all build on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medledger.host.secretfile import read_hex_secret
from medledger.ledger.genesis import Genesis
from medledger.ledger.keys import SigningKey

if TYPE_CHECKING:
    from medledger.interop.hl7v2 import CodeMaps
    from medledger.vault import VaultConfig

ENGINES = ("solo", "cometbft")
TLS_DIR = "keys/tls"


class ConfigError(ValueError):
    """A home, config or genesis is missing or wrong; the message names the file and field."""


class _Model(BaseModel):
    """Strict (JSON types as they are, no "42" for 42), closed (unknown keys refused), frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, got {value!r}")
    return host or "127.0.0.1", int(port)


def _engine(value: str) -> str:
    if value not in ENGINES:
        raise ValueError(f"unknown engine {value!r} (solo or cometbft)")
    return value


def _address(value: str) -> str:
    _split_address(value)
    return value


# --------------------------------------------------------------------------- sections


class ApiSection(_Model):
    """The hospital's HTTP API (FHIR, portal, explorer), plain HTTP on loopback by default."""

    listen: str = "127.0.0.1:0"
    max_body_bytes: int | None = Field(default=None, gt=0)
    max_form_bytes: int | None = Field(default=None, gt=0)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _address(value)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port); port 0 lets the system choose."""
        return _split_address(self.listen)


class ExchangeSection(_Model):
    """The mTLS gateway and the directory of the other hospitals' gateways."""

    listen: str | None = None
    tls: str = TLS_DIR
    peers: dict[str, str] = Field(default_factory=dict)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)


class VaultSection(_Model):
    """Where the hospital's vault lives: a SQLite file under the home, or PostgreSQL."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "vault.db"
    dsn: str | None = Field(default=None, repr=False)


class CometbftSection(_Model):
    """The hospital's CometBFT node, as the testnet set-up recorded it (config.toml rules)."""

    home: str = "cometbft"
    node_id: str | None = None
    p2p: str | None = None
    rpc: str | None = None
    abci: str | None = None
    prometheus: str | None = None  # disabled, but reserved: other services keep clear of it


class ClinicianSection(_Model):
    """The clinician view's choices."""

    duplicate_window_days: int = Field(default=42, ge=0)


class IngestSection(_Model):
    """Bounds on one ingested file."""

    max_bytes: int | None = Field(default=None, gt=0)
    max_resources: int | None = Field(default=None, gt=0)


class Hl7Section(_Model):
    """How this hospital's HL7 v2 senders code things: their local codes -> standard ones.

    `coding_systems` names their code systems (`{"99LAB": "http://lab.example/codes"}`);
    `code_maps` maps a field's local codes (`{"PID-8": {"1": "male"}, "OBX-3": {"GLU":
    "http://loinc.org|2345-7"}}`). Checked at load by `interop.hl7v2.CodeMaps.build`.
    """

    coding_systems: dict[str, str] = Field(default_factory=dict)
    code_maps: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_tables(self) -> Hl7Section:
        if self.coding_systems or self.code_maps:
            self.codes()  # a wrong table is a ValueError naming it
        return self

    def codes(self) -> CodeMaps:
        """The tables as the HL7 v2 mapping uses them."""
        from medledger.interop.hl7v2 import CodeMaps

        return CodeMaps.build(self.coding_systems, self.code_maps)


# --------------------------------------------------------------------------- the home


class HospitalConfig(_Model):
    """One hospital's home: who it is, which consortium, and each service's settings."""

    home: Path = Field(exclude=True)  # where config.json was read; not stored in it
    org: str
    name: str
    chain_id: str
    engine: str
    consortium: str = Field(alias="consortium_dir")  # as written: relative to the home
    block_time_ms: int = Field(default=1000, gt=0)
    api: ApiSection = Field(default_factory=ApiSection)
    exchange: ExchangeSection = Field(default_factory=ExchangeSection)
    vault: VaultSection = Field(default_factory=VaultSection)
    cometbft: CometbftSection = Field(default_factory=CometbftSection)
    clinician: ClinicianSection = Field(default_factory=ClinicianSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    hl7: Hl7Section = Field(default_factory=Hl7Section)

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        return _engine(value)

    @property
    def consortium_dir(self) -> Path:
        return (self.home / self.consortium).resolve()

    @property
    def genesis_path(self) -> Path:
        return self.consortium_dir / "genesis.json"

    @property
    def ledger_db(self) -> Path:
        if self.engine == "solo":
            return self.consortium_dir / "ledger" / "ledger.db"
        return self.home / "ledger.db"

    @property
    def org_key_path(self) -> Path:
        return self.home / "keys" / "org.key"

    @property
    def gateway_address(self) -> tuple[str, int]:
        """The gateway's (host, port) (`exchange.listen`); refused when init did not give one."""
        if self.exchange.listen is None:
            path = self.home / "config.json"
            raise ConfigError(f"{path}: exchange.listen: missing (re-run `medledger init`)")
        return _split_address(self.exchange.listen)

    @property
    def tls_dir(self) -> Path:
        """The folder of this hospital's TLS files (`exchange.tls`)."""
        return self.home / self.exchange.tls

    def practitioner_key_path(self, practitioner: str) -> Path:
        return self.home / "keys" / "practitioners" / f"{practitioner}.key"

    def org_key(self) -> SigningKey:
        return SigningKey.from_file(self.org_key_path)

    def genesis(self) -> Genesis:
        return Genesis.load(self.genesis_path)

    def pseudonym_key(self) -> bytes:
        """The consortium's pseudonymisation key: the same pid for a patient in every hospital."""
        return read_hex_secret(self.home / "keys" / "pseudonym.key")

    def box_key(self) -> bytes:
        """This hospital's X25519 private key, to open metadata keys sealed to it."""
        return read_hex_secret(self.home / "keys" / "box.key")

    def vault_config(self) -> VaultConfig:
        from medledger.interop.research_facts import DIGESTER
        from medledger.vault import VaultConfig

        sqlite = self.vault.backend == "sqlite"
        return VaultConfig(
            hospital_id=self.org,
            backend=self.vault.backend,
            path=self.home / self.vault.path if sqlite else None,
            dsn=self.vault.dsn or os.environ.get("MEDLEDGER_VAULT_DSN"),
            kek_path=self.home / "keys" / "vault.kek",
            digester=DIGESTER,  # research digests kept as records are written
        )

    def ports(self) -> set[int]:
        """Every loopback port this config names (CometBFT, gateway, API), to stay clear of."""
        values = [
            self.api.listen,
            self.exchange.listen,
            self.cometbft.p2p,
            self.cometbft.rpc,
            self.cometbft.abci,
            self.cometbft.prometheus,
        ]
        return {
            int(v.rsplit(":", 1)[1])
            for v in values
            if v is not None and v.rsplit(":", 1)[-1].isdigit()
        }


# --------------------------------------------------------------------------- reading, writing


_MESSAGES = {
    "missing": "missing",
    "extra_forbidden": "unknown key (a typo?)",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "bool_type": "must be true or false",
}


def _describe(error: Any) -> str:
    """`field.sub: why` for the first error pydantic found."""
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind in _MESSAGES:
        why = _MESSAGES[kind]
    elif kind == "value_error":
        why = str(error["ctx"]["error"])
    else:  # "Input should be greater than 0" -> "must be greater than 0"
        why = str(error["msg"]).replace("Input should be", "must be")
    return f"{where}: {why}"


def parse_config(home: Path, raw: object, path: Path | None = None) -> HospitalConfig:
    """A config from its JSON value; a wrong one raises `ConfigError` naming file and field."""
    path = path or home / "config.json"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    if "home" in raw:
        raise ConfigError(f"{path}: home: unknown key (a typo?)")
    try:
        return HospitalConfig.model_validate({**raw, "home": home.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc.errors()[0])}") from None


def load_config(home: Path) -> HospitalConfig:
    """The hospital's config.json, validated once: every reader then uses typed fields."""
    path = home / "config.json"
    raw = _read_json(path, "is --home a hospital home made by init?")
    return parse_config(home, raw, path)


def _read_json(path: Path, hint: str) -> Any:
    """A JSON file's content, or a ConfigError naming the file (and `hint` when missing)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found ({hint})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def config_json(config: HospitalConfig) -> dict[str, Any]:
    """What `save_config` writes: the fields read or set (defaults stay implicit), as written."""
    return config.model_dump(mode="json", by_alias=True, exclude_unset=True)


def save_config(config: HospitalConfig) -> None:
    """Write config.json in its home, atomically (a reader never sees half a file)."""
    _write_json(config.home / "config.json", config_json(config))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the consortium


class Consortium(_Model):
    """DIR/consortium.json: written by init, extended when a hospital joins."""

    chain_id: str
    engine: str
    hospitals: list[str]
    block_time_ms: int = Field(default=1000, gt=0)

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        return _engine(value)


def load_consortium(consortium_dir: Path) -> Consortium:
    path = consortium_dir / "consortium.json"
    raw = _read_json(path, f"run `medledger init {consortium_dir}`")
    try:
        return Consortium.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc.errors()[0])}") from None


def save_consortium(consortium_dir: Path, meta: Consortium) -> None:
    _write_json(consortium_dir / "consortium.json", meta.model_dump(mode="json"))


def hospital_homes(consortium_dir: Path) -> list[Path]:
    return [consortium_dir / "hospitals" / org for org in load_consortium(consortium_dir).hospitals]
