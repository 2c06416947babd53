"""Governance: the consortium decides together, at two thirds of its members.

A member proposes an action; members vote; the vote that reaches 2/3 of the current members
executes it in the same tx. A proposal that more than 1/3 reject can never pass and is closed
as rejected; one not decided by its expiry can no longer be voted on.

Versions: v2 (the default of a new consortium) counts a member being rebound in the total of
its own rebinding, as an admission counts every member (its own vote stays impossible: its
key is lost), and a rebinding retires the practitioner keys the org registered
(`REBIND_HOOKS`: identity's). v1 counted the others only and retired nothing: chains started
under v1 replay as they were until their members vote `activate_contract governance 2`.
v3 bounds some parameters (`param_bounds`); v4 keeps `escrow_threshold` at most
`escrow_shares` (`param_conflict`), at the proposal and at the vote that executes it.
v5 holds a genesis's parameters to the rule of a vote at InitChain (`genesis_params`, and
policies' too); before v5 they went into the state as given, so a chain founded before session
11 replays its genesis as it was. v6 (new consortia, session 14) also refuses a genesis name
neither contract knows (policies.genesis_params); before v6 such a name is ignored, so a v5
chain replays as it did.

Bounds: a proposal's `note` (free text for the other members, on the chain for ever) is at
most `MAX_NOTE` characters and a member's display `name` at most `MAX_NAME`; every other
argument is an id, a key, a number, an address (`MAX_ADDRESS`) or a Cedar text
(policies.MAX_POLICY_TEXT).

Identities: a member's record holds every public key it is known by (signing `key`, `box_key`,
`tls_key`, `validator_key`) and its `addresses`. Its TLS key is what peers pin (no consortium
CA: whoever holds the state knows whom to trust). A member rotates its own keys with its own
signed `update_member` (a new signing key proves possession); one whose keys were lost is
rebound by a 2/3 vote of the members (`rebind_member`), keeping its org id and everything under
it.
No key of any kind is shared by two members.

State (prefix `gov/`):
    gov/member/<org>        the member: name, keys, addresses, validator power
    gov/key/<key hex>       organisation key -> org (signer lookup)
    gov/proposal/<id>       proposal with its votes and status
    gov/seq                 last proposal number
    gov/params              consortium parameters (proposal lifetime, ...)
    gov/contract/<name>     the active version of each contract

Only this module spells these keys; the other contracts ask `is_member`, `member`,
`member_of_key`, `require_member` and `members`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

from medledger.contracts.common import DAY_MS, check_id
from medledger.ledger.contract import (
    Context,
    Contract,
    Message,
    active_key,
    parse_message,
)
from medledger.ledger.errors import Code, TxError
from medledger.ledger.genesis import Genesis
from medledger.ledger.keys import verify
from medledger.ledger.results import ValidatorUpdate
from medledger.ledger.store import StateView

MAX_NOTE = 500
MAX_NAME = 100
MAX_TLS_KEY = 200
MAX_ADDRESS = 120
ADDRESS_KINDS = ("gateway", "api", "p2p", "rpc")
UPDATE_PROOF_DOMAIN = b"medledger/update-member/v1"

# DER SubjectPublicKeyInfo of an uncompressed ECDSA P-256 key: this header, then 0x04 || X || Y.
_P256_SPKI_HEADER = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
# X25519 public keys of small order (libsodium's list, top bit ignored): anything sealed to one
# fails, so a member with such a box key would make every escrow it holds a share of fail.
_SMALL_ORDER_X25519 = frozenset(
    bytes.fromhex(h)
    for h in (
        "00" * 32,
        "01" + "00" * 31,
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    )
)
# P-256's prime and curve constant b (y^2 = x^3 - 3x + b mod p; FIPS 186-4, D.1.2.3).
_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_HOST_PORT = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,98}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}\Z"
)
_NODE_ID = re.compile(r"^[0-9a-f]{40}@")


# -- the membership every contract reads (governance alone spells its keys) ----------------


def _member_key(org: str) -> str:
    return f"gov/member/{org}"


def _org_key(key: bytes) -> str:
    return f"gov/key/{key.hex()}"


def member(state: StateView, org: str) -> dict[str, Any] | None:
    """A current member's record (name, keys, power), or None."""
    found: dict[str, Any] | None = state.get(_member_key(org))
    return found


def is_member(state: StateView, org: str) -> bool:
    return state.has(_member_key(org))


def member_of_key(state: StateView, key: bytes) -> str | None:
    """The org id whose organisation key this is, if it is a current member."""
    org = state.get(_org_key(key))
    if org is None:
        return None
    return str(org) if is_member(state, str(org)) else None


