"""Canonical CBOR (RFC 8949 section 4.2.1 deterministic encoding) and hashing.

Every byte the ledger hashes or signs goes through here, so that two replicas can never
disagree on an encoding. Decoding is strict: a value whose re-encoding differs from the input
(non-canonical, floats, tags, undefined) is refused, which also closes malleability.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2


class CodecError(ValueError):
    """The bytes are not a canonical CBOR value of the types the ledger allows."""


_SCALARS = frozenset({str, bytes, bool, type(None)})
_INT_MIN, _INT_MAX = -(2**63), 2**64


def _check(value: Any, depth: int = 0, ordered: bool = False) -> None:
    """Only text, bytes, ints (64-bit), bools, null, lists and text-keyed maps are ledger data.

    `ordered`: every map's keys must also come in canonical order (as decoded, i.e. as they
    were on the wire), so that a plain re-encoding reproduces canonical bytes. A map whose
    keys (the same, in the same order) passed before is not ranked key by key again
    (`_canonical_shapes`): every tx of a kind has the same few shapes.
    """
    t = type(value)
    if t in _SCALARS:
        return
    if t is int:
        if not _INT_MIN <= value < _INT_MAX:
            raise CodecError("integer out of 64-bit range")
        return
    if depth > 32:
        raise CodecError("nesting deeper than 32 levels")
    if t is list:
        items = value
    elif t is dict:
        keys = tuple(value)
        if not (ordered and keys in _canonical_shapes):
            previous: tuple[int, bytes] | None = None
            for key, item in value.items():
                if type(key) is not str:
                    raise CodecError("map keys must be text strings")
                if ordered:
                    rank = _key_rank(key)
                    if previous is not None and rank <= previous:
                        raise CodecError("CBOR is not in canonical form (map keys out of order)")
                    previous = rank
                if type(item) not in _SCALARS:
                    _check(item, depth + 1, ordered)
            if ordered and len(keys) <= _SHAPE_KEYS and len(_canonical_shapes) < _SHAPES_MAX:
                _canonical_shapes.add(keys)
            return
        items = value.values()
    else:
        raise CodecError(f"type {t.__name__} is not allowed in ledger data")
    for item in items:
        ti = type(item)
        if ti in _SCALARS:
            continue
        if ti is int:
            if not _INT_MIN <= item < _INT_MAX:
                raise CodecError("integer out of 64-bit range")
            continue
        _check(item, depth + 1, ordered)


# Key sequences of maps found in canonical order: small ones only, a bounded number.
_SHAPE_KEYS = 16
_SHAPES_MAX = 4096
_canonical_shapes: set[tuple[str, ...]] = set()


def _key_rank(key: str) -> tuple[int, bytes]:
    """Where a text key sorts in a canonical map: by the bytes of its encoding, which for
    text is its UTF-8 length (the header grows with it), then its UTF-8 bytes. Field names
    recur in every tx, so their ranks are remembered (up to `_RANKS_MAX`)."""
    rank = _ranks.get(key)
    if rank is None:
        raw = key.encode()
        rank = len(raw), raw
        if len(_ranks) < _RANKS_MAX:
            _ranks[key] = rank
    return rank


_RANKS_MAX = 4096
_ranks: dict[str, tuple[int, bytes]] = {}


def encode(value: Any) -> bytes:
    """Encode with deterministic CBOR; refuses floats and other non-ledger types."""
    _check(value)
    return cbor2.dumps(value, canonical=True)


def in_canonical_order(value: Any) -> Any:
    """`value` checked as `encode` checks it (CodecError) and rebuilt with every map's keys in
    canonical order: `encode_ordered` of it, or of a list or one-key map of such values, is
    canonical (the audit journal orders each entry once and frames it without sorting)."""
    _check(value)
    return _in_canonical_order(value)


def encode_ordered(value: Any) -> bytes:
    """Plain CBOR of a value whose maps are already in canonical key order
    (`in_canonical_order`): canonical bytes, at the cost of cbor2's C encoder alone."""
    return cbor2.dumps(value)


def decode(data: bytes) -> Any:
    """Decode canonical CBOR, refusing anything that would not re-encode to the same bytes."""
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several exception types on garbage
        raise CodecError(f"malformed CBOR: {exc}") from None
    if isinstance(value, tuple):
        raise CodecError("unexpected CBOR type")
    # Keys checked in canonical order, then a plain re-encoding (which keeps that order) must
    # give the input back: the same test as a canonical re-encoding, at a third of its cost
    # (cbor2 sorts every map's keys when asked for canonical output).
    _check(value, ordered=True)
    if cbor2.dumps(value) != data:
        raise CodecError("CBOR is not in canonical form")
    return value


