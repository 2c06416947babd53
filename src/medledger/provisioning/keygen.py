"""A hospital's keys, made in its own home on its own machine, and the request to join.

`medledger hospital keygen` calls `keygen`: every private key is written under the home (mode
0600, folders 0700) and never leaves it; what the members need to vote it in is the public
part, `JoinRequest`, written to `HOME/join-request.json` for the operator to hand over.

    HOME/keys/org.key         Ed25519 signing key (the organisation's transactions)
    HOME/keys/box.key         X25519 key that opens metadata keys sealed to the hospital
    HOME/keys/vault.kek       the vault's key-encryption key
    HOME/keys/backup.key      32 random bytes (hex) that encrypt the replicas held by peers
    HOME/keys/tls/key.pem     TLS key (ECDSA P-256) and its certificate (exchange.pki)
    HOME/cometbft/config/priv_validator_key.json, node_key.json
                              the CometBFT validator and p2p keys (cometbft init keeps them),
                              with data/priv_validator_state.json
    HOME/join-request.json    the public part
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medledger.contracts.governance import MAX_NAME, check_addresses, check_tls_key
from medledger.exchange import pki
from medledger.host.secretfile import write_secret
from medledger.ledger.errors import TxError
from medledger.ledger.keys import SigningKey
from medledger.node.config import TLS_DIR, ConfigError

JOIN_REQUEST = "join-request.json"
CMT_DIR = "cometbft"
_ORG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEYS = ("key", "box_key", "tls_key", "validator_key")


@dataclass(frozen=True)
class JoinRequest:
    """The public part of a hospital's keys and its addresses: what the members vote on."""

    org: str
    name: str
    key: bytes
    box_key: bytes
    tls_key: bytes
    validator_key: bytes
    addresses: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        obj: dict[str, Any] = {"org": self.org, "name": self.name, "addresses": self.addresses}
        obj.update({k: getattr(self, k).hex() for k in _KEYS})
        return json.dumps(obj, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "join request") -> JoinRequest:
        """Parse a request; a missing or mistyped field is named with `where`."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        unknown = set(raw) - {"org", "name", "addresses", *_KEYS}
        if unknown:
            raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        values: dict[str, Any] = {}
        for name in ("org", "name"):
            if not isinstance(raw.get(name), str):
                raise ConfigError(f"{where}: field {name!r}: expected text")
            values[name] = raw[name]
        for name in _KEYS:
            try:
                values[name] = bytes.fromhex(str(raw.get(name, "")))
            except ValueError:
                raise ConfigError(f"{where}: field {name!r}: expected hex") from None
        addresses = raw.get("addresses", {})
        if not isinstance(addresses, dict) or not all(
            isinstance(v, str) for v in addresses.values()
        ):
            raise ConfigError(f"{where}: field 'addresses': expected a map of text")
        request = cls(addresses=dict(addresses), **values)
        request.check(where)
        return request

    def check(self, where: str = "join request") -> None:
        """The bounds the chain applies, checked before anyone signs a proposal."""
        if not _ORG.match(self.org):
            raise ConfigError(f"{where}: field 'org': {self.org!r} is not a valid id")
        if len(self.name) > MAX_NAME:
            raise ConfigError(f"{where}: field 'name': at most {MAX_NAME} characters")
        for name in ("key", "box_key", "validator_key"):
            if len(getattr(self, name)) != 32:
                raise ConfigError(f"{where}: field {name!r}: expected 32 bytes")
        try:
            check_tls_key(self.tls_key, "tls_key")
            check_addresses(self.addresses, "addresses")
        except TxError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None

    def member_args(self) -> dict[str, Any]:
        """The keys and addresses as governance's `admit_member`/`rebind_member` take them."""
        args: dict[str, Any] = {k: getattr(self, k) for k in _KEYS}
        args.update(org=self.org, addresses=dict(self.addresses))
        return args


def parse_addresses(items: list[str]) -> dict[str, str]:
    """`kind=host:port` options into a map (`--address gateway=10.0.0.5:7443`)."""
    found: dict[str, str] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"--address {item!r}: expected kind=host:port")
        if kind in found:
            raise ConfigError(f"--address: {kind} given twice")
        found[kind] = value
    return found


def _hosts(addresses: dict[str, str]) -> tuple[str, ...]:
    hosts = []
    for kind in ("gateway", "api"):
        if kind in addresses:
            host = addresses[kind].rsplit(":", 1)[0].strip("[]")
            if host not in hosts:
                hosts.append(host)
    return tuple(hosts)


