"""Identity: each hospital registers and revokes its own practitioners and their roles.

A practitioner is known on chain by a local id chosen by the hospital (never a national
identifier), the Ed25519 key they sign with, and roles. Only the hospital that registered a
practitioner can change or revoke them. A revocation's `reason` is free text about an
employee, kept for ever: at most `MAX_REASON` characters.

A rebinding of the hospital (governance `rebind_member`, v2) retires every active
practitioner key it registered: those keys lived on the lost machine, so whoever took it holds
them. A retired practitioner is inactive as a revoked one is (`retired`: the block time), and
the hospital's new machine registers the same id again with a new key; the old key stays
bound to the id (never reused, never active again).

State (prefix `id/`):
    id/prac/<org>/<practitioner>   the practitioner record
    id/key/<key hex>               signing key -> (org, practitioner)

Only this module spells these keys; the other contracts ask `resolve_actor`, `acting_org`
(the signer's hospital and practitioner, refusing revoked keys), `practitioner`, `roles_of`,
`is_practitioner` and `key_registered`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medledger.contracts import governance
from medledger.contracts.common import check_id
from medledger.contracts.governance import is_member, member_of_key, require_member
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

ROLES = ("physician", "nurse", "emergency", "dpo", "admin", "researcher")
MAX_REASON = 200


# -- the practitioner registry every contract reads (identity alone spells its keys) ------


def _prac_key(org: str, practitioner: str) -> str:
    return f"id/prac/{org}/{practitioner}"


def _key_key(key: bytes) -> str:
    return f"id/key/{key.hex()}"


def practitioner(state: StateView, org: str, ident: str) -> dict[str, Any] | None:
    """A practitioner's record (roles, active, key), or None if org registered no such id."""
    found: dict[str, Any] | None = state.get(_prac_key(org, ident))
    return found


def roles_of(state: StateView, org: str, ident: str) -> tuple[str, ...]:
    """The roles of a practitioner known to be registered (a signer already resolved)."""
    record = state.get(_prac_key(org, ident))
    return tuple(record["roles"])


def is_practitioner(state: StateView, org: str, ident: str) -> bool:
    return state.has(_prac_key(org, ident))


def key_registered(state: StateView, key: bytes) -> bool:
    """Whether a practitioner already signs with this key."""
    return state.has(_key_key(key))


@dataclass
class Register:
    practitioner: str
    key: bytes
    roles: list[str]


@dataclass
class UpdateRoles:
    practitioner: str
    roles: list[str]


@dataclass
class Revoke:
    practitioner: str
    reason: str = ""


def _check_roles(roles: list[str]) -> list[str]:
    if not roles:
        raise TxError(Code.INVALID_BODY, "field roles: at least one role is needed")
    for role in roles:
        if role not in ROLES:
            raise TxError(
                Code.INVALID_BODY, f"field roles: unknown role {role!r} (known: {', '.join(ROLES)})"
            )
    if len(set(roles)) != len(roles):
        raise TxError(Code.INVALID_BODY, "field roles: a role is repeated")
    return sorted(roles)


def _own_practitioner(ctx: Context, practitioner: str) -> tuple[str, dict[str, Any]]:
    org = require_member(ctx)
    record = ctx.state.get(_prac_key(org, practitioner))
    if record is None:
        raise TxError(Code.NOT_FOUND, f"{org} has no practitioner {practitioner!r}")
    return org, record


def register(ctx: Context, msg: Register) -> None:
    org = require_member(ctx)
    check_id(msg.practitioner, "practitioner")
    roles = _check_roles(msg.roles)
    if len(msg.key) != 32:
        raise TxError(Code.INVALID_BODY, "field key: must be a 32-byte Ed25519 key")
    previous = ctx.state.get(_prac_key(org, msg.practitioner))
    if previous is not None and not previous.get("retired"):
        raise TxError(Code.CONFLICT, f"{org} already registered {msg.practitioner!r}")
    if ctx.state.has(_key_key(msg.key)) or member_of_key(ctx.state, msg.key):
        raise TxError(Code.CONFLICT, "field key: this key is already registered")
    ctx.state.put(
        _prac_key(org, msg.practitioner),
        {  # keys in canonical order (`codec.encode_trusted` then need not reorder them)
            "id": msg.practitioner,
            "key": msg.key,
            "org": org,
            "roles": roles,
            "since": ctx.time_ms,
            "active": True,
        },
    )
    ctx.state.put(_key_key(msg.key), [org, msg.practitioner])
    ctx.emit("practitioner.registered", org=org, practitioner=msg.practitioner)