def encode_trusted(value: Any) -> bytes:
    """Encode a value built by the state machine itself (its state writes): values decoded
    from checked txs, ints and text, so the type check of `encode` is not repeated.

    The bytes are canonical. A map (a record a handler writes) is rebuilt in canonical key
    order, then encoded plainly (which keeps that order): handlers write maps of a few fixed
    shapes, so the order of each shape's keys is computed once (`_canonical_order`), which
    costs a fifth to a third less than cbor2's own canonical mode (it sorts every map by
    encoding each key again). Anything else (lists: the block record's txs and results)
    has no map order to fix at its top and goes to cbor2's canonical mode, in C.
    """
    if type(value) is dict:
        try:
            if _in_order(value):  # a record read back, or built in canonical key order
                return cbor2.dumps(value)
            return cbor2.dumps(_in_canonical_order(value))
        except AttributeError:  # a map key that is not text: cbor2 orders it
            pass
    return cbor2.dumps(value, canonical=True)


def _in_order(value: Any) -> bool:
    """Whether every map in `value` already has its keys in canonical order, so that its
    plain encoding is canonical as it stands: true of a record decoded from the state and of
    one a handler builds in that order; checked without building anything."""
    t = type(value)
    if t is dict:
        keys = tuple(value)
        ordered = _ordered_shapes.get(keys)
        if ordered is None:
            ordered = _canonical_order(keys) == list(keys)
            if len(keys) <= _SHAPE_KEYS and len(_ordered_shapes) < _ORDERS_MAX:
                _ordered_shapes[keys] = ordered
        if not ordered:
            return False
        items: Any = value.values()
    elif t is list or t is tuple:
        items = value
    else:
        return True
    for item in items:  # a loop, not all(): this runs on every record a handler writes
        if type(item) in _CONTAINERS and not _in_order(item):
            break
    else:
        return True
    return False


_ORDERS_MAX = 4096  # distinct key sequences remembered (a map's shape, as built)
_orders: dict[tuple[str, ...], list[str]] = {}
_ordered_shapes: dict[tuple[str, ...], bool] = {}  # whether a key sequence is canonical


def _canonical_order(keys: tuple[str, ...]) -> list[str]:
    order = _orders.get(keys)
    if order is None:
        order = sorted(keys, key=_key_rank)
        if len(keys) <= _SHAPE_KEYS and len(_orders) < _ORDERS_MAX:  # bounded in size too
            _orders[keys] = order
    return order


def _in_canonical_order(value: Any) -> Any:
    t = type(value)
    if t is dict:
        return {
            k: _in_canonical_order(value[k]) if type(value[k]) in _CONTAINERS else value[k]
            for k in _canonical_order(tuple(value))
        }
    if t is list or t is tuple:
        return [_in_canonical_order(v) if type(v) in _CONTAINERS else v for v in value]
    return value


_CONTAINERS = frozenset({dict, list, tuple})


def decode_trusted(data: bytes) -> Any:
    """Decode bytes this replica wrote itself (its own state store): no canonical re-check."""
    return cbor2.loads(data)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_TX_IDS_BYTES = 32 << 20  # the txs a memo holds at most; then it starts afresh
_TX_ID_MEMO_MAX = 8 << 10  # larger txs are hashed each time (their handling costs far more)
_tx_ids: dict[bytes, bytes] = {}
_tx_ids_held = [0]  # bytes of the txs in _tx_ids


def tx_id(raw: bytes) -> bytes:
    """A tx's id, SHA-256 of its bytes, remembered: a node hashes each tx six to eight times
    (CheckTx, the proposal's key, the block's tx root, its index, the engine's record of
    commits). A lookup hashes the bytes with Python's own hash, kept in the object after the
    first, and compares them: about a fifth of SHA-256's cost on a 420-byte tx."""
    if type(raw) is not bytes or len(raw) > _TX_ID_MEMO_MAX:
        return hashlib.sha256(raw).digest()
    digest = _tx_ids.get(raw)
    if digest is None:
        digest = hashlib.sha256(raw).digest()
        if _tx_ids_held[0] > _TX_IDS_BYTES:
            _tx_ids.clear()
            _tx_ids_held[0] = 0
        _tx_ids[raw] = digest
        _tx_ids_held[0] += len(raw)
    return digest
