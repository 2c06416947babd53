"""Review 12b: the session's fast paths write the same bytes as the slow ones they replaced.

Each test compares a hand-written or shortcut encoding with the reference one over values
shaped like the edge cases the ledger can meet (long and non-ASCII text, big and negative
ints, empty containers, more than 23 items, maps built out of order), so that two replicas,
or this code and the session's base, can never write different bytes or app hashes.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2

from medledger.ledger import codec, merkle
from medledger.ledger.contract import Contract, Message, Registry, active_key
from medledger.ledger.results import Event, TxResult
from medledger.ledger.store import StateView, _outcome_bytes

_INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32, 2**63 - 1, 2**64 - 1, -1, -24, -25, -(2**63)]


def _text(r: random.Random) -> str:
    alphabet = r.choice(["ab", "aé", "a中", "z😀", "\x00\x7f"])
    return "".join(r.choice(alphabet) for _ in range(r.choice([0, 1, 22, 23, 24, 255, 256])))


def _key(r: random.Random) -> str:
    return "".join(r.choice("abyzé中A_") for _ in range(r.choice([0, 1, 2, 3, 23, 24, 25])))


def _value(r: random.Random, depth: int = 0) -> Any:
    choice = r.randrange(10 if depth < 3 else 5)
    if choice == 0:
        return r.choice(_INTS)
    if choice == 1:
        return r.choice([True, False, None])
    if choice == 2:
        return _text(r)
    if choice == 3:
        return bytes(r.randrange(256) for _ in range(r.choice([0, 5, 24])))
    if choice == 4:
        return r.choice(["", [], {}, ()])
    if choice in (5, 6):
        return {_key(r): _value(r, depth + 1) for _ in range(r.choice([1, 3, 24]))}
    if choice in (7, 8):
        return [_value(r, depth + 1) for _ in range(r.choice([1, 24]))]
    return tuple(_value(r, depth + 1) for _ in range(r.choice([1, 2, 25])))


def test_encode_trusted_writes_cbor2_canonical_bytes_whatever_the_key_order() -> None:
    r = random.Random(12)
    for _ in range(300):
        built = {_key(r): _value(r) for _ in range(r.choice([0, 1, 4, 24, 30]))}
        read_back = codec.decode_trusted(cbor2.dumps(built, canonical=True))
        for value in (built, read_back, dict(reversed(list(read_back.items())))):
            assert codec.encode_trusted(value) == cbor2.dumps(value, canonical=True)
    # one shape remembered as in order does not make a nested map out of order pass
    ordered = {"a": 1, "bb": {"a": 1, "b": 2}}
    assert codec.encode_trusted(ordered) == cbor2.dumps(ordered, canonical=True)
    nested_out_of_order = {"a": 1, "bb": {"b": 2, "a": 1}}
    assert codec.encode_trusted(nested_out_of_order) == cbor2.dumps(ordered, canonical=True)


def test_a_stored_outcome_is_the_canonical_cbor_of_its_results_and_events() -> None:
    r = random.Random(13)

    def event() -> Event:
        attrs = tuple((_key(r), r.choice([_text(r), ""])) for _ in range(r.choice([0, 1, 24])))
        return Event(r.choice([_text(r), _key(r)]), attrs)

    for _ in range(300):
        results = [
            TxResult(r.choice(_INTS[:7] + [2**40]), _text(r), tuple(event() for _ in range(2)))
            for _ in range(r.choice([0, 1, 23, 24, 30]))
        ]
        events = tuple(event() for _ in range(r.choice([0, 1, 24])))
        canonical = codec.encode([[x.to_obj() for x in results], [e.to_obj() for e in events]])
        assert _outcome_bytes(results, events) == canonical


def test_the_level_by_level_root_is_the_rfc6962_split_root() -> None:
    for n in range(1, 70):
        items = [bytes([n, j]) for j in range(n)]
        assert merkle.root(items) == merkle._root([merkle.leaf_hash(i) for i in items])
        for index in (0, n // 2, n - 1):
            path = merkle.proof(items, index)
            assert merkle.verify_proof(items[index], path, merkle.root(items))


class _Dict:
    def __init__(self) -> None:
        self.kv: dict[bytes, bytes] = {}

    def get_raw(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def scan_raw(self, prefix: bytes) -> Any:
        return iter(sorted((k, v) for k, v in self.kv.items() if k.startswith(prefix)))


def test_a_kinds_message_follows_an_upgrade_and_a_downgrade_in_the_same_block() -> None:
    def handler(ctx: Any, msg: Any) -> None:
        return None

    class V1:
        pass

    class V2:
        pass

    v1 = Contract("demo", 1, {"demo.act": Message("demo.act", V1, handler)})
    v2 = Contract(
        "demo",
        2,
        {
            "demo.act": Message("demo.act", V2, handler),
            "demo.new": Message("demo.new", V2, handler),
        },
    )
    registry = Registry([v1, v2])
    block = StateView(_Dict())
    block.put(active_key("demo"), 1)
    assert registry.message(block, "demo.act").cls is V1
    block.put(active_key("demo"), 2)  # upgraded by a tx of the block
    assert registry.message(block, "demo.act").cls is V2
    assert registry.message(block, "demo.new").cls is V2
    block.put(active_key("demo"), 1)  # and downgraded by a later one
    assert registry.message(block, "demo.act").cls is V1
    try:
        registry.message(block, "demo.new")
    except Exception as exc:
        assert "unknown tx kind" in str(exc)
    else:
        raise AssertionError("a kind of version 2 was taken under version 1")
