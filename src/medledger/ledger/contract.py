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

from medledger.ledger.codec import decode_trusted as decode
from medledger.ledger.errors import Code, TxError
from medledger.ledger.results import Event, ValidatorUpdate
from medledger.ledger.store import StateView

M = TypeVar("M")


@dataclass(slots=True)
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
        self.events.append(Event(type, tuple([(k, str(v)) for k, v in attrs.items()])))


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
        # Each tx kind's contract name and the state key naming its active version: every
        # tx looks them up, twice (CheckTx and its block).
        self._kinds: dict[str, tuple[str, bytes]] = {}
        # A kind's message under the stored bytes of its contract's active version (the
        # version is read from the state each time; only what it names is remembered).
        self._messages: dict[tuple[str, bytes], Message] = {}

    def versions(self, name: str) -> list[int]:
        return sorted(self._by_name.get(name, {}))

    def get(self, name: str, version: int) -> Contract | None:
        return self._by_name.get(name, {}).get(version)

    def active(self, state: StateView, name: str) -> Contract | None:
        version = state.get(active_key(name))
        return None if version is None else self.get(name, int(version))

    def message(self, state: StateView, kind: str) -> Message:
        known = self._kinds.get(kind)
        if known is None:
            name = kind.partition(".")[0]
            known = name, active_key(name).encode()
        raw = state.get_raw(known[1])
        if raw is not None:
            found = self._messages.get((kind, raw))
            if found is not None:
                return found
        versions = self._by_name.get(known[0])
        contract = None if raw is None or versions is None else versions.get(int(decode(raw)))
        if contract is None or kind not in contract.messages:
            raise TxError(Code.UNKNOWN_KIND, f"unknown tx kind {kind!r}")
        self._kinds[kind] = known  # only kinds some contract has: a bounded set
        message = contract.messages[kind]
        if raw is not None:  # bounded too: the kinds times their contracts' versions
            self._messages[kind, raw] = message
        return message

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

Checker = Callable[[Any, str], Any]
# A message class's fields: name, the exact type of a scalar field (checked inline, the
# common case) or None, the field's checker, and whether it is required.
_Field = tuple[str, type[Any] | None, Checker, bool]
_parsers: dict[type[Any], tuple[tuple[_Field, ...], frozenset[str], Callable[..., Any]]] = {}
_SCALARS: dict[Any, str] = {int: "an integer", str: "text", bytes: "bytes", bool: "true or false"}
_ABSENT: Any = object()


def _fail(where: str, expected: str, value: Any) -> TxError:
    return TxError(
        Code.INVALID_BODY, f"field {where}: expected {expected}, got {type(value).__name__}"
    )


def _checker(hint: Any) -> Checker:
    """Compile a type hint into a function that checks a decoded CBOR value against it."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return lambda v, where: v
    if origin in (typing.Union, types.UnionType):
        options = [_checker(o) for o in typing.get_args(hint)]

        def check_union(v: Any, where: str) -> Any:
            for option in options:
                try:
                    return option(v, where)
                except TxError:
                    continue
            raise TxError(Code.INVALID_BODY, f"field {where}: unexpected {type(v).__name__}")

        return check_union
    if hint is type(None):

        def check_none(v: Any, where: str) -> Any:
            if v is not None:
                raise _fail(where, "null", v)
            return None

        return check_none
    if origin is list:
        item_hint = typing.get_args(hint)[0]
        item = _checker(item_hint)
        if item_hint in _SCALARS:

            def check_scalar_list(v: Any, where: str) -> Any:
                if type(v) is not list:
                    raise _fail(where, "a list", v)
                for x in v:
                    if type(x) is not item_hint:  # exact, as below; the refusal names it
                        return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]
                return list(v)

            return check_scalar_list

        def check_list(v: Any, where: str) -> Any:
            if type(v) is not list:
                raise _fail(where, "a list", v)
            try:
                # The items' paths are only spelled out for a refusal (building one per
                # item cost more than checking it): the failing item is checked again.
                return [item(x, where) for x in v]
            except TxError:
                return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]

        return check_list
    if origin is dict:
        value = _checker(typing.get_args(hint)[1])

        def check_dict(v: Any, where: str) -> Any:
            if type(v) is not dict:
                raise _fail(where, "a map", v)
            try:
                return {k: value(x, where) for k, x in v.items()}
            except TxError:  # as for lists: the path is spelled out for the refusal only
                return {k: value(x, f"{where}.{k}") for k, x in v.items()}

        return check_dict
    if hint in _SCALARS:
        name = _SCALARS[hint]

        def check_scalar(v: Any, where: str) -> Any:
            if type(v) is not hint:  # exact: a bool is not an integer here
                raise _fail(where, name, v)
            return v

        return check_scalar
    raise TypeError(f"unsupported message field type {hint!r}")


def _parser(
    cls: type[Any],
) -> tuple[tuple[_Field, ...], frozenset[str], Callable[..., Any]]:
    parser = _parsers.get(cls)
    if parser is None:
        hints = typing.get_type_hints(cls)
        fields = tuple(
            (
                f.name,
                hints[f.name] if hints[f.name] in _SCALARS else None,
                _checker(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        parser = (fields, frozenset(f[0] for f in fields), cls)
        _parsers[cls] = parser
    return parser


def parse_message(cls: type[M], body: dict[str, Any]) -> M:
    """Build the message dataclass from a tx body: no missing, unknown or mistyped field."""
    fields, names, build = _parser(cls)
    if not names >= body.keys():
        for name in body:
            if name not in names:
                raise TxError(Code.INVALID_BODY, f"unknown field {name!r}")
    values: dict[str, Any] = {}
    for name, scalar, check, required in fields:
        value = body.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise TxError(Code.INVALID_BODY, f"missing field {name!r}")
        elif type(value) is scalar:
            values[name] = value
        else:
            values[name] = check(value, name)
    result: M = build(**values)
    return result


def parse_item(cls: type[M], raw: Any, where: str) -> M:
    """An item of a message's list (e.g. `entries[3]`) parsed as `cls`; refusals name it."""
    if not isinstance(raw, dict):
        raise TxError(Code.INVALID_BODY, f"field {where}: expected a map")
    try:
        return parse_message(cls, raw)
    except TxError as exc:
        raise TxError(exc.code, f"{where}: {exc.message}") from None
