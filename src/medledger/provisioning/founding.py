"""Founding a consortium across machines: the genesis made from the founders' join requests.

    each founder:  medledger hospital keygen --home H --org ORG --address gateway=... p2p=...
    one of them:   medledger consortium genesis --chain-id ID --request a.json --request b.json
                       [--power org=N] --out genesis.json         (prints the genesis hash)
    each founder:  medledger join --home H --genesis genesis.json --genesis-hash HEX

`found` reads public join requests only (no private key is anywhere near the ceremony), checks
each (the bounds the chain applies, the addresses the others must dial) and refuses two
founders sharing an org, any key or an address, naming both files. What it writes is a
*founding file*: the same document a member's gateway answers at `/exchange/v1/bootstrap`
(exchange/bootstrap.py), so each founder's home is configured by the one `configure` code path
that `join --from` uses (provisioning/join.py). Its genesis hash is what the founders compare
out of band, as a joiner does.

The consortium's pseudonym key is not in it: the first founder listed makes it when it joins;
the others fetch it sealed to their box key from the first founder's gateway once its node
runs (`fetch_pseudonym_key`, docs/security.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.node.config import ConfigError
from medledger.provisioning.keygen import JoinRequest

#: Validator power of a founder no `--power` names.
DEFAULT_POWER = 10
#: Largest join request or founding file read.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: At most this many founders (a genesis of a few hundred members stays well under a block).
MAX_FOUNDERS = 64
KEY_FIELDS = ("key", "box_key", "tls_key", "validator_key")


def _read(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: over {MAX_FILE_BYTES} bytes: not a {what}")
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from None


def load_requests(paths: list[Path]) -> list[JoinRequest]:
    """The founders' requests, each checked, and no org, key or address held by two."""
    if not paths:
        raise ConfigError("--request: at least one founder's join request")
    if len(paths) > MAX_FOUNDERS:
        raise ConfigError(f"--request: at most {MAX_FOUNDERS} founders")
    requests: list[JoinRequest] = []
    seen: dict[str, tuple[str, Path]] = {}  # a value -> (what it is, the file that had it)
    for path in paths:
        request = JoinRequest.from_json(_read(path, "join request"), str(path))
        for kind in ("gateway", "p2p"):
            if kind not in request.addresses:
                raise ConfigError(
                    f"{path}: addresses.{kind}: missing (the other founders dial it; "
                    f"keygen --address {kind}=host:port)"
                )
        values = [("org", request.org)]
        values += [(name, getattr(request, name).hex()) for name in KEY_FIELDS]
        p2p = request.addresses["p2p"]
        values += [
            ("node id", p2p.split("@", 1)[0]),
            ("p2p address", p2p.split("@", 1)[1]),
            ("gateway address", request.addresses["gateway"]),
        ]
        for what, value in values:
            if value in seen:
                other_what, other = seen[value]
                raise ConfigError(
                    f"{path}: field {what}: the same as {other_what} in {other} "
                    "(each founder makes its own keys with `medledger hospital keygen`)"
                )
        seen.update({value: (what, path) for what, value in values})
        requests.append(request)
    return requests


#: What a consortium founded across machines (real patients, unlike a sandbox) starts with:
#: every study query noised, epsilon at least 0.1, and a study's whole budget at most 10
#: (docs/security.md, "A curious sponsor or member"), and a count-once link counted only
#: once the patient had 72 h to undo it; `params` overrides them.
FOUNDING_PARAMS: dict[str, int] = {
    "study_min_epsilon_milli": 100,
    "study_max_budget_milli": 10_000,
    "study_link_settle_ms": 3 * 24 * 3600 * 1000,
}


def found(
    requests: list[JoinRequest],
    *,
    chain_id: str,
    genesis_time_ms: int,
    block_time_ms: int = 1000,
    powers: dict[str, int] | None = None,
    engine: str = "cometbft",
    params: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The founding file's content: the genesis of these founders, bootstrap-shaped."""
    from medledger.consensus.cometbft import testnet
    from medledger.contracts import default_versions
    from medledger.provisioning.consortium import check_chain_id, check_params

    if engine != "cometbft":
        raise ConfigError(
            f"--engine: {engine!r}: founders on their own machines need CometBFT (a solo "
            "ledger lives in one process: `medledger init` makes that sandbox)"
        )
    check_chain_id(chain_id)
    check_params({**FOUNDING_PARAMS, **(params or {})})
    powers = dict(powers or {})
    orgs = [r.org for r in requests]
    for org, power in powers.items():
        if org not in orgs:
            raise ConfigError(f"--power {org}={power}: {org} is not among the founders {orgs}")
        if not 0 <= power <= 1_000_000:
            raise ConfigError(f"--power {org}={power}: between 0 and 1000000")
    members = [
        GenesisMember(
            org=r.org,
            name=r.name,
            key=r.key,
            validator_key=r.validator_key,
            power=powers.get(r.org, DEFAULT_POWER),
            box_key=r.box_key,
            tls_key=r.tls_key,
            addresses=dict(r.addresses),
        )
        for r in requests
    ]
    if not any(m.power for m in members):
        raise ConfigError("--power: at least one founder must validate (power > 0)")
    genesis = Genesis(
        chain_id=chain_id,
        time_ms=genesis_time_ms,
        members=members,
        engine=engine,
        params={**FOUNDING_PARAMS, **(params or {})},
        contracts=default_versions(),
    )
    cometbft = testnet.genesis_doc(
        chain_id,
        genesis_time_ms,
        [(m.org, m.validator_key, m.power) for m in members],
        testnet.default_consensus_params(),
    )
    saved = json.loads(json.dumps(genesis.to_obj(), default=bytes.hex))
    return {
        "org": "",  # made by the ceremony, not answered by a member
        "genesis": saved,
        "genesis_hash": genesis.hash().hex(),
        "chain_id": chain_id,
        "engine": engine,
        "block_time_ms": block_time_ms,
        "height": 0,
        "members": [
            {"org": m.org, "name": m.name, "addresses": m.addresses, "tls_key": m.tls_key.hex()}
            for m in members
        ],
        "cometbft": {
            "genesis": cometbft,
            "persistent_peers": [m.addresses["p2p"] for m in members],
        },
    }


def write_founding(path: Path, founding: dict[str, Any]) -> None:
    """Write the founding file (whole or not at all); refuse to overwrite one."""
    if path.exists():
        raise ConfigError(f"--out {path}: already exists (a genesis is made once)")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(founding, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_founding(path: Path) -> dict[str, Any]:
    """A founding file as `join --genesis` reads it (checked by `join.configure`)."""
    try:
        founding = json.loads(_read(path, "founding file"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--genesis {path}: invalid JSON at line {exc.lineno}: {exc.msg}"
        ) from None
    if not isinstance(founding, dict) or not isinstance(founding.get("genesis"), dict):
        raise ConfigError(
            f"--genesis {path}: not a founding file (made by `medledger consortium genesis`)"
        )
    return founding