def require_member(ctx: Context) -> str:
    org = member_of_key(ctx.state, ctx.signer)
    if org is None:
        raise TxError(Code.UNAUTHORIZED, "signer is not a member hospital's organisation key")
    return org


def members(state: StateView) -> list[dict[str, Any]]:
    return [m for _, m in state.scan("gov/member/")]


def tls_keys(state: StateView) -> dict[str, bytes]:
    """Who is trusted at TLS: {org: DER public key} of the current members that have one."""
    return {m["org"]: bytes(m["tls_key"]) for m in members(state) if m.get("tls_key")}


def p2p_node_id(member: dict[str, Any]) -> str | None:
    """The CometBFT node id in a member's `addresses.p2p` (`<node id>@host:port`), if any."""
    p2p = str((member.get("addresses") or {}).get("p2p", ""))
    return p2p[:40] if _NODE_ID.match(p2p) else None


def member_of_node(state: StateView, node_id: str) -> str | None:
    """The current member whose p2p address carries this CometBFT node id, if any: whom a
    node peers with (CometBFT's `filter_peers` asks, the ledger answers from this)."""
    for m in members(state):
        if p2p_node_id(m) == node_id:
            return str(m["org"])
    return None


def update_proof_message(org: str, old_key: bytes) -> bytes:
    """What a new signing key signs to show it is held by the member taking it."""
    return UPDATE_PROOF_DOMAIN + org.encode() + old_key


# Other contracts that bind signing keys (identity's practitioners) say whose a key is, so a
# member never takes a key already in use: key -> a description of its holder, or None.
KEY_CLAIMS: list[Callable[[StateView, bytes], str | None]] = []
# Other contracts' share of a rebinding (v2): called with the context and the rebound org
# once its new keys are stored (identity retires the practitioner keys of the lost machine).
REBIND_HOOKS: list[Callable[[Context, str], None]] = []


def contract_version(state: StateView, name: str) -> int:
    """The version of contract `name` that this chain runs (set at genesis, or by a vote)."""
    return int(state.get(active_key(name)) or 0)


DEFAULT_PARAMS: dict[str, int] = {
    "proposal_ttl_ms": 7 * DAY_MS,
    "max_validator_power": 100,
    "escrow_shares": 3,  # n: peers holding a share of each member's keys (contracts/escrow)
    "escrow_threshold": 2,  # k: shares that rebuild them
    # Encrypted vault replicas (node/replicas.py): how many peers hold each member's, and
    # how much each member may keep at one peer (custody.db).
    "backup_replicas": 2,
    "custody_quota_mb": 4096,
    # Days a peer keeps what a member dropped or replaced in its custody (the member's key
    # may be a thief's until the rebinding vote), counted in the quota (node/custody.py).
    "custody_grace_days": 30,
    # Study queries (contracts/research_queries.py): the smallest cell published, whether
    # every member's DPO approves a query too, and how long the answerers have.
    "study_min_cell": 5,
    "study_dpo_approval": 1,
    "study_answer_ttl_ms": DAY_MS,
    # The least epsilon x 1000 a study query may have. Without noise, suppression protects
    # nobody: the answers on the chain sum to the exact cells, and two published results
    # subtract (docs/security.md). 0 allows exact queries (a sandbox); a consortium founded
    # across machines starts at 100 (provisioning/founding.py).
    "study_min_epsilon_milli": 0,
    # The most epsilon x 1000 a sponsor may give its study (research.register v2): the
    # budget is what stops averaging repeated queries, so the members bound it, not the
    # sponsor alone. 100000 (research_queries.MAX_BUDGET_MILLI) bounds nothing more.
    "study_max_budget_milli": 100_000,
}
#: Parameters with bounds of their own, checked when a vote sets one.
PARAM_RANGES: dict[str, tuple[int, int]] = {
    "study_min_cell": (2, 1000),
    "study_dpo_approval": (0, 1),
    "study_answer_ttl_ms": (60_000, 30 * DAY_MS),
    "study_min_epsilon_milli": (0, 10_000),  # study_query.MAX_EPSILON
    "study_max_budget_milli": (0, 100_000),  # research_queries.MAX_BUDGET_MILLI
}
#: Governance v3 (review 9): bounds on parameters v1/v2 took at any value >= 0. A
#: proposal_ttl_ms of 0 (or a few seconds) expired every later proposal before a second
#: member could vote: one vote froze governance for good, this very parameter included. An
#: escrow_threshold under 2 or over escrow.MAX_HOLDERS made every escrow refused.
PARAM_RANGES_V3: dict[str, tuple[int, int]] = {
    "proposal_ttl_ms": (3_600_000, 365 * DAY_MS),
    "escrow_threshold": (2, 16),  # escrow.MAX_HOLDERS
    "escrow_shares": (2, 16),
}
#: records.MAX_REPLICAS: the peers one erasure attestation may name.
MAX_BACKUP_REPLICAS = 16
#: custody_grace_days: at least a day for the members to vote a rebinding, at most a year.
GRACE_DAYS = (1, 365)