def _tendermint_key(seed: bytes) -> tuple[str, bytes]:
    """(base64 of the 64-byte private key CometBFT stores, the 32-byte public key)."""
    public = SigningKey(seed).public_key
    return base64.b64encode(seed + public).decode(), public


def write_validator_key(path: Path) -> bytes:
    """Write a CometBFT validator key file (priv_validator_key.json) at `path`; its public key."""
    from medledger.consensus.cometbft import testnet

    private, public = _tendermint_key(secrets.token_bytes(32))
    validator = {
        "address": testnet.validator_address(public),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(public).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": private},
    }
    write_secret(path, json.dumps(validator, indent=2) + "\n")
    return public


def validator_public_key(path: Path) -> bytes:
    """The public key in a priv_validator_key.json."""
    key = json.loads(path.read_text())
    return base64.b64decode(key["pub_key"]["value"])


def write_node_key(path: Path) -> str:
    """Write a CometBFT p2p key file (node_key.json) at `path`; its node id."""
    private, _ = _tendermint_key(secrets.token_bytes(32))
    node_key = {"priv_key": {"type": "tendermint/PrivKeyEd25519", "value": private}}
    write_secret(path, json.dumps(node_key, indent=2) + "\n")
    return node_key_id(path)


def node_key_id(path: Path) -> str:
    """The node id of a node_key.json: SHA-256 of its public key, first 20 bytes, hex."""
    key = json.loads(path.read_text())
    private = base64.b64decode(key["priv_key"]["value"])
    return hashlib.sha256(private[32:]).digest()[:20].hex()


def write_cometbft_keys(cmt_home: Path) -> tuple[bytes, str]:
    """Write a CometBFT home's validator and p2p keys; (validator public key, node id)."""
    from medledger.consensus.cometbft import testnet

    config = cmt_home / "config"
    if (config / "priv_validator_key.json").exists():
        raise ConfigError(f"{config / 'priv_validator_key.json'}: a validator key is already here")
    config.mkdir(parents=True, exist_ok=True)
    os.chmod(cmt_home, 0o700)
    public = write_validator_key(config / "priv_validator_key.json")
    write_node_key(config / "node_key.json")
    (cmt_home / "data").mkdir(mode=0o700, exist_ok=True)  # the signer's last height (none yet)
    state = {"height": "0", "round": 0, "step": 0}
    write_secret(cmt_home / "data" / "priv_validator_state.json", json.dumps(state) + "\n")
    return public, testnet.node_id(cmt_home)


def keygen(home: Path, org: str, name: str, addresses: dict[str, str]) -> JoinRequest:
    """Make every private key of a new hospital in `home`; return (and write) its request.

    A `p2p` address given as host:port gets the node id of the new p2p key in front."""
    if not _ORG.match(org):
        raise ConfigError(f"--org: {org!r} is not a valid id (a-z, 0-9, '.', '_', '-')")
    if len(name) > MAX_NAME:
        raise ConfigError(f"--name: at most {MAX_NAME} characters")
    try:
        check_addresses({k: v for k, v in addresses.items() if k != "p2p"}, "--address")
    except TxError as exc:
        raise ConfigError(exc.message) from None
    keys = home / "keys"
    if keys.exists() or (home / "config.json").exists():
        raise ConfigError(f"{home}: already a hospital's home; keygen makes a new one")
    from nacl.public import PrivateKey

    from medledger.vault import create_kek_file

    keys.mkdir(parents=True)
    os.chmod(keys, 0o700)
    signing = SigningKey.generate()
    signing.save(keys / "org.key")
    box = PrivateKey.generate()
    write_secret(keys / "box.key", bytes(box).hex() + "\n")
    create_kek_file(keys / "vault.kek")
    write_secret(keys / "backup.key", secrets.token_bytes(32).hex() + "\n")
    tls_key = pki.new_identity(home / TLS_DIR, org, _hosts(addresses))
    validator_key, node_id = write_cometbft_keys(home / CMT_DIR)
    addresses = dict(addresses)
    if "p2p" in addresses and "@" not in addresses["p2p"]:
        addresses["p2p"] = f"{node_id}@{addresses['p2p']}"
    request = JoinRequest(
        org=org,
        name=name,
        key=signing.public_key,
        box_key=bytes(box.public_key),
        tls_key=tls_key,
        validator_key=validator_key,
        addresses=addresses,
    )
    request.check("keygen")
    (home / JOIN_REQUEST).write_text(request.to_json())
    return request
