"""The consortium's genesis: chain id, time, founding members, parameters, active contracts.

Stored as JSON (bytes in hex) so a DPO or an auditor can read it; hashed as canonical CBOR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medledger.ledger import codec


@dataclass(frozen=True)
class GenesisMember:
    org: str
    name: str
    key: bytes  # the hospital's Ed25519 organisation key
    validator_key: bytes = b""  # its consensus (CometBFT) Ed25519 key, if it validates
    power: int = 0
    box_key: bytes = b""  # X25519 key for sealed metadata keys
    tls_key: bytes = b""  # DER public key of its TLS key (ECDSA P-256): what peers pin
    addresses: dict[str, str] = field(default_factory=dict)  # gateway, api, p2p, rpc

    def to_obj(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "name": self.name,
            "key": self.key,
            "validator_key": self.validator_key,
            "power": self.power,
            "box_key": self.box_key,
            "tls_key": self.tls_key,
            "addresses": dict(self.addresses),
        }


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    time_ms: int
    members: list[GenesisMember]
    engine: str = "solo"
    solo_key: bytes = b""  # the solo block producer's key (solo engine only)
    params: dict[str, Any] = field(default_factory=dict)
    contracts: dict[str, int] = field(default_factory=dict)

    def to_obj(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "time": self.time_ms,
            "members": [m.to_obj() for m in self.members],
            "engine": self.engine,
            "solo_key": self.solo_key,
            "params": self.params,
            "contracts": self.contracts,
        }

    def hash(self) -> bytes:
        return codec.sha256(codec.encode(self.to_obj()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(_to_json(self.to_obj()), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read genesis: {exc}") from None
        try:
            members = [
                GenesisMember(
                    org=m["org"],
                    name=m["name"],
                    key=bytes.fromhex(m["key"]),
                    validator_key=bytes.fromhex(m.get("validator_key", "")),
                    power=int(m.get("power", 0)),
                    box_key=bytes.fromhex(m.get("box_key", "")),
                    tls_key=bytes.fromhex(m.get("tls_key", "")),
                    addresses={str(k): str(v) for k, v in m.get("addresses", {}).items()},
                )
                for m in raw["members"]
            ]
            return cls(
                chain_id=raw["chain_id"],
                time_ms=int(raw["time"]),
                members=members,
                engine=raw.get("engine", "solo"),
                solo_key=bytes.fromhex(raw.get("solo_key", "")),
                params=dict(raw.get("params", {})),
                contracts={k: int(v) for k, v in raw.get("contracts", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: genesis field missing or invalid: {exc}") from None


def _to_json(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    return obj