#: Governance v4 (session 10): pairs of parameters a vote may not cross, (low, high): the
#: value of `low` may not exceed that of `high`. Each alone within its bounds, a threshold
#: above the shares made every escrowed key unrecoverable (escrow refused it only when used).
PARAM_ORDER_V4: tuple[tuple[str, str], ...] = (("escrow_threshold", "escrow_shares"),)


def param_conflict(name: str, value: int, current: dict[str, int], version: int) -> str:
    """Why setting `name` to `value` would break a rule tying it to another parameter's
    `current` value under `version` of this contract ("" when none): what `validate`
    checks at the proposal and again at the vote that executes it (two proposals, each
    valid alone, could otherwise cross), and the CLI before proposing."""
    if version < 4 or not any(name in pair for pair in PARAM_ORDER_V4):
        return ""
    after = {**DEFAULT_PARAMS, **current, name: value}
    for low, high in PARAM_ORDER_V4:
        if after[low] > after[high]:
            return (
                f"{low} would be {after[low]} and {high} {after[high]}: {low} may not exceed {high}"
            )
    return ""


def param_bounds(name: str, version: int = 3) -> tuple[int, int | None]:
    """The values a `set_param` vote may give parameter `name` (None: no upper bound) under
    `version` of this contract: what `validate` checks, and the CLI names before proposing,
    so that a mistake costs no proposal. KeyError for a parameter that does not exist."""
    if name not in DEFAULT_PARAMS:
        raise KeyError(name)
    if version >= 3 and name in PARAM_RANGES_V3:
        return PARAM_RANGES_V3[name]
    if name in PARAM_RANGES:
        return PARAM_RANGES[name]
    if name == "backup_replicas":
        return (0, MAX_BACKUP_REPLICAS)
    if name == "custody_grace_days":
        return GRACE_DAYS
    return (0, None)


def param_problem(name: str, value: int, current: dict[str, int], version: int) -> str:
    """Why parameter `name` may not be `value` under `version` of this contract, the others
    being `current` ("" when it may): its bounds (`param_bounds`) and the pairs it may not
    cross (`param_conflict`). The one rule of a `set_param` vote and of a genesis."""
    if value < 0:
        return "must not be negative"
    if name == "backup_replicas" and value > MAX_BACKUP_REPLICAS:
        return (
            f"backup_replicas is at most {MAX_BACKUP_REPLICAS} (an erasure's attestation names "
            "them all)"
        )
    if name == "custody_grace_days" and not GRACE_DAYS[0] <= value <= GRACE_DAYS[1]:
        return (
            f"custody_grace_days is {GRACE_DAYS[0]} to {GRACE_DAYS[1]} (a thief's drops must "
            "outlast the rebinding vote; the trash counts in the quota)"
        )
    low, high = param_bounds(name, version)
    if not low <= value <= (value if high is None else high):
        return f"{name} is {low} to {high}"
    return param_conflict(name, value, current, version)


#: The governance version from which a genesis's parameters meet the rule of a vote.
GENESIS_RULE_VERSION = 5
#: The governance version from which a genesis naming a parameter no contract knows is refused
#: (a misspelt setting would look applied and not be); before it the name is ignored.
GENESIS_NAMES_VERSION = 6


def genesis_params(given: dict[str, Any], version: int) -> dict[str, int]:
    """The governance parameters among a genesis's `given` ones, each an integer that a vote
    under `version` could set, the pairs not crossed (`param_problem`); TxError naming the
    first that is not. Parameters of other contracts (policies) are left to them. Before
    `GENESIS_RULE_VERSION` each is taken as given (`as_given`), as older chains replay."""
    if version < GENESIS_RULE_VERSION:
        return as_given(given, DEFAULT_PARAMS)
    found: dict[str, int] = {}
    for name, value in sorted(given.items()):
        if name not in DEFAULT_PARAMS:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TxError(Code.INVALID_BODY, f"field params.{name}: an integer expected")
        found[name] = value
    for name, value in found.items():
        problem = param_problem(name, value, found, version)
        if problem:
            raise TxError(Code.INVALID_BODY, f"field params.{name}: {problem}")
    return found


