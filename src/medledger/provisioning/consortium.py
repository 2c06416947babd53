"""Making a consortium on disk, and a home for a hospital that joins it later.

`medledger init` (and the demo, the tests, the benches) calls `create_consortium`;
`medledger hospital add` calls `add_hospital`. This is the one module that wires the pieces
a hospital's home needs together: its keys, the genesis, the exchange's CA and certificates
(`exchange.pki`), the CometBFT homes (`consensus.cometbft.testnet`), the vault's KEK, and
the config.json (`config`) that names them all. The other modules only read what it made.

    DIR/consortium.json        chain id, engine, hospitals
    DIR/genesis.json           the genesis every replica starts from
    DIR/solo.key               the solo block producer's key (solo engine)
    DIR/ledger/ledger.db       the shared solo ledger (solo engine)
    DIR/ca/                    the consortium CA (exchange.pki)
    DIR/hospitals/<org>/       one home per hospital: config.json, keys/ (mode 0600 files)

Ports: with a base port, hospital i takes base + 10 i + (0..9) (its gateway at +4, its API at
+9); without one, each service gets a free loopback port, clear of the ports any config
already names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medledger.exchange import pki
from medledger.host.ports import free_port
from medledger.host.secretfile import write_secret
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey
from medledger.node.config import (
    TLS_DIR,
    ApiSection,
    CometbftSection,
    ConfigError,
    Consortium,
    ExchangeSection,
    HospitalConfig,
    VaultSection,
    hospital_homes,
    load_config,
    load_consortium,
    save_config,
    save_consortium,
)

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
API_PORT_OFFSET = 9  # with a base port, hospital i's API listens on base + 10 i + 9

_CHAIN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
_ORG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


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
    hosts: list[str] | None = None,
) -> list[Path]:
    """Make keys, genesis and one home per hospital; refuse to overwrite an existing one.

    `params` overrides care-contract parameters in the genesis (policies.DEFAULT_PARAMS).
    `hosts[i]` is the address hospital i's gateway, API and CometBFT p2p listen on and are
    dialled at (one machine each); by default every hospital is on 127.0.0.1."""
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
    if hosts is not None and len(hosts) != hospitals:
        raise ConfigError(f"--host: {len(hosts)} given for {hospitals} hospitals")
    host = {org: (hosts[i] if hosts else "127.0.0.1") for i, (org, _) in enumerate(orgs)}
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
            directory,
            [o for o, _ in orgs],
            block_time_ms,
            chain_id,
            base_port=base_port,
            hosts=host,
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
        config = HospitalConfig(
            home=home.resolve(),
            org=org,
            name=name,
            chain_id=chain_id,
            engine=engine,
            consortium_dir="../..",
            block_time_ms=block_time_ms,
            vault=VaultSection(backend="sqlite", path="vault.db"),
        )
        recorded = _recorded_cometbft(home)
        save_config(
            config if recorded is None else config.model_copy(update={"cometbft": recorded})
        )
    save_consortium(
        directory,
        Consortium(
            chain_id=chain_id,
            engine=engine,
            hospitals=[o for o, _ in orgs],
            block_time_ms=block_time_ms,
        ),
    )
    _setup_exchange(directory, homes, chain_id, host, base_port=base_port)
    _assign_api_ports(homes, host, base_port)
    return homes


def _recorded_cometbft(home: Path) -> CometbftSection | None:
    """The "cometbft" section the testnet set-up wrote into a home's config.json, if any."""
    path = home / "config.json"
    section = json.loads(path.read_text()).get("cometbft") if path.exists() else None
    return None if section is None else CometbftSection.model_validate(section)


def ports_in_use(configs: list[HospitalConfig]) -> set[int]:
    """Every loopback port the hospitals' configs name (CometBFT, gateway, API)."""
    return {port for c in configs for port in c.ports()}


