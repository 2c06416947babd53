"""CometBFT homes for a consortium on one machine: keys, config, peers and the shared genesis.

Layout (next to the hospital homes the rest of medledger writes):

    DIR/hospitals/<org>/cometbft/           `cometbft init --home` output, tuned by `prepare`
    DIR/hospitals/<org>/config.json         gets a "cometbft" section (addresses, node id)

Every node listens on its hospital's host (127.0.0.1 unless `prepare` is given another one) for
p2p, on loopback for RPC and ABCI (its own app is the only client), on its own ports (and a
reserved one for prometheus, disabled), and has every other node as a persistent peer. The
config is the one file CometBFT reads, so processes and tools derive addresses from it
(`node_addresses`) rather than from a second copy that could drift.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medledger.host.ports import free_ports

COMETBFT_VERSION = "0.38.25"
PORTS_PER_NODE = 4  # p2p, rpc, abci, prometheus (reserved: prometheus stays disabled)
DEFAULT_POWER = 10

_REPO_ROOT = Path(__file__).resolve().parents[4]


class TestnetError(RuntimeError):
    """A CometBFT home or binary is missing or not what medledger expects."""

    __test__ = False  # not a pytest test class despite the name


# --------------------------------------------------------------------------- binary & paths


def cometbft_binary() -> str:
    """The pinned CometBFT: $MEDLEDGER_COMETBFT, the project's .tools/bin, or PATH."""
    candidates = [
        os.environ.get("MEDLEDGER_COMETBFT", ""),
        str(_REPO_ROOT / ".tools" / "bin" / "cometbft"),
        shutil.which("cometbft") or "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise TestnetError(
        "cometbft not found: run `make cometbft` (builds v0.38.25 into .tools/bin) "
        "or set MEDLEDGER_COMETBFT"
    )


def hospital_home(consortium_dir: Path, org: str) -> Path:
    return consortium_dir / "hospitals" / org


def cometbft_home(consortium_dir: Path, org: str) -> Path:
    return hospital_home(consortium_dir, org) / "cometbft"


def list_hospitals(consortium_dir: Path) -> list[str]:
    """Hospitals with a CometBFT home: consortium.json's order first, then any added later."""
    orgs: list[str] = []
    meta = consortium_dir / "consortium.json"
    if meta.exists():
        orgs = [o for o in json.loads(meta.read_text()).get("hospitals", [])]
    root = consortium_dir / "hospitals"
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.name not in orgs:
                orgs.append(child.name)
    return [
        o for o in orgs if (cometbft_home(consortium_dir, o) / "config" / "config.toml").exists()
    ]


# --------------------------------------------------------------------------- keys & ids


def validator_pubkey(cmt_home: Path) -> bytes:
    """The node's consensus (validator) Ed25519 public key, 32 raw bytes."""
    key = json.loads((cmt_home / "config" / "priv_validator_key.json").read_text())
    if key["pub_key"]["type"] != "tendermint/PubKeyEd25519":
        raise TestnetError(f"{cmt_home}: validator key type {key['pub_key']['type']}")
    return base64.b64decode(key["pub_key"]["value"])


def validator_address(pub_key: bytes) -> str:
    """CometBFT's address of an Ed25519 key: first 20 bytes of SHA-256, upper-case hex."""
    return hashlib.sha256(pub_key).digest()[:20].hex().upper()


def node_id(cmt_home: Path) -> str:
    """The p2p node id (what `cometbft show-node-id` prints), from node_key.json."""
    key = json.loads((cmt_home / "config" / "node_key.json").read_text())
    priv = base64.b64decode(key["priv_key"]["value"])
    return hashlib.sha256(priv[32:]).digest()[:20].hex()


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class NodeAddresses:
    """Where one hospital's CometBFT listens and where it expects its app."""

    org: str
    node_id: str
    p2p: str  # host:port (where it listens; `external` is where the others dial it)
    rpc_url: str  # http://host:port, dialable (an all-interfaces listener is dialled on loopback)
    abci: str  # tcp://127.0.0.1:port
    external: str = ""  # host:port the others dial (config.toml's external_address)

    @property
    def peer(self) -> str:
        return f"{self.node_id}@{self.external or self.p2p}"


def _strip_tcp(addr: str) -> str:
    return addr.split("://", 1)[1] if "://" in addr else addr


