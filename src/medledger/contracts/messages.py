"""A contract's message dataclass as the (kind, body) a wallet signs.

Each contract declares its messages (`Message(kind, cls, handler)` in its `CONTRACTS`); a
caller that builds one of those dataclasses hands it to `Wallet.send_message` instead of
spelling the kind and a dict. The body is what the contract's `parse_message` reads back:
every field that differs from its default (a default left out parses to the same value, so
the body is the one a caller would have written by hand).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


@functools.cache
def _kinds() -> dict[type[Any], str]:
    from medledger.contracts import all_contracts

    return {m.cls: kind for c in all_contracts() for kind, m in c.messages.items()}


def kind_of(msg: Any) -> str:
    """The tx kind of a contract message, e.g. "consent.grant" for a consent.Grant."""
    try:
        return _kinds()[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a message any contract declares") from None


def body_of(msg: Any) -> dict[str, Any]:
    """The tx body of a contract message: its fields, leaving out those at their default."""
    body: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        body[f.name] = value
    return body
