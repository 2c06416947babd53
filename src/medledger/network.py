"""A consortium on disk: `medledger init` makes it, every other command reads it.

DIR/consortium.json        chain id, engine, hospitals
DIR/genesis.json           the genesis every replica starts from
DIR/solo.key               the solo block producer's key (solo engine)
DIR/ledger/ledger.db       the shared solo ledger (solo engine)
DIR/hospitals/<org>/       one home per hospital: config.json, keys/ (mode 0600 files)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey, write_secret

HOSPITAL_NAMES = [
    ("chu-lyon", "CHU de Lyon"),
    ("aphp-paris", "AP-HP Paris"),
    ("chu-bordeaux", "CHU de Bordeaux"),
    ("chu-lille", "CHU de Lille"),
    ("chu-nantes", "CHU de Nantes"),
    ("chu-toulouse", "CHU de Toulouse"),
    ("chu-strasbourg", "CHU de Strasbourg"),
    ("chu-rennes", "CHU de Rennes"),
]

_CHAIN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


class ConfigError(ValueError):
    """A home, config or genesis is missing or wrong; the message names the file and field."""


@dataclass(frozen=True)
class HospitalConfig:
    home: Path
    org: str
    name: str
    chain_id: str
    engine: str
    consortium_dir: Path
    raw: dict[str, Any]

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

    def practitioner_key_path(self, practitioner: str) -> Path:
        return self.home / "keys" / "practitioners" / f"{practitioner}.key"

    def org_key(self) -> SigningKey:
        return SigningKey.from_file(self.org_key_path)

    def genesis(self) -> Genesis:
        return Genesis.load(self.genesis_path)

    def pseudonym_key(self) -> bytes:
        """The consortium's pseudonymisation key: the same pid for a patient in every hospital."""
        return read_secret(self.home / "keys" / "pseudonym.key")

    def box_key(self) -> bytes:
        """This hospital's X25519 private key, to open metadata keys sealed to it."""
        return read_secret(self.home / "keys" / "box.key")

    def vault_config(self):  # type: ignore[no-untyped-def]
        from medledger.vault import VaultConfig

        vault = self.raw.get("vault", {})
        backend = vault.get("backend", "sqlite")
        return VaultConfig(
            hospital_id=self.org,
            backend=backend,
            path=self.home / vault.get("path", "vault.db") if backend == "sqlite" else None,
            dsn=vault.get("dsn") or os.environ.get("MEDLEDGER_VAULT_DSN"),
            kek_path=self.home / "keys" / "vault.kek",
        )


