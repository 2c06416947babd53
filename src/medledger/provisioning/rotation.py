"""A member rotating its own keys: made beside the live ones, switched only once committed.

`medledger member update --rotate ...` stages each new key in `HOME/keys/next/`, sends the
member's own `governance.update_member` signed with its current key (a new signing key signs
its proof of possession), and only when the chain has the new keys moves them into place; the
old files go to `HOME/keys/retired/` (the old box key still opens what was sealed to it).

A crash at any point loses nothing: before the commit the live keys are untouched and the
staged ones are reused by the next run; after it, the next run sees the staged keys on the
chain and finishes the switch. A refused update removes what it staged.

    HOME/keys/next/org.key, box.key, tls/{key,cert}.pem, priv_validator_key.json,
                   node_key.json

`p2p` replaces the CometBFT node key: the members' CometBFTs peer only with the node ids their
records name (`filter_peers`), so a stolen node_key.json is read access to the chain until
rotated. The update names the new id in `addresses.p2p` (same host:port); the others' peer
lists still name the old id, so until they are updated only this node dials them.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medledger.contracts.governance import update_proof_message
from medledger.exchange import pki
from medledger.host.secretfile import read_hex_secret, write_secret
from medledger.ledger.keys import SigningKey
from medledger.node.config import ConfigError, HospitalConfig, save_config
from medledger.provisioning.keygen import (
    node_key_id,
    validator_public_key,
    write_node_key,
    write_validator_key,
)

KINDS = ("signing", "tls", "box", "validator", "p2p")
NEXT = Path("keys") / "next"
RETIRED = Path("keys") / "retired"
_FILES = {
    "signing": "org.key",
    "box": "box.key",
    "tls": "tls",
    "validator": "priv_validator_key.json",
    "p2p": "node_key.json",
}
_FIELD = {"signing": "key", "box": "box_key", "tls": "tls_key", "validator": "validator_key"}


@dataclass
class Rotation:
    """The keys staged for one update, and the update's body."""

    kinds: list[str]
    body: dict[str, Any] = field(default_factory=dict)
    node_id: str = ""  # the new CometBFT node id, when `p2p` is staged

    def on_chain(self, member: dict[str, Any]) -> bool:
        """Whether the member record already holds every staged key (the update committed)."""
        p2p = str((member.get("addresses") or {}).get("p2p", ""))
        return all(
            p2p.startswith(f"{self.node_id}@")
            if k == "p2p"
            else member.get(_FIELD[k]) == self.body[_FIELD[k]]
            for k in self.kinds
        )

    def addresses(self, current: dict[str, str]) -> dict[str, str]:
        """The member's addresses with the new node id in `p2p` (at the same host:port)."""
        if "p2p" not in self.kinds:
            return dict(current)
        if "p2p" not in current:
            raise ConfigError(
                "--rotate p2p: the chain holds no p2p address for this member: "
                "give --address p2p=host:port"
            )
        return {**current, "p2p": f"{self.node_id}@{current['p2p'].split('@', 1)[-1]}"}


def staged_kinds(home: Path) -> list[str]:
    """The keys a previous run staged and did not switch yet."""
    return [k for k in KINDS if (home / NEXT / _FILES[k]).exists()]


def _live(config: HospitalConfig, kind: str) -> Path:
    if kind == "signing":
        return config.org_key_path
    if kind == "box":
        return config.home / "keys" / "box.key"
    if kind == "tls":
        return config.tls_dir
    return config.home / config.cometbft.home / "config" / _FILES[kind]


def stage(config: HospitalConfig, kinds: list[str], old_key: bytes) -> Rotation:
    """Make (or reuse, after a crash) the new keys of `kinds` in keys/next."""
    from nacl.public import PrivateKey

    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"--rotate: unknown key {unknown[0]!r} (among {', '.join(KINDS)})")
    staging = config.home / NEXT
    staging.mkdir(parents=True, exist_ok=True)
    os.chmod(staging, 0o700)
    rotation = Rotation(kinds=[k for k in KINDS if k in kinds])
    body = rotation.body
    for kind in rotation.kinds:
        path = staging / _FILES[kind]
        if kind == "signing":
            if not path.exists():
                SigningKey.generate().save(path)
            key = SigningKey.from_file(path)
            body["key"] = key.public_key
            body["key_proof"] = key.sign(update_proof_message(config.org, old_key))
        elif kind == "box":
            if not path.exists():
                write_secret(path, bytes(PrivateKey.generate()).hex() + "\n")
            body["box_key"] = bytes(PrivateKey(read_hex_secret(path)).public_key)
        elif kind == "tls":
            files = pki.TlsFiles(path)
            if not files.key.exists():
                hosts = ("127.0.0.1", "localhost")  # as init's; the pin is the key, not a name
                pki.new_identity(path, config.org, hosts)
            body["tls_key"] = pki.identity_key(files)
        elif kind == "p2p":
            rotation.node_id = write_node_key(path) if not path.exists() else node_key_id(path)
        else:
            if not path.exists():
                write_validator_key(path)
            body["validator_key"] = validator_public_key(path)
    return rotation


def switch(config: HospitalConfig, rotation: Rotation) -> list[Path]:
    """Move the committed keys into place, the old ones to keys/retired; the live paths."""
    retired = config.home / RETIRED
    retired.mkdir(parents=True, exist_ok=True)
    os.chmod(retired, 0o700)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for kind in rotation.kinds:
        live, staged = _live(config, kind), config.home / NEXT / _FILES[kind]
        if live.exists():
            os.replace(live, retired / f"{live.name}.{stamp}")
        os.replace(staged, live)
        moved.append(live)
    if "p2p" in rotation.kinds:  # config.json names the node id the others should see
        cometbft = config.cometbft.model_copy(update={"node_id": rotation.node_id})
        save_config(config.model_copy(update={"cometbft": cometbft}))
    shutil.rmtree(config.home / NEXT, ignore_errors=True)
    return moved


def discard(config: HospitalConfig) -> None:
    """Drop staged keys the chain refused (never used anywhere)."""
    shutil.rmtree(config.home / NEXT, ignore_errors=True)
