"""What a contract is, to the state machine: messages, handlers, queries, hooks.

Contracts (in `medledger.contracts`) build `Contract` values; the composition root hands a
`Registry` of them to the `Application`. Which version of a contract is active is itself
ledger state, changed only by a governance vote.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from medledger.ledger.errors import Code, TxError
from medledger.ledger.results import Event, ValidatorUpdate
from medledger.ledger.store import StateView

M = TypeVar("M")


@dataclass
class Context:
    """Everything a handler may look at: state, the tx's signer, and the block's height and time.

    There is deliberately no clock, randomness or I/O here.
    """

    state: StateView
    chain: str
    height: int
    time_ms: int
    signer: bytes
    tx_id: bytes
    events: list[Event] = field(default_factory=list)
    validator_updates: list[ValidatorUpdate] = field(default_factory=list)
    registry: Registry | None = None

    def emit(self, type: str, **attrs: str | int) -> None:
        self.events.append(Event(type, tuple((k, str(v)) for k, v in attrs.items())))


@dataclass(frozen=True)
class Message:
    kind: str
    cls: type[Any]
    handler: Callable[[Context, Any], None]


QueryFn = Callable[[StateView, dict[str, Any]], Any]
GenesisFn = Callable[[StateView, Any], None]
BlockHook = Callable[[Context], None]


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    messages: dict[str, Message]
    queries: dict[str, QueryFn] = field(default_factory=dict)
    genesis: GenesisFn | None = None
    end_block: BlockHook | None = None


def active_key(name: str) -> str:
    return f"gov/contract/{name}"


class Registry:
    """Every known contract version; dispatches a tx kind to the active version's handler."""

    def __init__(self, contracts: list[Contract]) -> None:
        self._by_name: dict[str, dict[int, Contract]] = {}
        for c in contracts:
            self._by_name.setdefault(c.name, {})[c.version] = c
        self.names = sorted(self._by_name)

    def versions(self, name: str) -> list[int]:
        return sorted(self._by_name.get(name, {}))

    def get(self, name: str, version: int) -> Contract | None:
        return self._by_name.get(name, {}).get(version)

    def active(self, state: StateView, name: str) -> Contract | None:
        version = state.get(active_key(name))
        return None if version is None else self.get(name, int(version))

    def message(self, state: StateView, kind: str) -> Message:
        name, _, _ = kind.partition(".")
        contract = self.active(state, name)
        if contract is None or kind not in contract.messages:
            raise TxError(Code.UNKNOWN_KIND, f"unknown tx kind {kind!r}")
        return contract.messages[kind]

    def query(self, state: StateView, path: str) -> QueryFn | None:
        name, _, _ = path.partition("/")
        contract = self.active(state, name)
        if contract is None:
            return None
        return contract.queries.get(path)

    def all_active(self, state: StateView) -> list[Contract]:
        found = (self.active(state, n) for n in self.names)
        return [c for c in found if c is not None]


# -- messages: dataclasses parsed strictly from a tx body --------------------------------

_hints_cache: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _hints_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _hints_cache[cls] = hints
    return hints


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where)
            except TxError:
                continue
        raise TxError(Code.INVALID_BODY, f"field {where}: unexpected {type(value).__name__}")
    if hint is type(None):
        if value is None:
            return None
        raise TxError(Code.INVALID_BODY, f"field {where}: expected null")
    if origin is list:
        if not isinstance(value, list):
            raise TxError(Code.INVALID_BODY, f"field {where}: expected a list")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TxError(Code.INVALID_BODY, f"field {where}: expected a map")
        _, vt = typing.get_args(hint)
        return {k: _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TxError(Code.INVALID_BODY, f"field {where}: expected an integer")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise TxError(
                Code.INVALID_BODY,
                f"field {where}: expected {hint.__name__}, got {type(value).__name__}",
            )
        return value
    raise TxError(Code.INVALID_BODY, f"field {where}: unsupported type")


def parse_message(cls: type[M], body: dict[str, Any]) -> M:
    """Build the message dataclass from a tx body: no missing, unknown or mistyped field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise TxError(Code.INVALID_BODY, f"unknown field {unknown[0]!r}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TxError(Code.INVALID_BODY, f"missing field {name!r}")
            continue
        values[name] = _check_type(body[name], hints[name], name)
    return cls(**values)


def message_body(msg: Any) -> dict[str, Any]:
    """The tx body of a message dataclass (the inverse of parse_message)."""
    return dataclasses.asdict(msg)