def _setup_exchange(
    consortium_dir: Path,
    homes: list[Path],
    chain_id: str,
    host: dict[str, str],
    base_port: int | None = None,
) -> None:
    """What `medledger init` adds for the exchange: the CA, each hospital's certificates, and
    each hospital's gateway address plus the directory of its peers' gateways in config.json.

    The directory (org -> URL) is what X-Road calls the global configuration: a hospital only
    ever talks to the addresses it lists, over TLS pinned to the consortium CA.
    """
    pki.create_ca(consortium_dir / "ca", chain_id)
    configs = [load_config(home) for home in homes]
    exclude = ports_in_use(configs)  # the CometBFT nodes' ports, when there are any
    listen: dict[str, int] = {}
    for i, c in enumerate(configs):
        if base_port is not None:
            port = base_port + 10 * i + pki.GATEWAY_PORT_OFFSET
        else:
            port = free_port(exclude)
        exclude.add(port)
        listen[c.org] = port
        hosts = tuple(dict.fromkeys((host[c.org], "127.0.0.1", "localhost")))
        pki.issue_hospital(consortium_dir / "ca", c.home, c.org, hosts)
    peers = {org: f"https://{_url_host(host[org])}:{port}" for org, port in listen.items()}
    for c in configs:
        address = f"{_url_host(host[c.org])}:{listen[c.org]}"
        exchange = ExchangeSection(listen=address, tls=TLS_DIR, peers=peers)
        save_config(c.model_copy(update={"exchange": exchange}))


def _url_host(host: str) -> str:
    """A host as it stands in a URL or `host:port` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _assign_api_ports(homes: list[Path], host: dict[str, str], base_port: int | None) -> None:
    """Each hospital's API (FHIR, portal, explorer) gets its own port on its host."""
    configs = [load_config(home) for home in homes]
    used = ports_in_use(configs)
    for i, c in enumerate(configs):
        port = base_port + 10 * i + API_PORT_OFFSET if base_port is not None else free_port(used)
        used.add(port)
        listen = f"{_url_host(host[c.org])}:{port}"
        save_config(c.model_copy(update={"api": ApiSection(listen=listen)}))


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
    from nacl.public import PrivateKey

    from medledger.vault import create_kek_file

    meta = load_consortium(directory)
    if not _ORG.match(org):
        raise ConfigError(f"--org: {org!r} is not a valid id (a-z, 0-9, '.', '_', '-')")
    if org in meta.hospitals:
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
    first = existing[0]
    save_config(
        HospitalConfig(
            home=home.resolve(),
            org=org,
            name=name,
            chain_id=meta.chain_id,
            engine=meta.engine,
            consortium_dir="../..",
            block_time_ms=meta.block_time_ms,
            vault=VaultSection(backend="sqlite", path="vault.db"),
        )
    )
    validator_key = b""
    if meta.engine == "cometbft":
        from medledger.consensus.cometbft import testnet

        validator_key = testnet.add_hospital(directory, org)  # adds the "cometbft" section
    pki.issue_hospital(directory / "ca", home, org)
    joining = load_config(home)
    used = ports_in_use([*existing, joining])
    gateway = free_port(used)
    api = free_port(used | {gateway})
    peers = {**first.exchange.peers, org: f"https://127.0.0.1:{gateway}"}
    exchange = ExchangeSection(listen=f"127.0.0.1:{gateway}", tls=first.exchange.tls, peers=peers)
    save_config(
        joining.model_copy(
            update={"exchange": exchange, "api": ApiSection(listen=f"127.0.0.1:{api}")}
        )
    )
    for c in existing:  # the others dial it once they restart
        theirs = c.exchange.model_copy(update={"peers": {**c.exchange.peers, org: peers[org]}})
        save_config(c.model_copy(update={"exchange": theirs}))
    save_consortium(directory, meta.model_copy(update={"hospitals": [*meta.hospitals, org]}))
    return Joining(home, org, name, key.public_key, bytes(box.public_key), validator_key)