def read_secret(path: Path) -> bytes:
    """A 32-byte secret stored hex in a 0600 file; refuses looser modes."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path}: secret file must not be readable by others (mode {mode:o})")
    try:
        data = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"{path}: not a hex secret") from None
    if len(data) != 32:
        raise ConfigError(f"{path}: expected 32 bytes")
    return data


def load_config(home: Path) -> HospitalConfig:
    path = home / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is --home a hospital home made by init?)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    try:
        return HospitalConfig(
            home=home.resolve(),
            org=raw["org"],
            name=raw["name"],
            chain_id=raw["chain_id"],
            engine=raw["engine"],
            consortium_dir=(home / raw["consortium_dir"]).resolve(),
            raw=raw,
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing field {exc.args[0]!r}") from None


def save_config(home: Path, raw: dict[str, Any]) -> None:
    tmp = home / "config.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, home / "config.json")


def hospital_homes(consortium_dir: Path) -> list[Path]:
    meta = load_consortium(consortium_dir)
    return [consortium_dir / "hospitals" / org for org in meta["hospitals"]]


def load_consortium(consortium_dir: Path) -> dict[str, Any]:
    path = consortium_dir / "consortium.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run `medledger init {consortium_dir}`)") from None
    return data


def save_consortium(consortium_dir: Path, meta: dict[str, Any]) -> None:
    tmp = consortium_dir / "consortium.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, consortium_dir / "consortium.json")


def hospital_ids(n: int) -> list[tuple[str, str]]:
    ids = list(HOSPITAL_NAMES[:n])
    for i in range(len(ids), n):
        ids.append((f"hospital-{i + 1}", f"Hospital {i + 1}"))
    return ids


def create_consortium(
    directory: Path,
    hospitals: int,
    *,
    engine: str = "solo",
    chain_id: str = "medledger-sandbox",
    block_time_ms: int = 1000,
    genesis_time_ms: int,
    base_port: int | None = None,
    params: dict[str, int] | None = None,
) -> list[Path]:
    """Make keys, genesis and one home per hospital; refuse to overwrite an existing one.

    `params` overrides care-contract parameters in the genesis (policies.DEFAULT_PARAMS)."""
    if engine not in ("solo", "cometbft"):
        raise ConfigError(f"--engine: unknown engine {engine!r} (solo or cometbft)")
    if not 1 <= hospitals <= 64:
        raise ConfigError("--hospitals: between 1 and 64")
    if not _CHAIN_ID.match(chain_id):
        raise ConfigError(f"--chain-id: {chain_id!r} is not valid (a-z, 0-9, '-'; max 48)")
    if (directory / "consortium.json").exists():
        raise ConfigError(f"{directory}: a consortium already exists here")
    directory.mkdir(parents=True, exist_ok=True)

    from nacl.public import PrivateKey

    from medledger.contracts import default_versions
    from medledger.vault import create_kek_file

    orgs = hospital_ids(hospitals)
    homes: list[Path] = []
    members: list[GenesisMember] = []
    keys: dict[str, SigningKey] = {}
    box_keys: dict[str, bytes] = {}
    pseudonym_key = os.urandom(32)
    for org, _name in orgs:
        home = directory / "hospitals" / org
        (home / "keys").mkdir(parents=True, exist_ok=True)
        os.chmod(home / "keys", 0o700)
        key = SigningKey.generate()
        key.save(home / "keys" / "org.key")
        keys[org] = key
        box = PrivateKey.generate()
        write_secret(home / "keys" / "box.key", bytes(box).hex() + "\n")
        box_keys[org] = bytes(box.public_key)
        write_secret(home / "keys" / "pseudonym.key", pseudonym_key.hex() + "\n")
        create_kek_file(home / "keys" / "vault.kek")
        homes.append(home)

    validator_keys: dict[str, bytes] = {}
    if engine == "cometbft":
        from medledger.consensus.cometbft import testnet

        validator_keys = testnet.prepare(
            directory, [o for o, _ in orgs], block_time_ms, chain_id, base_port=base_port
        )

    solo_key = b""
    if engine == "solo":
        producer = SigningKey.generate()
        producer.save(directory / "solo.key")
        solo_key = producer.public_key
        (directory / "ledger").mkdir(exist_ok=True)

    for org, name in orgs:
        vkey = validator_keys.get(org, b"")
        members.append(
            GenesisMember(
                org=org,
                name=name,
                key=keys[org].public_key,
                validator_key=vkey,
                power=10 if vkey else 0,
                box_key=box_keys[org],
            )
        )
    genesis = Genesis(
        chain_id=chain_id,
        time_ms=genesis_time_ms,
        members=members,
        engine=engine,
        solo_key=solo_key,
        params=dict(params or {}),
        contracts=default_versions(),
    )
    genesis.save(directory / "genesis.json")
    if engine == "cometbft":
        from medledger.consensus.cometbft import testnet

        testnet.write_genesis(
            directory,
            chain_id,
            genesis_time_ms,
            [(m.org, m.validator_key, m.power) for m in members],
        )

    for (org, name), home in zip(orgs, homes, strict=True):
        config_path = home / "config.json"
        existing = json.loads(config_path.read_text()) if config_path.exists() else {}
        existing.update(
            {
                "org": org,
                "name": name,
                "chain_id": chain_id,
                "engine": engine,
                "consortium_dir": "../..",
                "block_time_ms": block_time_ms,
                "vault": {"backend": "sqlite", "path": "vault.db"},
            }
        )
        save_config(home, existing)
    save_consortium(
        directory,
        {
            "chain_id": chain_id,
            "engine": engine,
            "hospitals": [o for o, _ in orgs],
            "block_time_ms": block_time_ms,
        },
    )
    from medledger.exchange.pki import setup_exchange

    setup_exchange(directory, homes, chain_id, base_port=base_port)  # CA, TLS certs, gateways
    _assign_api_ports(homes, base_port)
    return homes


def ports_in_use(configs: list[HospitalConfig]) -> set[int]:
    """Every loopback port the hospitals' configs name (CometBFT, gateway, API)."""
    return {
        int(v.rsplit(":", 1)[1])
        for c in configs
        for section in ("cometbft", "exchange", "api")
        for v in (c.raw.get(section) or {}).values()
        if isinstance(v, str) and v.rsplit(":", 1)[-1].isdigit()
    }