def as_given(given: dict[str, Any], known: Container[str]) -> dict[str, int]:
    """A genesis's parameters among `known`, each as int() takes it (no bounds): the rule
    before `GENESIS_RULE_VERSION`; TxError naming one int() cannot read."""
    found: dict[str, int] = {}
    for name, value in given.items():
        if name in known:
            try:
                found[name] = int(value)
            except (TypeError, ValueError):
                raise TxError(
                    Code.INVALID_BODY, f"field params.{name}: an integer expected"
                ) from None
    return found


# -- actions a proposal can carry ---------------------------------------------------------


@dataclass
class AdmitMember:
    org: str
    name: str
    key: bytes
    validator_key: bytes = b""
    power: int = 0
    box_key: bytes = b""
    tls_key: bytes = b""
    addresses: dict[str, str] = field(default_factory=dict)


@dataclass
class RebindMember:
    """New keys for a member that lost its own (voted; the member itself does not count)."""

    org: str
    key: bytes
    box_key: bytes = b""
    tls_key: bytes = b""
    validator_key: bytes = b""
    addresses: dict[str, str] = field(default_factory=dict)


@dataclass
class RemoveMember:
    org: str


@dataclass
class SetPower:
    org: str
    power: int


@dataclass
class ActivateContract:
    name: str
    version: int


@dataclass
class SetParam:
    name: str
    value: int


ACTIONS: dict[str, type[Any]] = {
    "admit_member": AdmitMember,
    "remove_member": RemoveMember,
    "rebind_member": RebindMember,
    "set_power": SetPower,
    "activate_contract": ActivateContract,
    "set_param": SetParam,
}

# Other contracts may add actions (e.g. `set_policy`): name -> (args class, validate, apply).
ActionHooks = tuple[type[Any], Callable[[StateView, Any], None], Callable[[Context, Any], None]]
EXTRA_ACTIONS: dict[str, ActionHooks] = {}


# -- messages ------------------------------------------------------------------------------


@dataclass
class Propose:
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Vote:
    proposal: int
    approve: bool


@dataclass
class UpdateMember:
    """A member's own change of its keys or addresses; an empty field stays as it is.

    `addresses`, when given, replaces the whole map. A new signing `key` comes with
    `key_proof`, its signature over `update_proof_message(org, old key)`."""

    key: bytes = b""
    key_proof: bytes = b""
    box_key: bytes = b""
    tls_key: bytes = b""
    validator_key: bytes = b""
    addresses: dict[str, str] | None = None


def params(state: StateView) -> dict[str, int]:
    stored = state.get("gov/params") or {}
    return {**DEFAULT_PARAMS, **stored}


def _validator_update(ctx: Context, member: dict[str, Any], power: int) -> None:
    if member.get("validator_key"):
        ctx.validator_updates.append(ValidatorUpdate(member["validator_key"], power))


def check_tls_key(tls_key: bytes, where: str) -> None:
    """A TLS key on the chain is the DER SubjectPublicKeyInfo of an ECDSA P-256 key."""
    if len(tls_key) > MAX_TLS_KEY:
        raise TxError(Code.INVALID_BODY, f"field {where}: at most {MAX_TLS_KEY} bytes")
    if (
        len(tls_key) != len(_P256_SPKI_HEADER) + 65
        or not tls_key.startswith(_P256_SPKI_HEADER)
        or tls_key[len(_P256_SPKI_HEADER)] != 0x04
    ):
        raise TxError(
            Code.INVALID_BODY, f"field {where}: expected the DER public key of an ECDSA P-256 key"
        )
    point = tls_key[len(_P256_SPKI_HEADER) + 1 :]
    x, y = int.from_bytes(point[:32], "big"), int.from_bytes(point[32:], "big")
    # Every node loads every pin at each handshake: a point off the curve must not get in.
    if not (x < _P256_P and y < _P256_P and (y * y - x * x * x + 3 * x - _P256_B) % _P256_P == 0):
        raise TxError(Code.INVALID_BODY, f"field {where}: not a point of the P-256 curve")