def update_roles(ctx: Context, msg: UpdateRoles) -> None:
    org, record = _own_practitioner(ctx, msg.practitioner)
    if not record["active"]:
        raise TxError(Code.CONFLICT, f"{msg.practitioner!r} is revoked")
    record["roles"] = _check_roles(msg.roles)
    ctx.state.put(_prac_key(org, msg.practitioner), record)
    ctx.emit("practitioner.roles", org=org, practitioner=msg.practitioner)


def revoke(ctx: Context, msg: Revoke) -> None:
    org, record = _own_practitioner(ctx, msg.practitioner)
    if len(msg.reason) > MAX_REASON:
        raise TxError(Code.INVALID_BODY, f"field reason: at most {MAX_REASON} characters")
    if not record["active"]:
        raise TxError(Code.CONFLICT, f"{msg.practitioner!r} is already revoked")
    record["active"] = False
    record["revoked"] = ctx.time_ms
    record["revoke_reason"] = msg.reason
    ctx.state.put(_prac_key(org, msg.practitioner), record)
    ctx.emit("practitioner.revoked", org=org, practitioner=msg.practitioner)


@dataclass(frozen=True)
class Actor:
    """Who a signing key is: a hospital itself, or one of its practitioners."""

    org: str
    practitioner: str | None
    roles: tuple[str, ...]
    active: bool

    @property
    def is_org(self) -> bool:
        return self.practitioner is None


def resolve_actor(state: StateView, key: bytes) -> Actor | None:
    org = member_of_key(state, key)
    if org is not None:
        return Actor(org, None, ("organisation",), True)
    ref = state.get(_key_key(key))
    if ref is None:
        return None
    org, practitioner = ref
    record = state.get(_prac_key(org, practitioner))
    # A retired id registered again keeps its old key bound to it: only the current one acts.
    current = bytes(record["key"]) == key
    active = bool(record["active"]) and current and is_member(state, org)
    return Actor(org, practitioner, tuple(record["roles"]), active)


def acting_org(ctx: Context, role: str | None = None) -> tuple[str, str | None]:
    """The signer's hospital (and practitioner id), refusing revoked or unknown keys."""
    actor = resolve_actor(ctx.state, ctx.signer)
    if actor is None or not actor.active:
        raise TxError(Code.UNAUTHORIZED, "signer is not an active hospital or practitioner key")
    if role is not None and not actor.is_org and role not in actor.roles:
        raise TxError(Code.UNAUTHORIZED, f"signer lacks the {role!r} role")
    return actor.org, actor.practitioner


def q_practitioners(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    org = args.get("org")
    prefix = f"id/prac/{org}/" if org else "id/prac/"
    return [p for _, p in state.scan(prefix)]


def q_actor(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    key = args.get("key")
    if not isinstance(key, bytes):
        raise TxError(Code.INVALID_BODY, "identity/actor needs key bytes")
    actor = resolve_actor(state, key)
    if actor is None:
        return None
    return {
        "org": actor.org,
        "practitioner": actor.practitioner,
        "roles": list(actor.roles),
        "active": actor.active,
    }


def _practitioner_of_key(state: StateView, key: bytes) -> str | None:
    """Whose practitioner key this is, for governance: a member never takes one."""
    found = state.get(_key_key(key))
    return None if found is None else f"practitioner {found[1]} of {found[0]}"


def _retire_practitioners(ctx: Context, org: str) -> None:
    """governance's rebinding of org: its active practitioner keys were on the lost machine."""
    for key, record in list(ctx.state.scan(f"id/prac/{org}/")):
        if record["active"]:
            record["active"] = False
            record["retired"] = ctx.time_ms
            ctx.state.put(key, record)
            ctx.emit("practitioner.retired", org=org, practitioner=record["id"])


governance.KEY_CLAIMS.append(_practitioner_of_key)
governance.REBIND_HOOKS.append(_retire_practitioners)

CONTRACTS = [
    Contract(
        name="identity",
        version=1,
        messages={
            "identity.register": Message("identity.register", Register, register),
            "identity.update_roles": Message("identity.update_roles", UpdateRoles, update_roles),
            "identity.revoke": Message("identity.revoke", Revoke, revoke),
        },
        queries={"identity/practitioners": q_practitioners, "identity/actor": q_actor},
    )
]