def _assign_api_ports(homes: list[Path], base_port: int | None) -> None:
    """Each hospital's API (FHIR, portal, explorer) gets its own loopback port."""
    from medledger.exchange.pki import _free_port

    configs = [load_config(home) for home in homes]
    used = ports_in_use(configs)
    for i, c in enumerate(configs):
        port = base_port + 10 * i + 9 if base_port is not None else _free_port(used)
        used.add(port)
        raw = dict(c.raw)
        raw["api"] = {"listen": f"127.0.0.1:{port}"}
        save_config(c.home, raw)


@dataclass(frozen=True)
class Joining:
    """A hospital's home made to join an existing consortium, and what the vote needs."""

    home: Path
    org: str
    name: str
    key: bytes
    box_key: bytes
    validator_key: bytes


def add_hospital(directory: Path, org: str, name: str) -> Joining:
    """Make a home for a hospital joining a running consortium (keys, certificates, config).

    It becomes a member only when the others vote it in (`member propose admit`); on CometBFT
    its node block-syncs the chain and validates once the vote gives it power. The running
    hospitals learn its gateway address when they restart.
    """
    import re as _re

    from nacl.public import PrivateKey

    from medledger.exchange.pki import _free_port, issue_hospital
    from medledger.vault import create_kek_file

    meta = load_consortium(directory)
    if not _re.match(r"^[a-z0-9][a-z0-9._-]{0,63}$", org):
        raise ConfigError(f"--org: {org!r} is not a valid id (a-z, 0-9, '.', '_', '-')")
    if org in meta["hospitals"]:
        raise ConfigError(f"{org} already has a home in {directory}")
    existing = [load_config(h) for h in hospital_homes(directory)]
    if not existing:
        raise ConfigError(f"{directory}: no hospital to join")
    home = directory / "hospitals" / org
    (home / "keys").mkdir(parents=True, exist_ok=False)
    os.chmod(home / "keys", 0o700)
    key = SigningKey.generate()
    key.save(home / "keys" / "org.key")
    box = PrivateKey.generate()
    write_secret(home / "keys" / "box.key", bytes(box).hex() + "\n")
    write_secret(home / "keys" / "pseudonym.key", existing[0].pseudonym_key().hex() + "\n")
    create_kek_file(home / "keys" / "vault.kek")
    first = existing[0].raw
    save_config(
        home,
        {
            "org": org,
            "name": name,
            "chain_id": meta["chain_id"],
            "engine": meta["engine"],
            "consortium_dir": "../..",
            "block_time_ms": meta.get("block_time_ms", 1000),
            "vault": {"backend": "sqlite", "path": "vault.db"},
        },
    )
    validator_key = b""
    if meta["engine"] == "cometbft":
        from medledger.consensus.cometbft import testnet

        validator_key = testnet.add_hospital(directory, org)
    issue_hospital(directory / "ca", home, org)
    used = ports_in_use([*existing, load_config(home)])
    gateway = _free_port(used)
    api = _free_port(used | {gateway})
    peers = dict((first.get("exchange") or {}).get("peers", {}))
    peers[org] = f"https://127.0.0.1:{gateway}"
    raw = dict(load_config(home).raw)
    raw["exchange"] = {
        "listen": f"127.0.0.1:{gateway}",
        "tls": (first.get("exchange") or {}).get("tls", "keys/tls"),
        "peers": peers,
    }
    raw["api"] = {"listen": f"127.0.0.1:{api}"}
    save_config(home, raw)
    for c in existing:  # the others dial it once they restart
        other = dict(c.raw)
        exchange = dict(other.get("exchange") or {})
        exchange["peers"] = {**exchange.get("peers", {}), org: peers[org]}
        other["exchange"] = exchange
        save_config(c.home, other)
    meta["hospitals"] = [*meta["hospitals"], org]
    save_consortium(directory, meta)
    return Joining(home, org, name, key.public_key, bytes(box.public_key), validator_key)