def check_addresses(addresses: dict[str, str], where: str) -> None:
    """Keys among ADDRESS_KINDS; `host:port`, and `p2p` as `<node id>@host:port`."""
    for kind, value in addresses.items():
        if kind not in ADDRESS_KINDS:
            raise TxError(
                Code.INVALID_BODY, f"field {where}: unknown address {kind!r} {ADDRESS_KINDS}"
            )
        if len(value) > MAX_ADDRESS:
            raise TxError(Code.INVALID_BODY, f"field {where}.{kind}: at most {MAX_ADDRESS} chars")
        host_port = value
        if kind == "p2p":
            if not _NODE_ID.match(value):
                raise TxError(Code.INVALID_BODY, f"field {where}.p2p: expected <node id>@host:port")
            host_port = value[41:]
        port = host_port.rsplit(":", 1)[-1]
        if not _HOST_PORT.match(host_port) or not 0 < int(port) < 65536:
            raise TxError(Code.INVALID_BODY, f"field {where}.{kind}: expected host:port")


def _check_keys(
    state: StateView,
    org: str,
    where: str,
    *,
    key: bytes = b"",
    box_key: bytes = b"",
    tls_key: bytes = b"",
    validator_key: bytes = b"",
) -> None:
    """Shapes of the given keys, and none already held by another member (or a practitioner)."""
    for name, value in (("key", key), ("box_key", box_key), ("validator_key", validator_key)):
        if value and len(value) != 32:
            raise TxError(Code.INVALID_BODY, f"field {where}{name}: must be 32 bytes")
    if box_key and box_key[:31] + bytes([box_key[31] & 0x7F]) in _SMALL_ORDER_X25519:
        raise TxError(Code.INVALID_BODY, f"field {where}box_key: an X25519 key of small order")
    if tls_key:
        check_tls_key(tls_key, f"{where}tls_key")
    given = {"key": key, "box_key": box_key, "tls_key": tls_key, "validator_key": validator_key}
    for other in members(state):
        if other["org"] == org:
            continue
        for name, value in given.items():
            if value and other.get(name) == value:
                raise TxError(Code.CONFLICT, f"field {where}{name}: this key belongs to a member")
    if key:
        for claim in KEY_CLAIMS:
            holder = claim(state, key)
            if holder is not None:
                raise TxError(Code.CONFLICT, f"field {where}key: already the key of {holder}")


def _validate_action(ctx: Context, action: str, args: dict[str, Any]) -> Any:
    """Check the action's arguments at proposal time, so that members vote on something valid."""
    state = ctx.state
    if action in EXTRA_ACTIONS:
        extra_cls, validate, _ = EXTRA_ACTIONS[action]
        extra = parse_message(extra_cls, args)
        validate(state, extra)
        return extra
    action_cls = ACTIONS.get(action)
    if action_cls is None:
        known = sorted([*ACTIONS, *EXTRA_ACTIONS])
        raise TxError(Code.INVALID_BODY, f"field action: unknown action {action!r} ({known})")
    parsed = parse_message(action_cls, args)
    limit = params(state)["max_validator_power"]
    if isinstance(parsed, AdmitMember):
        check_id(parsed.org, "args.org")
        if len(parsed.name) > MAX_NAME:
            raise TxError(Code.INVALID_BODY, f"field args.name: at most {MAX_NAME} characters")
        if state.has(_member_key(parsed.org)):
            raise TxError(Code.CONFLICT, f"{parsed.org} is already a member")
        if len(parsed.key) != 32:
            raise TxError(Code.INVALID_BODY, "field args.key: must be a 32-byte Ed25519 key")
        if state.has(_org_key(parsed.key)):
            raise TxError(Code.CONFLICT, "field args.key: this key already belongs to a member")
        _check_keys(
            state,
            parsed.org,
            "args.",
            key=parsed.key,
            box_key=parsed.box_key,
            tls_key=parsed.tls_key,
            validator_key=parsed.validator_key,
        )
        check_addresses(parsed.addresses, "args.addresses")
        if not 0 <= parsed.power <= limit:
            raise TxError(Code.INVALID_BODY, f"field args.power: must be 0..{limit}")
        if parsed.power and not parsed.validator_key:
            raise TxError(Code.INVALID_BODY, "field args.power: a validator needs validator_key")
    elif isinstance(parsed, RebindMember):
        if not state.has(_member_key(parsed.org)):
            raise TxError(Code.NOT_FOUND, f"field args.org: {parsed.org} is not a member")
        if member_of_key(state, ctx.signer) == parsed.org:
            raise TxError(
                Code.REFUSED,
                "field args.org: a member changes its own keys with update_member",
            )
        total = len(members(state))
        if contract_version(state, "governance") >= 2 and (total - 1) * 3 < total * 2:
            raise TxError(
                Code.REFUSED,
                f"field args.org: two thirds of {total} members cannot be reached without "
                f"{parsed.org}'s own vote",
            )
        if len(parsed.key) != 32:
            raise TxError(Code.INVALID_BODY, "field args.key: must be a 32-byte Ed25519 key")
        _check_keys(
            state,
            parsed.org,
            "args.",
            key=parsed.key,
            box_key=parsed.box_key,
            tls_key=parsed.tls_key,
            validator_key=parsed.validator_key,
        )
        check_addresses(parsed.addresses, "args.addresses")
        if state.get(_member_key(parsed.org)).get("power") and not parsed.validator_key:
            raise TxError(
                Code.INVALID_BODY,
                "field args.validator_key: the member validates; give its new key",
            )
    elif isinstance(parsed, RemoveMember | SetPower):
        if not state.has(_member_key(parsed.org)):
            raise TxError(Code.NOT_FOUND, f"{parsed.org} is not a member")
        if isinstance(parsed, RemoveMember) and len(members(state)) <= 1:
            raise TxError(Code.REFUSED, "the last member cannot be removed")
        if isinstance(parsed, SetPower) and not 0 <= parsed.power <= limit:
            raise TxError(Code.INVALID_BODY, f"field args.power: must be 0..{limit}")
    elif isinstance(parsed, ActivateContract):
        if ctx.registry is None or ctx.registry.get(parsed.name, parsed.version) is None:
            raise TxError(
                Code.NOT_FOUND, f"no contract {parsed.name!r} version {parsed.version} is known"
            )
    elif isinstance(parsed, SetParam):
        if parsed.name not in DEFAULT_PARAMS:
            raise TxError(Code.INVALID_BODY, f"field args.name: unknown parameter {parsed.name!r}")
        problem = param_problem(
            parsed.name, parsed.value, params(state), contract_version(state, "governance")
        )
        if problem:
            raise TxError(Code.INVALID_BODY, f"field args.value: {problem}")
    return parsed


