"""A hospital joining from its own machine: its home configured from a member's bootstrap answer.

    medledger hospital keygen --home H --org ORG ...   keys at home, H/join-request.json
    (the members vote it in: medledger member propose admit --request ...)
    medledger join --home H --from https://member:port [--genesis-hash HEX]

`configure_from` reads `GET /exchange/v1/bootstrap` of any member (exchange/bootstrap.py) and
writes what the keygen'd home lacks: the consortium's genesis (checked against the hash the
operator was given, or returned for them to compare), consortium.json, config.json (every
listener at the address the join request announced), and the CometBFT home (its genesis, the
members' p2p addresses as persistent peers). The node then block-syncs the chain from genesis,
checking every block, and validates once a `set_power` vote gives it power.

A founder does the same from the founding file (`medledger join --home H --genesis FILE`,
`configure_from_file`): `medledger consortium genesis` writes it in the bootstrap answer's
shape (provisioning/founding.py), so both go through the one `configure`.

`fetch_pseudonym_key` asks a member's gateway for the consortium's pseudonym key, which comes
sealed to this hospital's box key on the chain, and is released only to a current member. The
gateway is pinned to the member's TLS key in this home's own replica once it has caught up
(never the genesis: the key may have been rotated away since), so the key is fetched on a
second run of `join`, after the node has synced. `founders_pseudonym_key`: the first founder
makes it, the others fetch it so from its gateway.

    H/join-request.json            what keygen wrote (org, name, addresses, public keys)
    H/consortium/genesis.json      the genesis, as fetched and checked
    H/consortium/consortium.json   chain id, engine, members known when joining
    H/config.json                  this hospital's configuration
    H/cometbft/                    the CometBFT home (keys from keygen kept)
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from medledger.host.ports import free_ports
from medledger.ledger.genesis import Genesis
from medledger.node.config import (
    TLS_DIR,
    ApiSection,
    CometbftSection,
    ConfigError,
    Consortium,
    ExchangeSection,
    HospitalConfig,
    VaultSection,
    load_config,
    save_config,
    save_consortium,
)

BOOTSTRAP_PATH = "/exchange/v1/bootstrap"
#: Largest bootstrap answer read (a genesis of a few hundred members fits many times over).
MAX_BOOTSTRAP_BYTES = 4 * 1024 * 1024
CONSORTIUM_DIR = "consortium"
#: The longest timeout_commit a sponsor's answer may give a joining node (one minute).
MAX_TIMEOUT_MS = 60_000


class JoinError(ConfigError):
    """Joining could not go on; the message says what and where."""


def _request(home: Path) -> dict[str, Any]:
    """The home's join request (written by keygen): org, name and addresses at least."""
    path = home / "join-request.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise JoinError(
            f"{path}: not found (make the home with `medledger hospital keygen`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise JoinError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    for name in ("org", "name", "addresses"):
        if name not in raw:
            raise JoinError(f"{path}: {name}: missing")
    if not isinstance(raw["addresses"], dict) or "gateway" not in raw["addresses"]:
        raise JoinError(f"{path}: addresses.gateway: missing (keygen --address gateway=host:port)")
    return dict(raw)


