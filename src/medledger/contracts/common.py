"""Helpers every contract uses: the shared checks on ids and times (membership: governance)."""

from __future__ import annotations

import re
from typing import TypeGuard

from medledger.ledger.errors import Code, TxError

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")  # \Z: "$" would let a final newline in

DAY_MS = 24 * 3600 * 1000
_HEX = frozenset("0123456789abcdef")


def is_id(value: str) -> bool:
    """`check_id`'s test alone, for loops that name the field only when one fails."""
    return _ID.match(value) is not None


def check_id(value: str, field: str) -> str:
    """Ids that become key segments: short, lowercase, no '/' (they would split keys)."""
    if not _ID.match(value):
        raise TxError(
            Code.INVALID_BODY,
            f"field {field}: {value!r} is not a valid id (a-z, 0-9, '.', '_', '-'; max 64)",
        )
    return value


def is_pid(value: object) -> TypeGuard[str]:
    """A pid: 64 lowercase hex characters (an HMAC-SHA256, never an identifier in clear)."""
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def check_pid(pid: str, field: str = "pid") -> str:
    if not is_pid(pid):
        raise TxError(Code.INVALID_BODY, f"field {field}: a pid is 64 lowercase hex characters")
    return pid
