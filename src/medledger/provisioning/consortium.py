"""Making a consortium on disk, and a home for a hospital that joins it later.

`medledger init` (and the demo, the tests, the benches) calls `create_consortium`;
`medledger hospital add` calls `add_hospital`. This is the one module that wires the pieces
a hospital's home needs together: its keys, the genesis, its TLS key and certificate
(`exchange.pki`), the CometBFT homes (`consensus.cometbft.testnet`), the vault's KEK, and
the config.json (`config`) that names them all. The other modules only read what it made.
There is no consortium CA: each home's TLS key is its own, and the genesis names it
(`tls_key`) with the hospital's addresses; peers trust exactly that.

    DIR/consortium.json        chain id, engine, hospitals
    DIR/genesis.json           the genesis every replica starts from
    DIR/solo.key               the solo block producer's key (solo engine)
    DIR/ledger/ledger.db       the shared solo ledger (solo engine)
    DIR/hospitals/<org>/       one home per hospital: config.json, keys/ (mode 0600 files)

Ports: with a base port, hospital i takes base + 10 i + (0..9) (its gateway at +4, its API at
+9); without one, each service gets a free loopback port, clear of the ports any config
already names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
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
from medledger.provisioning.keygen import JOIN_REQUEST, JoinRequest, keygen

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


def check_params(params: dict[str, int]) -> None:
    """A genesis's parameters as a vote of the newest contracts would take them: ConfigError
    naming the first that is not (contracts.check_genesis_params)."""
    from medledger.contracts import check_genesis_params, default_versions
    from medledger.ledger.errors import TxError

    try:
        check_genesis_params(params, default_versions())
    except TxError as exc:
        raise ConfigError(f"genesis {exc}") from None


def check_chain_id(chain_id: str) -> None:
    """A chain id as every tool takes it: a-z, 0-9 and '-', at most 48."""
    if not _CHAIN_ID.match(chain_id):
        raise ConfigError(f"--chain-id: {chain_id!r} is not valid (a-z, 0-9, '-'; max 48)")


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
    check_chain_id(chain_id)
    if (directory / "consortium.json").exists():
        raise ConfigError(f"{directory}: a consortium already exists here")

    from medledger.contracts import default_versions

    check_params(params or {})
    directory.mkdir(parents=True, exist_ok=True)

    orgs = hospital_ids(hospitals)
    if hosts is not None and len(hosts) != hospitals:
        raise ConfigError(f"--host: {len(hosts)} given for {hospitals} hospitals")
    host = {org: (hosts[i] if hosts else "127.0.0.1") for i, (org, _) in enumerate(orgs)}
    homes: list[Path] = []
    requests: dict[str, JoinRequest] = {}
    pseudonym_key = os.urandom(32)
    for org, name in orgs:  # each home made as a hospital makes its own (keygen)
        home = directory / "hospitals" / org
        requests[org] = keygen(home, org, name, {})
        write_secret(home / "keys" / "pseudonym.key", pseudonym_key.hex() + "\n")
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
    _setup_exchange(homes, host, base_port=base_port)
    _assign_api_ports(homes, host, base_port)
    members: list[GenesisMember] = []
    for (org, name), home in zip(orgs, homes, strict=True):
        vkey = validator_keys.get(org, b"")
        addresses = member_addresses(load_config(home))
        requests[org] = replace(requests[org], addresses=addresses)
        (home / JOIN_REQUEST).write_text(requests[org].to_json())
        members.append(
            GenesisMember(
                org=org,
                name=name,
                key=requests[org].key,
                validator_key=vkey,
                power=10 if vkey else 0,
                box_key=requests[org].box_key,
                tls_key=requests[org].tls_key,
                addresses=addresses,
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

    return homes


def member_addresses(config: HospitalConfig) -> dict[str, str]:
    """A home's addresses as its member record holds them (gateway, api, p2p, rpc)."""
    found: dict[str, str] = {}
    if config.exchange.listen:
        found["gateway"] = config.exchange.listen
    if config.api.listen:
        found["api"] = config.api.listen
    cmt = config.cometbft
    if cmt.p2p and cmt.node_id:
        found["p2p"] = f"{cmt.node_id}@{cmt.p2p}"
    if cmt.rpc:
        found["rpc"] = cmt.rpc.split("://", 1)[-1]
    return found


def _recorded_cometbft(home: Path) -> CometbftSection | None:
    """The "cometbft" section the testnet set-up wrote into a home's config.json, if any."""
    path = home / "config.json"
    section = json.loads(path.read_text()).get("cometbft") if path.exists() else None
    return None if section is None else CometbftSection.model_validate(section)


def ports_in_use(configs: list[HospitalConfig]) -> set[int]:
    """Every loopback port the hospitals' configs name (CometBFT, gateway, API)."""
    return {port for c in configs for port in c.ports()}


def _setup_exchange(homes: list[Path], host: dict[str, str], base_port: int | None = None) -> None:
    """What `medledger init` adds for the exchange: each hospital's gateway address (on its
    host) plus the directory of its peers' gateways in config.json.

    The directory (org -> URL) is what X-Road calls the global configuration: a hospital only
    ever talks to the addresses it lists, over TLS pinned to the keys on the chain.
    """
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
    request: JoinRequest

    @property
    def request_path(self) -> Path:
        return self.home / JOIN_REQUEST


def add_hospital(directory: Path, org: str, name: str) -> Joining:
    """Make a home for a hospital joining a running sandbox consortium (keys, config).

    Its keys are made as on a machine of its own (`keygen`); it becomes a member only when the
    others vote its request in (`member propose admit --request`); on CometBFT its node
    block-syncs the chain and validates once the vote gives it power. The running hospitals
    learn its gateway address when they restart. (The consortium's pseudonym key is copied
    from a sibling home: a sandbox shortcut.)
    """
    meta = load_consortium(directory)
    if not _ORG.match(org):
        raise ConfigError(f"--org: {org!r} is not a valid id (a-z, 0-9, '.', '_', '-')")
    if org in meta.hospitals:
        raise ConfigError(f"{org} already has a home in {directory}")
    existing = [load_config(h) for h in hospital_homes(directory)]
    if not existing:
        raise ConfigError(f"{directory}: no hospital to join")
    home = directory / "hospitals" / org
    if home.exists():
        raise ConfigError(f"{home}: already exists")
    request = keygen(home, org, name, {})
    write_secret(home / "keys" / "pseudonym.key", existing[0].pseudonym_key().hex() + "\n")
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
    if meta.engine == "cometbft":
        from medledger.consensus.cometbft import testnet

        testnet.add_hospital(directory, org)  # adds the "cometbft" section, keeps the keys
    joining = load_config(home)
    used = ports_in_use([*existing, joining])
    gateway = free_port(used)
    api = free_port(used | {gateway})
    peers = {**first.exchange.peers, org: f"https://127.0.0.1:{gateway}"}
    exchange = ExchangeSection(listen=f"127.0.0.1:{gateway}", tls=first.exchange.tls, peers=peers)
    joining = joining.model_copy(
        update={"exchange": exchange, "api": ApiSection(listen=f"127.0.0.1:{api}")}
    )
    save_config(joining)
    for c in existing:  # the others dial it once they restart
        theirs = c.exchange.model_copy(update={"peers": {**c.exchange.peers, org: peers[org]}})
        save_config(c.model_copy(update={"exchange": theirs}))
    save_consortium(directory, meta.model_copy(update={"hospitals": [*meta.hospitals, org]}))
    request = replace(request, addresses=member_addresses(joining))
    (home / JOIN_REQUEST).write_text(request.to_json())
    return Joining(home, request)
