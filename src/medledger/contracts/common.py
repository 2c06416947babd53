"""Helpers every contract uses: who signed, and the shared checks on ids and times."""

from __future__ import annotations

import re
from typing import Any

from medledger.ledger.contract import Context
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

DAY_MS = 24 * 3600 * 1000


def check_id(value: str, field: str) -> str:
    """Ids that become key segments: short, lowercase, no '/' (they would split keys)."""
    if not _ID.match(value):
        raise TxError(
            Code.INVALID_BODY,
            f"field {field}: {value!r} is not a valid id (a-z, 0-9, '.', '_', '-'; max 64)",
        )
    return value


def member_of_key(state: StateView, key: bytes) -> str | None:
    """The org id whose organisation key this is, if it is a current member."""
    org = state.get(f"gov/key/{key.hex()}")
    if org is None:
        return None
    member = state.get(f"gov/member/{org}")
    return None if member is None else str(org)


def require_member(ctx: Context) -> str:
    org = member_of_key(ctx.state, ctx.signer)
    if org is None:
        raise TxError(Code.UNAUTHORIZED, "signer is not a member hospital's organisation key")
    return org


def members(state: StateView) -> list[dict[str, Any]]:
    return [m for _, m in state.scan("gov/member/")]


def check_pid(pid: str, field: str = "pid") -> str:
    if len(pid) != 64 or any(c not in "0123456789abcdef" for c in pid):
        raise TxError(Code.INVALID_BODY, f"field {field}: a pid is 64 lowercase hex characters")
    return pid