def _apply(ctx: Context, action: str, parsed: Any) -> None:
    state = ctx.state
    if action in EXTRA_ACTIONS:
        EXTRA_ACTIONS[action][2](ctx, parsed)
        return
    if isinstance(parsed, AdmitMember):
        member = {
            "org": parsed.org,
            "name": parsed.name,
            "key": parsed.key,
            "validator_key": parsed.validator_key,
            "power": parsed.power,
            "box_key": parsed.box_key,
            "tls_key": parsed.tls_key,
            "addresses": parsed.addresses,
            "since": ctx.time_ms,
        }
        state.put(_member_key(parsed.org), member)
        state.put(_org_key(parsed.key), parsed.org)
        if parsed.power:
            _validator_update(ctx, member, parsed.power)
        ctx.emit("member.admitted", org=parsed.org)
    elif isinstance(parsed, RebindMember):
        old = state.get(_member_key(parsed.org))
        new = {
            **old,
            "key": parsed.key,
            "box_key": parsed.box_key,
            "tls_key": parsed.tls_key,
            "validator_key": parsed.validator_key,
            "addresses": parsed.addresses,
        }
        _rekey(ctx, old, new)
        ctx.emit("member.rebound", org=parsed.org)
        if contract_version(state, "governance") >= 2:
            for hook in REBIND_HOOKS:
                hook(ctx, parsed.org)
    elif isinstance(parsed, RemoveMember):
        member = state.get(_member_key(parsed.org))
        state.delete(_member_key(parsed.org))
        state.delete(_org_key(member["key"]))
        if member.get("power"):
            _validator_update(ctx, member, 0)
        ctx.emit("member.removed", org=parsed.org)
    elif isinstance(parsed, SetPower):
        member = state.get(_member_key(parsed.org))
        if parsed.power and not member.get("validator_key"):
            raise TxError(Code.REFUSED, f"{parsed.org} has no validator key")
        member["power"] = parsed.power
        state.put(_member_key(parsed.org), member)
        _validator_update(ctx, member, parsed.power)
        ctx.emit("member.power", org=parsed.org, power=parsed.power)
    elif isinstance(parsed, ActivateContract):
        state.put(active_key(parsed.name), parsed.version)
        ctx.emit("contract.activated", name=parsed.name, version=parsed.version)
    elif isinstance(parsed, SetParam):
        stored = state.get("gov/params") or {}
        stored[parsed.name] = parsed.value
        state.put("gov/params", stored)
        ctx.emit("param.set", name=parsed.name, value=parsed.value)


