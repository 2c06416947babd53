"""The state machine's fast paths give exactly what the plain paths give.

Each cheap path (a record encoded as it stands when its keys are already in canonical order,
a message field of a scalar type checked inline, a tx's payload fields checked in one step, a
kind's message remembered per stored contract version) is compared here with the plain path
it short-cuts, on random input: the same bytes, the same value, the same refusal word for word.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.ledger import codec
from medledger.ledger.contract import (
    Contract,
    Message,
    Registry,
    _checker,
    active_key,
    parse_message,
)
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView
from medledger.ledger.tx import _refuse_payload, decode_tx
from tests.ledger.test_codec_tx import _LEDGER_VALUES


@given(_LEDGER_VALUES)
def test_a_record_read_back_is_written_as_the_same_canonical_bytes(value: object) -> None:
    """Decoded from canonical bytes, every map is in canonical order: it is encoded as it
    stands, and must give the canonical bytes; its reordered copy must too."""
    canonical = cbor2.dumps(value, canonical=True)
    read_back = cbor2.loads(canonical)
    assert codec.encode_trusted(read_back) == canonical
    assert codec.encode_trusted([read_back, value]) == cbor2.dumps([value, value], canonical=True)


def test_a_nested_map_out_of_order_is_reordered_inside_an_ordered_one() -> None:
    inner = {"zz": 1, "a": 2}  # out of canonical order ("a" sorts first)
    outer = {"a": [inner], "b": {"m": inner}}  # in order itself
    assert codec.encode_trusted(outer) == cbor2.dumps(outer, canonical=True)
    assert codec.encode_trusted(outer) != cbor2.dumps(outer)


@dataclass
class _Sample:
    name: str
    count: int
    flag: bool
    blob: bytes
    tags: list[str]
    sizes: list[int]
    nested: list[dict[str, int]]
    maybe: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _plain_parse(cls: type[Any], body: dict[str, Any]) -> Any:
    """The parser as it was before its inline checks: every field through its checker."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in body:
        if name not in fields:
            raise TxError(Code.INVALID_BODY, f"unknown field {name!r}")
    resolved = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name in body:
            values[name] = _checker(resolved[name])(body[name], name)
        elif required:
            raise TxError(Code.INVALID_BODY, f"missing field {name!r}")
    return cls(**values)


_ANY = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3) | st.binary(max_size=3)
_FIELD_VALUES = _ANY | st.lists(_ANY, max_size=3) | st.dictionaries(st.text(max_size=2), _ANY)
_GOOD = st.fixed_dictionaries(
    {
        "name": st.text(max_size=5),
        "count": st.integers(),
        "flag": st.booleans(),
        "blob": st.binary(max_size=4),
        "tags": st.lists(st.text(max_size=3), max_size=3),
        "sizes": st.lists(st.integers(), max_size=3),
        "nested": st.lists(st.dictionaries(st.text(max_size=2), st.integers()), max_size=2),
    },
    optional={"maybe": st.none() | st.text(max_size=3), "extra": st.dictionaries(st.text(), _ANY)},
)


def _outcome(parse: Any, body: dict[str, Any]) -> Any:
    try:
        return ("ok", parse(_Sample, body))
    except TxError as exc:
        return ("refused", exc.code, exc.message)


@given(
    _GOOD,
    st.dictionaries(
        st.sampled_from(["name", "count", "flag", "tags", "sizes", "nested", "maybe", "stray"]),
        _FIELD_VALUES,
        max_size=3,
    ),
    st.lists(st.sampled_from(["name", "count", "tags", "maybe"]), max_size=2),
)
def test_the_parser_accepts_and_refuses_what_the_plain_checks_did(
    good: dict[str, Any], changes: dict[str, Any], dropped: list[str]
) -> None:
    body = {**good, **changes}
    for name in dropped:
        body.pop(name, None)
    assert _outcome(parse_message, body) == _outcome(_plain_parse, body)


def test_a_parsed_list_is_the_message_s_own() -> None:
    """The handler may keep or change the list it is given: never the tx body's own."""
    body = {"name": "a", "count": 1, "flag": True, "blob": b"", "tags": ["x"], "sizes": [1]}
    body["nested"] = []
    msg = parse_message(_Sample, body)
    msg.tags.append("y")
    assert body["tags"] == ["x"]


def test_a_bool_is_not_an_integer_in_a_list_either() -> None:
    body = {"name": "a", "count": 1, "flag": True, "blob": b"", "tags": [], "nested": []}
    with pytest.raises(TxError, match=r"field sizes\[1\]: expected an integer, got bool"):
        parse_message(_Sample, {**body, "sizes": [1, True]})


_PAYLOAD_FIELD = st.sampled_from(["v", "chain", "kind", "body", "signer", "nonce", "x"])
_PAYLOAD_VALUE = (
    st.integers(-2, 3)
    | st.booleans()
    | st.text(max_size=3)
    | st.binary(min_size=31, max_size=33)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
    | st.none()
)
_GOOD_PAYLOAD = {"v": 1, "chain": "c", "kind": "k.x", "body": {}, "signer": b"s" * 32, "nonce": 1}


@given(st.dictionaries(_PAYLOAD_FIELD, _PAYLOAD_VALUE, max_size=3), st.sets(_PAYLOAD_FIELD))
def test_a_payload_is_accepted_exactly_when_every_check_passes(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    """decode_tx's one-step check of the fields against the checks one by one (which name
    the first that fails): the same payloads accepted, the same refusal for the others."""
    fields = {k: v for k, v in {**_GOOD_PAYLOAD, **changes}.items() if k not in dropped}
    raw = codec.encode([codec.encode(fields), b"sig"])
    try:
        _refuse_payload(fields)
    except TxError as exc:
        expected: Any = (exc.code, exc.message)
    except AssertionError:
        expected = "accepted"
    try:
        tx = decode_tx(raw)
        got: Any = "accepted"
        assert (tx.v, tx.chain, tx.kind, tx.body, tx.signer, tx.nonce) == tuple(
            fields[k] for k in ("v", "chain", "kind", "body", "signer", "nonce")
        )
    except TxError as exc:
        got = (exc.code, exc.message)
    assert got == expected


class _Store:
    def __init__(self, values: dict[bytes, bytes]) -> None:
        self.values = values

    def get_raw(self, key: bytes) -> bytes | None:
        return self.values.get(key)

    def scan_raw(self, prefix: bytes) -> Any:
        return iter(())


def test_a_kind_resolves_to_the_active_version_each_time_even_once_remembered() -> None:
    def one(ctx: Any, msg: Any) -> None: ...

    def two(ctx: Any, msg: Any) -> None: ...

    @dataclass
    class Body:
        pass

    registry = Registry(
        [
            Contract(
                "demo",
                1,
                {"demo.a": Message("demo.a", Body, one), "demo.b": Message("demo.b", Body, one)},
            ),
            Contract("demo", 2, {"demo.a": Message("demo.a", Body, two)}),
        ]
    )
    store = _Store({active_key("demo").encode(): codec.encode(1)})
    state = StateView(store)
    assert registry.message(state, "demo.a").handler is one
    assert registry.message(state, "demo.b").handler is one
    store.values[active_key("demo").encode()] = codec.encode(2)  # a governance upgrade
    assert registry.message(state, "demo.a").handler is two
    with pytest.raises(TxError) as err:
        registry.message(state, "demo.b")  # v2 dropped it, though v1's was remembered
    assert err.value.code == Code.UNKNOWN_KIND
    del store.values[active_key("demo").encode()]
    with pytest.raises(TxError):
        registry.message(state, "demo.a")