def node_addresses(cmt_home: Path, org: str = "") -> NodeAddresses:
    """Read the addresses back from the node's config.toml (the one source of truth)."""
    config = tomllib.loads((cmt_home / "config" / "config.toml").read_text())
    rpc = dialable(_strip_tcp(config["rpc"]["laddr"]))
    return NodeAddresses(
        org=org or str(config.get("moniker", "")),
        node_id=node_id(cmt_home),
        p2p=_strip_tcp(config["p2p"]["laddr"]),
        rpc_url=f"http://{rpc}",
        abci=config["proxy_app"],
        external=str(config["p2p"].get("external_address", "")),
    )


def dialable(address: str) -> str:
    """`host:port` to dial a listener: one on every interface is reached on loopback."""
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "") else address


def is_private(host: str) -> bool:
    """A loopback or private (RFC 1918) address, which CometBFT's strict address book refuses."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: CometBFT resolves it, and a public one passes its checks
    return address.is_private or address.is_loopback


def consortium_addresses(consortium_dir: Path) -> dict[str, NodeAddresses]:
    return {
        org: node_addresses(cometbft_home(consortium_dir, org), org)
        for org in list_hospitals(consortium_dir)
    }


# --------------------------------------------------------------------------- ports


def _used_ports(consortium_dir: Path) -> set[int]:
    """Every port an existing node's config names, running or not."""
    used: set[int] = set()
    for org in list_hospitals(consortium_dir):
        path = cometbft_home(consortium_dir, org) / "config" / "config.toml"
        config = tomllib.loads(path.read_text())
        for addr in (
            config["proxy_app"],
            config["rpc"]["laddr"],
            config["p2p"]["laddr"],
            config["instrumentation"]["prometheus_listen_addr"],
        ):
            port = str(addr).rsplit(":", 1)[-1]
            if port.isdigit():
                used.add(int(port))
    return used


def _node_ports(index: int, base_port: int | None, exclude: set[int]) -> list[int]:
    if base_port is not None:
        first = base_port + 10 * index
        return [first + i for i in range(PORTS_PER_NODE)]
    return free_ports(PORTS_PER_NODE, exclude)


# --------------------------------------------------------------------------- config.toml


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def set_config(text: str, settings: dict[str, dict[str, Any]]) -> str:
    """Replace `key = value` lines in given sections of a config.toml, keeping its comments.

    `settings` maps a section name ("" for the top level) to keys; a key absent from the
    template is an error, so a CometBFT upgrade that renames one is noticed, not ignored.
    """
    lines = text.splitlines()
    section = ""
    seen: set[tuple[str, str]] = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        header = re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]", stripped)
        if header:
            section = header.group(1)
            continue
        match = re.match(r"^([A-Za-z0-9_-]+)\s*=", stripped)
        if match and match.group(1) in settings.get(section, {}):
            key = match.group(1)
            lines[i] = f"{key} = {_toml_value(settings[section][key])}"
            seen.add((section, key))
    missing = [(s, k) for s, keys in settings.items() for k in keys if (s, k) not in seen]
    if missing:
        raise TestnetError(f"config.toml has no {missing}: unexpected CometBFT template")
    return "\n".join(lines) + "\n"


def _duration(ms: int) -> str:
    return f"{ms}ms"


# A consortium's block time is the interval its users see between blocks. CometBFT starts a
# height's round `timeout_commit` after the previous height's decision, and the round itself
# (the proposer's reap and PrepareProposal, the block's gossip, every node's ProcessProposal,
# two vote steps) adds about this much: ≈ 0.4 s for 4 nodes on loopback at 500 tx/s, more
# on a loaded machine (docs/benchmarks.md, "Session 11 (lat13)"). timeout_commit is the block
# time less the round, and never less than half the block time.
ROUND_MS = 400