def _unverified_tls() -> ssl.SSLContext:
    """TLS 1.3 without a trust anchor: the bootstrap answer is checked by its genesis hash."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fetch_bootstrap(from_url: str, timeout: float = 15.0) -> dict[str, Any]:
    """A member's bootstrap answer, read up to `MAX_BOOTSTRAP_BYTES`."""
    url = from_url.rstrip("/") + BOOTSTRAP_PATH
    if urlsplit(url).scheme != "https":
        raise JoinError(f"--from: {from_url!r}: a member's gateway URL, https://host:port")
    try:
        with (
            httpx.Client(verify=_unverified_tls(), timeout=timeout) as client,
            client.stream("GET", url) as response,
        ):
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BOOTSTRAP_BYTES:
                    raise JoinError(f"{url}: answer over {MAX_BOOTSTRAP_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise JoinError(f"{url}: unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise JoinError(f"{url}: answered {response.status_code}: {body[:200]!r}")
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        raise JoinError(f"{url}: the answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("genesis"), dict):
        raise JoinError(f"{url}: the answer has no genesis")
    return answer


def _check_genesis(
    home: Path, answer: dict[str, Any], expected: str | None, source: str
) -> Genesis:
    """The genesis of the answer, once its hash is the one expected (nothing written)."""
    tmp = home / "genesis.json.tmp"
    tmp.write_text(json.dumps(answer["genesis"], indent=2, sort_keys=True) + "\n")
    try:
        genesis = Genesis.load(tmp)
    except ValueError as exc:
        raise JoinError(f"{source}: genesis: {exc}") from None
    finally:
        tmp.unlink()
    digest = genesis.hash().hex()
    if expected is not None and digest != expected.strip().lower():
        raise JoinError(
            f"--genesis-hash: the genesis of {source} hashes to {digest}, not {expected}: "
            "this is not the consortium you were given (nothing written)"
        )
    if answer.get("chain_id") != genesis.chain_id or answer.get("engine") != genesis.engine:
        raise JoinError(f"{source}: chain_id/engine differ from its own genesis")
    from medledger.contracts import replayed_genesis_params
    from medledger.ledger.errors import TxError

    try:  # what the node's InitChain would refuse (no more), said before anything is written
        replayed_genesis_params(genesis.params, genesis.contracts)
    except TxError as exc:
        raise JoinError(f"{source}: genesis {exc} (nothing written)") from None
    return genesis


def _check_validators(genesis: Genesis, document: dict[str, Any], source: str) -> None:
    """CometBFT's genesis must start from the validators the (hash-checked) genesis names."""
    try:
        listed = {
            (base64.b64decode(v["pub_key"]["value"]), int(v["power"]))
            for v in document.get("validators", [])
        }
    except (KeyError, TypeError, ValueError):
        raise JoinError(f"{source}: cometbft.genesis.validators: unreadable") from None
    wanted = {(m.validator_key, m.power) for m in genesis.members if m.validator_key and m.power}
    if listed != wanted:
        raise JoinError(
            f"{source}: cometbft.genesis.validators differ from the genesis members' "
            "validator keys and powers (nothing written)"
        )


def _timeout_commit(cometbft: dict[str, Any], source: str) -> int | None:
    """The sponsor node's timeout_commit (ms) from its answer, which the joiner takes as is
    (the network's nodes agree on it); None from a sponsor older than the field."""
    value = cometbft.get("timeout_commit_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TIMEOUT_MS:
        raise JoinError(
            f"{source}: cometbft.timeout_commit_ms: {value!r} is not a whole number of ms "
            f"in 1..{MAX_TIMEOUT_MS} (nothing written)"
        )
    return value


def _split_host(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise JoinError(f"join-request.json: addresses.{what}: {address!r} is not host:port")
    return host, int(port)


def configure_from(
    home: Path,
    from_url: str,
    *,
    genesis_hash: str | None,
    listen_all: bool = False,
    sandbox: Path | None = None,
) -> HospitalConfig:
    """Write the keygen'd `home`'s configuration from the bootstrap answer of `from_url`
    (`sandbox`: a solo sandbox's folder on this machine, for a solo consortium)."""
    _request(home)  # a home keygen made, before asking anyone
    answer = fetch_bootstrap(from_url)
    return configure(
        home,
        answer,
        source=from_url,
        genesis_hash=genesis_hash,
        listen_all=listen_all,
        sandbox=sandbox,
    )


def configure_from_file(
    home: Path, path: Path, *, genesis_hash: str | None, listen_all: bool = False
) -> HospitalConfig:
    """Write a founder's keygen'd `home`'s configuration from the founding file at `path`
    (`medledger consortium genesis`: the bootstrap answer's shape, made before any node runs)."""
    from medledger.provisioning.founding import load_founding

    answer = load_founding(path)
    return configure(
        home, answer, source=str(path), genesis_hash=genesis_hash, listen_all=listen_all
    )


def configure(
    home: Path,
    answer: dict[str, Any],
    *,
    source: str,
    genesis_hash: str | None,
    listen_all: bool = False,
    sandbox: Path | None = None,
) -> HospitalConfig:
    """Write the keygen'd `home`'s configuration from a bootstrap answer (or founding file).

    Refuses (writing nothing) a genesis whose hash is not `genesis_hash` when one is given;
    without one, the caller shows the hash for the operator to compare. The gateway, API and
    p2p listen at the request's addresses, or with `listen_all` on every interface at the same
    ports (behind a NAT: the request's addresses stay those the others dial). On a solo
    consortium the home joins the ledger of the sandbox folder `sandbox` on this machine
    (checked to hold the same genesis). Re-runnable.
    """
    home = home.resolve()
    request = _request(home)
    genesis = _check_genesis(home, answer, genesis_hash, source)
    org, addresses = str(request["org"]), dict(request["addresses"])
    members = [m for m in answer.get("members", []) if isinstance(m, dict)]
    orgs = [str(m["org"]) for m in members if m.get("org") != org]
    block_time_ms = int(answer.get("block_time_ms", 1000))
    consortium_dir = CONSORTIUM_DIR
    if genesis.engine == "solo":
        consortium_dir = _solo_sandbox(home, genesis, sandbox, source)
    elif genesis.engine != "cometbft":
        raise JoinError(f"{source}: unknown engine {genesis.engine!r}")
    else:
        cometbft = answer.get("cometbft")
        if not isinstance(cometbft, dict) or not isinstance(cometbft.get("genesis"), dict):
            raise JoinError(f"{source}: cometbft.genesis missing")
        if cometbft["genesis"].get("chain_id") != genesis.chain_id:
            raise JoinError(f"{source}: the CometBFT genesis names another chain")
        _check_validators(genesis, cometbft["genesis"], source)
        _timeout_commit(cometbft, source)
        (home / CONSORTIUM_DIR).mkdir(exist_ok=True)
        genesis.save(home / CONSORTIUM_DIR / "genesis.json")
        save_consortium(
            home / CONSORTIUM_DIR,
            Consortium(
                chain_id=genesis.chain_id,
                engine=genesis.engine,
                hospitals=[*orgs, org],
                block_time_ms=block_time_ms,
            ),
        )
    peers = {
        str(m["org"]): f"https://{m['addresses']['gateway']}"
        for m in members
        if isinstance(m.get("addresses"), dict) and m["addresses"].get("gateway")
    }
    peers[org] = f"https://{addresses['gateway']}"
    config = HospitalConfig(
        home=home,
        org=org,
        name=str(request["name"]),
        chain_id=genesis.chain_id,
        engine=genesis.engine,
        consortium_dir=consortium_dir,
        block_time_ms=block_time_ms,
        api=ApiSection(listen=_listen(addresses.get("api", "127.0.0.1:0"), listen_all)),
        exchange=ExchangeSection(
            listen=_listen(addresses["gateway"], listen_all), tls=TLS_DIR, peers=peers
        ),
        vault=VaultSection(backend="sqlite", path="vault.db"),
    )
    if genesis.engine == "cometbft":
        section = _cometbft(home, org, addresses, answer["cometbft"], block_time_ms, listen_all)
        config = config.model_copy(update={"cometbft": section})
    save_config(config)
    return load_config(home)


def _solo_sandbox(home: Path, genesis: Genesis, sandbox: Path | None, source: str) -> str:
    """The solo sandbox folder on this machine whose ledger the home joins, as its config
    names it (relative to the home): a solo ledger is one file, so the home must be beside it
    (its producer serves it to this home's processes, consensus/solo_shared.py)."""
    if sandbox is None:
        raise JoinError(
            f"{source}: the consortium runs the solo engine, whose ledger is a file on the "
            "sandbox's machine: give --sandbox DIR, its folder on this machine (nothing written)"
        )
    try:
        theirs = Genesis.load(sandbox / "genesis.json")
    except (OSError, ValueError) as exc:
        raise JoinError(f"--sandbox: {sandbox / 'genesis.json'}: {exc}") from None
    if theirs.hash() != genesis.hash():
        raise JoinError(
            f"--sandbox: {sandbox / 'genesis.json'} is not the genesis of {source}: another "
            "consortium (nothing written)"
        )
    return os.path.relpath(sandbox.resolve(), home)


def params_warning(config: HospitalConfig) -> str:
    """The genesis's parameters that no contract knows, which every node's InitChain ignores
    before governance v6 (a misspelt name, say), or "": said, not refused, since the
    consortium runs with them. From v6 the genesis check refused them already (the node's
    InitChain would: `replayed_genesis_params`)."""
    from medledger.contracts import unknown_genesis_params

    unknown = unknown_genesis_params(config.genesis().params)
    if not unknown:
        return ""
    return (
        f"the genesis names parameters no contract knows, which the nodes ignore: "
        f"{', '.join(unknown)}"
    )


def p2p_warning(config: HospitalConfig, answer: dict[str, Any]) -> str:
    """Why the members' nodes would refuse this one, or "": they peer only with the node ids
    in members' `addresses.p2p` (filter_peers), and the answer lists the members' records."""
    node_id = config.cometbft.node_id or ""
    for m in answer.get("members", []):
        if isinstance(m, dict) and m.get("org") == config.org:
            p2p = str((m.get("addresses") or {}).get("p2p", ""))
            if p2p.split("@", 1)[0] != node_id:
                return (
                    f"the chain's record of {config.org} names p2p node {p2p or '(none)'}, "
                    f"this home's node is {node_id}: the members' nodes will refuse it until "
                    "the record names it (`medledger member update --address p2p=...`)"
                )
            return ""
    return f"{config.org} is not a member yet: the members' nodes refuse its node until admitted"


def _listen(address: str, listen_all: bool) -> str:
    """Where to listen for an announced `host:port`: there, or every interface, same port."""
    return f"0.0.0.0:{address.rpartition(':')[2]}" if listen_all else address


def _cometbft(
    home: Path,
    org: str,
    addresses: dict[str, str],
    cometbft: dict[str, Any],
    block_time_ms: int,
    listen_all: bool,
) -> CometbftSection:
    """The CometBFT home: p2p where the request says, RPC and ABCI on loopback (the ports a
    previous run chose are kept, so re-running leaves a running node where it is)."""
    from medledger.consensus.cometbft import testnet

    p2p = addresses.get("p2p", "")
    host, p2p_port = _split_host(p2p.split("@", 1)[-1], "p2p") if p2p else ("127.0.0.1", 0)
    rpc_host, rpc_port = _split_host(addresses["rpc"], "rpc") if "rpc" in addresses else ("", 0)
    before = _previous_ports(home)
    wanted = [p for p in (p2p_port, rpc_port, *before) if p]
    spare = iter(free_ports(4, set(wanted)))
    chosen = [p2p_port or before[0], rpc_port or before[1], before[2], before[3]]
    ports = [port or next(spare) for port in chosen]
    peers = [str(p) for p in cometbft.get("persistent_peers", []) if "@" in str(p)]
    mine = testnet.join_home(
        home / "cometbft",
        org,
        genesis=cometbft["genesis"],
        peers=[p for p in peers if p.split("@", 1)[1] != f"{host}:{ports[0]}"],
        ports=ports,
        block_time_ms=block_time_ms,
        host="0.0.0.0" if listen_all else host,
        external=host,
        rpc_host=rpc_host or "127.0.0.1",
        timeout_commit=_timeout_commit(cometbft, "the answer"),
    )
    return CometbftSection(
        home="cometbft",
        node_id=mine.node_id,
        p2p=mine.p2p,
        rpc=mine.rpc_url,
        abci=mine.abci,
        prometheus=f"127.0.0.1:{ports[3]}",
    )


def _previous_ports(home: Path) -> list[int]:
    """[p2p, rpc, abci, prometheus] ports of a config.json already written here (0: none)."""
    try:
        section = load_config(home).cometbft
    except ConfigError:
        return [0, 0, 0, 0]
    values = (section.p2p, section.rpc, section.abci, section.prometheus)
    found = [str(v or "").rsplit(":", 1)[-1] for v in values]
    return [int(p) if p.isdigit() else 0 for p in found]


class NotSynced(JoinError):
    """This home's replica cannot say yet whom to trust: no chain synced, or still catching up."""


def synced_tls_keys(config: HospitalConfig) -> dict[str, bytes]:
    """Whom this home trusts at TLS, {org: key}, from the chain state it verified: its own
    replica, caught up.

    Never the genesis: a member may have rotated its TLS key (a stolen one) or been removed
    since. The replica is the one the home's app keeps (block-synced from genesis, every block
    checked); on CometBFT, the node must say it is no longer catching up, else a key read
    could be one the chain has since replaced. `NotSynced` when it cannot say yet."""
    from medledger.contracts.governance import tls_keys
    from medledger.ledger.store import StateView, Store

    path = config.ledger_db
    start = "start the node (it block-syncs the chain) and run this again once it has caught up"
    if not path.exists():
        raise NotSynced(f"{path}: no replica of the chain yet: {start}")
    if config.engine == "cometbft":
        _require_caught_up(config, start)
    store = Store(path)
    try:
        return tls_keys(StateView(store))
    finally:
        store.close()


def synced_tls_key(config: HospitalConfig, org: str) -> bytes:
    """`org`'s TLS key in this home's synced replica (`synced_tls_keys`)."""
    pins = synced_tls_keys(config)
    if org not in pins:
        raise JoinError(
            f"{org or 'the gateway'} is not a member with a TLS key in this home's replica: "
            "ask a current member's gateway"
        )
    return pins[org]


def _require_caught_up(config: HospitalConfig, start: str) -> None:
    from medledger.consensus.cometbft.rpc import CometRpc, RpcError, RpcUnavailable

    url = config.cometbft.rpc or ""
    try:
        with CometRpc(url, timeout=5.0) as rpc:
            sync = rpc.status()["sync_info"]
    except (RpcUnavailable, RpcError, KeyError) as exc:
        raise NotSynced(f"CometBFT at {url or '(no rpc configured)'}: {exc}: {start}") from None
    if sync.get("catching_up", True):
        height = sync.get("latest_block_height", "?")
        raise NotSynced(f"the node is catching up (height {height}): {start}")


def fetch_pseudonym_key(config: HospitalConfig, from_url: str) -> bytes:
    """The consortium's pseudonym key from the member at `from_url`, written to the home.

    Over mTLS with this hospital's own key; the member's server is pinned to its `tls_key` in
    this home's synced replica (`synced_tls_key`; `NotSynced` before the node has caught up).
    The key arrives sealed to this hospital's box key; only a current member gets it.
    """
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    from medledger.exchange.pki import TlsFiles, client_context
    from medledger.exchange.signing import RequestSigner
    from medledger.host.secretfile import write_secret

    pins = synced_tls_keys(config)  # before asking anyone: whom to trust is ours to know
    answer = fetch_bootstrap(from_url)
    member = str(answer.get("org", ""))
    if member not in pins:
        raise JoinError(
            f"{from_url} is {member or 'unknown'}, not a member with a TLS key in this home's "
            f"replica: ask a current member's gateway, one of {sorted(pins)}"
        )
    ssl_context = client_context(TlsFiles(config.tls_dir), {member: pins[member]})
    path, body = "/exchange/v1/pseudonym-key", b"{}"
    headers = RequestSigner(config.org_key()).headers("POST", path, body, member)
    headers["content-type"] = "application/json"
    try:
        with httpx.Client(verify=ssl_context, timeout=15.0) as client:
            response = client.post(from_url.rstrip("/") + path, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise JoinError(f"{from_url}: unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        try:
            reason = str(response.json().get("error", response.text[:200]))
        except ValueError:
            reason = response.text[:200]
        raise JoinError(f"{member or from_url}: pseudonym key refused: {reason}")
    try:
        sealed = base64.b64decode(response.json()["sealed"], validate=True)
        key = SealedBox(PrivateKey(config.box_key())).decrypt(sealed)
    except (KeyError, ValueError, CryptoError):
        raise JoinError(f"{member}: the pseudonym key did not open with this box key") from None
    if len(key) != 32:
        raise JoinError(f"{member}: the pseudonym key is not 32 bytes")
    write_secret(config.home / "keys" / "pseudonym.key", key.hex() + "\n", overwrite=True)
    return key


def founders_pseudonym_key(config: HospitalConfig) -> str:
    """A founder's copy of the consortium's pseudonym key: made here by the first founder the
    genesis lists, fetched by the others from its gateway (sealed to their box key) once its
    node runs. What happened, in one line; `JoinError` while the first founder is not serving
    or this home's own node has not caught up (`NotSynced`)."""
    from medledger.host.secretfile import write_secret

    members = config.genesis().members
    first = members[0]
    if first.org == config.org:
        write_secret(config.home / "keys" / "pseudonym.key", os.urandom(32).hex() + "\n")
        return "pseudonym key made here (the first founder): the others fetch it from this node"
    gateway = first.addresses.get("gateway")
    if not gateway:
        raise JoinError(f"genesis: {first.org} (the first founder) has no gateway address")
    fetch_pseudonym_key(config, f"https://{gateway}")
    return f"pseudonym key received from {first.org} (sealed to this hospital's box key)"