def _rekey(ctx: Context, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Store a member's new keys: the old signing key stops naming it, the power moves."""
    state = ctx.state
    if new["key"] != old["key"]:
        state.delete(_org_key(old["key"]))
        state.put(_org_key(new["key"]), new["org"])
    power = int(old.get("power") or 0)
    if power and new["validator_key"] != old.get("validator_key"):
        _validator_update(ctx, old, 0)
        _validator_update(ctx, new, power)
    state.put(_member_key(new["org"]), new)


def _tally(state: StateView, proposal: dict[str, Any]) -> tuple[int, int, int]:
    """(approvals, rejections, members), counting only current members' votes.

    A member being rebound has no vote on its own rebinding: whoever holds its lost key could
    otherwise vote to keep it. It still counts in the total (v2), as every member does in an
    admission: moving an org's identity, replicas and escrowed keys to new hands takes as many
    votes as making a member (v1 left it out of the total: two of four members sufficed)."""
    current = {m["org"] for m in members(state)}
    voters = set(current)
    if proposal["action"] == "rebind_member":
        voters.discard(proposal["args"].get("org"))
        if contract_version(state, "governance") < 2:
            current = voters
    votes: dict[str, bool] = proposal["votes"]
    approvals = sum(1 for org, yes in votes.items() if yes and org in voters)
    rejections = sum(1 for org, yes in votes.items() if not yes and org in voters)
    return approvals, rejections, len(current)


def _settle(ctx: Context, pid: int, proposal: dict[str, Any]) -> None:
    approvals, rejections, total = _tally(ctx.state, proposal)
    if approvals * 3 >= total * 2:
        parsed = _validate_action(ctx, proposal["action"], proposal["args"])
        _apply(ctx, proposal["action"], parsed)
        proposal["status"] = "executed"
        proposal["decided"] = ctx.time_ms
        ctx.emit("proposal.executed", id=pid, action=proposal["action"])
    elif rejections * 3 > total:
        proposal["status"] = "rejected"
        proposal["decided"] = ctx.time_ms
        ctx.emit("proposal.rejected", id=pid)
    ctx.state.put(f"gov/proposal/{pid}", proposal)


def propose(ctx: Context, msg: Propose) -> None:
    org = require_member(ctx)
    if len(msg.note) > MAX_NOTE:
        raise TxError(Code.INVALID_BODY, f"field note: at most {MAX_NOTE} characters")
    _validate_action(ctx, msg.action, msg.args)
    pid = (ctx.state.get("gov/seq") or 0) + 1
    ctx.state.put("gov/seq", pid)
    proposal = {
        "id": pid,
        "proposer": org,
        "action": msg.action,
        "args": msg.args,
        "note": msg.note,
        "created": ctx.time_ms,
        "expires": ctx.time_ms + params(ctx.state)["proposal_ttl_ms"],
        "votes": {org: True},
        "status": "open",
        "tx": ctx.tx_id,
    }
    ctx.emit("proposal.created", id=pid, action=msg.action, proposer=org)
    _settle(ctx, pid, proposal)


def vote(ctx: Context, msg: Vote) -> None:
    org = require_member(ctx)
    proposal = ctx.state.get(f"gov/proposal/{msg.proposal}")
    if proposal is None:
        raise TxError(Code.NOT_FOUND, f"no proposal {msg.proposal}")
    if proposal["status"] != "open":
        raise TxError(Code.CONFLICT, f"proposal {msg.proposal} is already {proposal['status']}")
    if ctx.time_ms > proposal["expires"]:
        raise TxError(Code.EXPIRED, f"proposal {msg.proposal} expired")
    if org in proposal["votes"]:
        raise TxError(Code.CONFLICT, f"{org} already voted on proposal {msg.proposal}")
    if proposal["action"] == "rebind_member" and proposal["args"].get("org") == org:
        raise TxError(Code.REFUSED, f"{org} does not vote on its own rebinding")
    proposal["votes"][org] = msg.approve
    ctx.emit("proposal.voted", id=msg.proposal, org=org, approve=int(msg.approve))
    _settle(ctx, msg.proposal, proposal)


def _check_not_proposed(ctx: Context, org: str, **given: bytes) -> None:
    """A member's own update never takes a key that an open admission or rebinding of another
    org names: TLS, box and validator keys need no proof of possession, so whoever read the
    proposal could otherwise claim them first and make its execution fail for ever."""
    for proposal in q_proposals(ctx.state, {"status": "open"}):
        args = proposal["args"]
        if proposal["action"] not in ("admit_member", "rebind_member") or args.get("org") == org:
            continue
        if ctx.time_ms > proposal["expires"]:
            continue
        for name, value in given.items():
            if value and args.get(name) == value:
                raise TxError(
                    Code.CONFLICT,
                    f"field {name}: named for {args.get('org')} by open proposal {proposal['id']}",
                )


def update_member(ctx: Context, msg: UpdateMember) -> None:
    org = require_member(ctx)
    old = ctx.state.get(_member_key(org))
    _check_keys(
        ctx.state,
        org,
        "",
        key=msg.key,
        box_key=msg.box_key,
        tls_key=msg.tls_key,
        validator_key=msg.validator_key,
    )
    _check_not_proposed(
        ctx, org, box_key=msg.box_key, tls_key=msg.tls_key, validator_key=msg.validator_key
    )
    if msg.key:
        if not verify(msg.key, update_proof_message(org, old["key"]), msg.key_proof):
            raise TxError(
                Code.UNAUTHORIZED, "field key_proof: not the new key's signature of the change"
            )
    elif msg.key_proof:
        raise TxError(Code.INVALID_BODY, "field key_proof: only with a new key")
    if msg.addresses is not None:
        check_addresses(msg.addresses, "addresses")
    if not (msg.key or msg.box_key or msg.tls_key or msg.validator_key) and msg.addresses is None:
        raise TxError(Code.INVALID_BODY, "field key: nothing to update")
    new = dict(old)
    for name in ("key", "box_key", "tls_key", "validator_key"):
        if getattr(msg, name):
            new[name] = getattr(msg, name)
    if msg.addresses is not None:
        new["addresses"] = msg.addresses
    _rekey(ctx, old, new)
    changed = [n for n in ("key", "box_key", "tls_key", "validator_key") if getattr(msg, n)]
    if msg.addresses is not None:
        changed.append("addresses")
    ctx.emit("member.updated", org=org, changed=",".join(changed))


def genesis(state: StateView, g: Genesis) -> None:
    for m in g.members:
        state.put(
            _member_key(m.org),
            {
                "org": m.org,
                "name": m.name,
                "key": m.key,
                "validator_key": m.validator_key,
                "power": m.power,
                "box_key": m.box_key,
                "tls_key": m.tls_key,
                "addresses": dict(m.addresses),
                "since": g.time_ms,
            },
        )
        state.put(_org_key(m.key), m.org)
    # Refused, the node does not start: a genesis holds only what a vote could have set.
    overrides = genesis_params(g.params, contract_version(state, "governance"))
    if overrides:
        state.put("gov/params", overrides)


# -- queries -------------------------------------------------------------------------------


def q_members(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    return members(state)


def q_proposals(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    status = args.get("status")
    found = [p for _, p in state.scan("gov/proposal/")]
    found.sort(key=lambda p: int(p["id"]))
    return [p for p in found if status is None or p["status"] == status]


def q_proposal(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    result: dict[str, Any] | None = state.get(f"gov/proposal/{args.get('id')}")
    return result


def q_params(state: StateView, args: dict[str, Any]) -> dict[str, int]:
    return params(state)


def q_peer(state: StateView, args: dict[str, Any]) -> str | None:
    """`{"node_id": hex}` -> the member whose p2p node this is, or None."""
    node_id = args.get("node_id")
    if not isinstance(node_id, str):
        raise TxError(Code.INVALID_BODY, "field node_id: expected text")
    return member_of_node(state, node_id)


def q_contracts(state: StateView, args: dict[str, Any]) -> dict[str, int]:
    return {k.removeprefix("gov/contract/"): int(v) for k, v in state.scan("gov/contract/")}


_V1 = Contract(
    name="governance",
    version=1,
    messages={
        "governance.propose": Message("governance.propose", Propose, propose),
        "governance.vote": Message("governance.vote", Vote, vote),
        "governance.update_member": Message(
            "governance.update_member", UpdateMember, update_member
        ),
    },
    queries={
        "governance/members": q_members,
        "governance/proposals": q_proposals,
        "governance/proposal": q_proposal,
        "governance/params": q_params,
        "governance/contracts": q_contracts,
        "governance/peer": q_peer,
    },
    genesis=genesis,
)
# v2: the same messages; a rebinding counts its target in the total and retires its
# practitioner keys (see the module doc). The handlers ask `contract_version`.
# v3: the same again; `set_param` bounds proposal_ttl_ms and the escrow's k and n
# (PARAM_RANGES_V3), which older chains took at any value and replay unchanged.
# v4: the same again; `set_param` keeps escrow_threshold <= escrow_shares (`param_conflict`).
# v5: the same again; InitChain refuses a genesis parameter a vote could not set.
# v6: the same again; InitChain refuses a genesis parameter no contract knows
# (policies.genesis_params, session 14).
CONTRACTS = [_V1, *(dataclasses.replace(_V1, version=v) for v in (2, 3, 4, 5, 6))]