def timeout_commit_ms(block_time_ms: int) -> int:
    """CometBFT's timeout_commit for a consortium's block time (the target interval)."""
    return max(block_time_ms // 2, block_time_ms - ROUND_MS)


def block_time_from_timeout_ms(timeout_ms: int) -> int:
    """The block time whose `timeout_commit_ms` is `timeout_ms` (to within 1 ms when a block
    time under 2 × ROUND_MS was odd): a node added later gets the others' timeout_commit."""
    return timeout_ms + ROUND_MS if timeout_ms >= ROUND_MS else 2 * timeout_ms


def node_settings(
    org: str,
    ports: list[int],
    peers: list[str],
    block_time_ms: int,
    host: str = "127.0.0.1",
    external: str | None = None,
    timeout_commit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The config medledger runs CometBFT with; each choice says why.

    `host` is where p2p listens (`0.0.0.0`: every interface, only when configured so);
    `external` the address the other nodes dial (default `host`, which must then be one);
    `timeout_commit` (ms) the network's nodes' own, when known, else the block time's."""
    if timeout_commit is None:
        timeout_commit = timeout_commit_ms(block_time_ms)
    p2p, rpc, abci, prometheus = ports
    advertised = external or host
    hosts = [advertised] + [peer.split("@", 1)[-1].rpartition(":")[0] for peer in peers]
    return {
        "": {
            "moniker": org,
            "proxy_app": f"tcp://127.0.0.1:{abci}",
            # Blocks, consensus steps and the start-up handshake/replay at info; the chatty
            # modules (p2p, mempool, rpc) at error.
            "log_level": "main:info,state:info,consensus:info,statesync:info,*:error",
            # Ask the app about every p2p connection: it accepts only the nodes of current
            # members, from committed state (ledger.app.Application.filter_peer).
            "filter_peers": True,
        },
        "rpc": {
            "laddr": f"tcp://127.0.0.1:{rpc}",  # loopback only: the API is the public face
            "pprof_laddr": "",
            "max_request_batch_size": 100,  # lets a client hand over txs in batches
        },
        "p2p": {
            "laddr": f"tcp://{host}:{p2p}",
            "external_address": f"{advertised}:{p2p}",
            "persistent_peers": ",".join(peers),
            # CometBFT's strict address book refuses loopback and private addresses: relaxed
            # only when a node's own or its peers' addresses are such.
            "addr_book_strict": not any(is_private(h) for h in hosts),
            # Several nodes on one IP (one machine) is a sandbox; hospitals have their own.
            "allow_duplicate_ip": len(set(hosts)) < len(hosts) or advertised == "127.0.0.1",
            # A restarted hospital must be redialled within seconds, not hours of backoff.
            "persistent_peers_max_dial_period": "10s",
            # Loopback has no bandwidth to save: flush sooner, allow more than 5 MB/s.
            "flush_throttle_timeout": "10ms",
            "send_rate": 20_480_000,
            "recv_rate": 20_480_000,
        },
        "mempool": {
            # Room for a few seconds of saturation load; the cache (duplicate filter) larger.
            "size": 20000,
            "cache_size": 40000,
            # No re-validation of the txs left in the mempool after each block: it doubled
            # the CheckTx traffic through the socket under load (docs/benchmarks.md). A tx an
            # earlier block made invalid is dropped by PrepareProposal, refused by
            # ProcessProposal and FinalizeBlock anyway (docs/architecture.md).
            "recheck": False,
        },
        "consensus": {
            # This wait plus the round is the block time (the interval users see).
            "timeout_commit": _duration(timeout_commit),
            # A steady heartbeat: liveness is visible in `net status`, and the app hash of the
            # last tx block reaches a header (for `verify`) within one block time.
            "create_empty_blocks": True,
            "create_empty_blocks_interval": "0s",
            # How long a peer's gossip routine sleeps when it has nothing new to send. The
            # default 100 ms is paid at each step (block parts, prevotes, precommits), which
            # added ≈ 0.4 s to every height on loopback; 10 ms costs little CPU in Go.
            "peer_gossip_sleep_duration": "10ms",
        },
        # The app keeps its own per-height record and tx index; CometBFT's would duplicate it.
        "tx_index": {"indexer": "null"},
        "instrumentation": {
            "prometheus": False,
            "prometheus_listen_addr": f"127.0.0.1:{prometheus}",
        },
    }


def _init_home(cmt_home: Path) -> None:
    if (cmt_home / "config" / "config.toml").exists():
        return  # keep its keys: prepare is re-runnable
    cmt_home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [cometbft_binary(), "init", "--home", str(cmt_home)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise TestnetError(f"cometbft init --home {cmt_home} failed: {result.stderr.strip()}")


def _configure(cmt_home: Path, settings: dict[str, dict[str, Any]]) -> None:
    path = cmt_home / "config" / "config.toml"
    path.write_text(set_config(path.read_text(), settings))


def _update_hospital_config(consortium_dir: Path, org: str, addr: NodeAddresses) -> None:
    """Record the node's addresses in the hospital's config.json (merging, never replacing)."""
    path = hospital_home(consortium_dir, org) / "config.json"
    raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    toml = cometbft_home(consortium_dir, org) / "config" / "config.toml"
    prometheus = tomllib.loads(toml.read_text())["instrumentation"]["prometheus_listen_addr"]
    raw["cometbft"] = {
        "home": "cometbft",
        "node_id": addr.node_id,
        "p2p": addr.p2p,
        "rpc": addr.rpc_url,
        "abci": addr.abci,
        "prometheus": prometheus,  # disabled, but reserved: other services keep clear of it
    }
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- public API


def prepare(
    consortium_dir: Path,
    hospital_ids: list[str],
    block_time_ms: int,
    chain_id: str,
    base_port: int | None = None,
    hosts: dict[str, str] | None = None,
) -> dict[str, bytes]:
    """Create and configure one CometBFT home per hospital; return their validator keys.

    Ports: with `base_port`, hospital i gets base_port + 10*i + (0 p2p, 1 rpc, 2 abci,
    3 prometheus); without, free loopback ports. `hosts` gives a hospital's p2p address
    (default 127.0.0.1). `chain_id` is written by `write_genesis`.
    """
    hosts = hosts or {}
    if not hospital_ids:
        raise TestnetError("no hospitals")
    if block_time_ms <= 0:
        raise TestnetError("block time must be positive")
    consortium_dir = consortium_dir.resolve()
    homes = {org: cometbft_home(consortium_dir, org) for org in hospital_ids}
    for home in homes.values():
        _init_home(home)
    exclude: set[int] = set()
    ports: dict[str, list[int]] = {}
    for i, org in enumerate(hospital_ids):
        ports[org] = _node_ports(i, base_port, exclude)
        exclude.update(ports[org])
    host = {org: hosts.get(org, "127.0.0.1") for org in hospital_ids}
    peers = {org: f"{node_id(homes[org])}@{host[org]}:{ports[org][0]}" for org in hospital_ids}
    keys: dict[str, bytes] = {}
    for org in hospital_ids:
        others = [peers[o] for o in hospital_ids if o != org]
        settings = node_settings(org, ports[org], others, block_time_ms, host[org])
        _configure(homes[org], settings)
        _update_hospital_config(consortium_dir, org, node_addresses(homes[org], org))
        keys[org] = validator_pubkey(homes[org])
    return keys


def _format_time(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _default_consensus_params(homes: list[Path]) -> dict[str, Any]:
    for home in homes:
        path = home / "config" / "genesis.json"
        if path.exists():
            params: dict[str, Any] = json.loads(path.read_text())["consensus_params"]
            return params
    raise TestnetError("no CometBFT genesis to take default consensus params from")


def default_consensus_params() -> dict[str, Any]:
    """CometBFT's default consensus params, as `cometbft init` writes them (in a scratch home:
    a genesis made from join requests has no CometBFT home of its own)."""
    with tempfile.TemporaryDirectory(prefix="medledger-cmt-") as scratch:
        home = Path(scratch) / "cometbft"
        _init_home(home)
        return _default_consensus_params([home])


def genesis_doc(
    chain_id: str,
    genesis_time_ms: int,
    validators: list[tuple[str, bytes, int]],
    consensus_params: dict[str, Any],
) -> dict[str, Any]:
    """CometBFT's genesis.json content for these validators (power 0 / no key: left out)."""
    vals = [
        {
            "address": validator_address(key),
            "pub_key": {
                "type": "tendermint/PubKeyEd25519",
                "value": base64.b64encode(key).decode(),
            },
            "power": str(power),
            "name": org,
        }
        for org, key, power in validators
        if key and power > 0
    ]
    if not vals:
        raise TestnetError("a CometBFT genesis needs at least one validator with power > 0")
    return {
        "genesis_time": _format_time(genesis_time_ms),
        "chain_id": chain_id,
        "initial_height": "1",
        "consensus_params": consensus_params,
        "validators": vals,
        "app_hash": "",
    }


def write_genesis(
    consortium_dir: Path,
    chain_id: str,
    genesis_time_ms: int,
    validators: list[tuple[str, bytes, int]],
) -> None:
    """Write the same genesis.json into every hospital's CometBFT home.

    Consensus params are CometBFT's defaults (vote extensions off); validators are the
    hospitals', named by org so that `cometbft` logs and RPC show who is who.
    """
    consortium_dir = consortium_dir.resolve()
    homes = [cometbft_home(consortium_dir, org) for org in list_hospitals(consortium_dir)]
    if not homes:
        raise TestnetError(f"{consortium_dir}: no CometBFT homes (run prepare first)")
    doc = genesis_doc(chain_id, genesis_time_ms, validators, _default_consensus_params(homes))
    text = json.dumps(doc, indent=2) + "\n"
    for home in homes:
        path = home / "config" / "genesis.json"
        tmp = path.with_name("genesis.json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def block_time_ms(cmt_home: Path) -> int:
    """The block time a node runs with (from its timeout_commit)."""
    return block_time_from_timeout_ms(timeout_commit_of(cmt_home))


def timeout_commit_of(cmt_home: Path) -> int:
    """A node's configured timeout_commit, in ms."""
    config = tomllib.loads((cmt_home / "config" / "config.toml").read_text())
    value = str(config["consensus"]["timeout_commit"])
    ms = go_duration_ms(value)
    if ms is None:
        raise TestnetError(f"{cmt_home}: timeout_commit {value!r} is not a Go duration")
    return ms


#: Go's time.ParseDuration units, in ms: an operator may write any of them in config.toml.
_GO_UNITS_MS = {
    "ns": 1e-6,
    "us": 1e-3,
    "µs": 1e-3,
    "μs": 1e-3,
    "ms": 1.0,
    "s": 1e3,
    "m": 6e4,
    "h": 3.6e6,
}
_GO_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration_ms(value: str) -> int | None:
    """A non-negative Go duration ("600ms", "0.6s", "1s500ms", "1m", "0"), rounded to ms;
    None when it is not one."""
    if value == "0":
        return 0
    terms = _GO_TERM.findall(value)
    if not terms or "".join(n + u for n, u in terms) != value:
        return None
    return round(sum(float(n) * _GO_UNITS_MS[u] for n, u in terms))


def add_hospital(
    consortium_dir: Path, org: str, base_port: int | None = None, index: int | None = None
) -> bytes:
    """Give a new hospital a CometBFT home that joins the running network.

    Same config as the others, every existing node as a persistent peer, the consortium's
    genesis copied. The node block-syncs the chain through its app (re-executing every block),
    and starts validating once governance admits it and the app returns its validator update.
    Existing nodes get it as a persistent peer too (effective when they restart). Returns its
    validator public key, which the governance proposal names.
    """
    consortium_dir = consortium_dir.resolve()
    existing = [o for o in list_hospitals(consortium_dir) if o != org]
    if not existing:
        raise TestnetError(f"{consortium_dir}: no existing hospitals to join")
    first = cometbft_home(consortium_dir, existing[0])
    home = cometbft_home(consortium_dir, org)
    _init_home(home)
    addrs = {o: node_addresses(cometbft_home(consortium_dir, o), o) for o in existing}
    position = index if index is not None else len(existing)
    ports = _node_ports(position, base_port, _used_ports(consortium_dir))
    settings = node_settings(org, ports, [a.peer for a in addrs.values()], block_time_ms(first))
    _configure(home, settings)
    shutil.copyfile(first / "config" / "genesis.json", home / "config" / "genesis.json")
    mine = node_addresses(home, org)
    _update_hospital_config(consortium_dir, org, mine)
    for o in existing:
        other = cometbft_home(consortium_dir, o)
        config = tomllib.loads((other / "config" / "config.toml").read_text())
        peers = [p for p in str(config["p2p"]["persistent_peers"]).split(",") if p]
        if mine.peer not in peers:
            peers.append(mine.peer)
            _configure(other, {"p2p": {"persistent_peers": ",".join(peers)}})
    return validator_pubkey(home)


def join_home(
    cmt_home: Path,
    org: str,
    *,
    genesis: dict[str, Any],
    peers: list[str],
    ports: list[int],
    block_time_ms: int,
    host: str = "127.0.0.1",
    external: str | None = None,
    rpc_host: str = "127.0.0.1",
    timeout_commit: int | None = None,
) -> NodeAddresses:
    """A CometBFT home on a hospital's own machine that joins a running network.

    Its keys are kept when the home has them already (made at keygen); `genesis` is the
    network's CometBFT genesis, `peers` the members' `nodeid@host:port`. The node block-syncs
    from them and validates once a vote gives it power. RPC stays on loopback unless
    `rpc_host` says otherwise. `timeout_commit` (ms) is the sponsor node's own when its
    bootstrap answer says it (a network configured before session 11 kept the block time
    itself there), else derived from `block_time_ms`.
    """
    _init_home(cmt_home)
    settings = node_settings(org, ports, peers, block_time_ms, host, external, timeout_commit)
    settings["rpc"]["laddr"] = f"tcp://{rpc_host}:{ports[1]}"
    _configure(cmt_home, settings)
    path = cmt_home / "config" / "genesis.json"
    tmp = path.with_name("genesis.json.tmp")
    tmp.write_text(json.dumps(genesis, indent=2) + "\n")
    os.replace(tmp, path)
    return node_addresses(cmt_home, org)
