"""The envelope: canonical CBOR, signatures, and every malformed input refused clearly."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.ledger import codec
from medledger.ledger.errors import Code, TxError
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import BlockHeader, BlockRecord, Event, TxResult
from medledger.ledger.store import Store
from medledger.ledger.tx import MAX_TX_BYTES, decode_tx, encode_payload, sign_tx, verify_signature


def test_encoding_is_canonical_whatever_the_key_order() -> None:
    assert codec.encode({"b": 1, "a": [1, b"x"]}) == codec.encode({"a": [1, b"x"], "b": 1})


def test_floats_and_non_canonical_bytes_are_refused() -> None:
    with pytest.raises(codec.CodecError):
        codec.encode({"x": 1.5})
    non_canonical = bytes.fromhex("a2616201616101")  # {"b":1,"a":1}: keys out of order
    with pytest.raises(codec.CodecError, match="canonical"):
        codec.decode(non_canonical)
    with pytest.raises(codec.CodecError):
        codec.decode(cbor2.dumps(1.5))


_LEDGER_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=30)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=30), inner),
    max_leaves=20,
)


@given(_LEDGER_VALUES)
def test_decoding_accepts_exactly_the_canonical_bytes(value: object) -> None:
    """Strict decoding checks key order and re-encodes plainly (cheaper than a canonical
    re-encoding): it must accept and refuse exactly what the canonical re-encoding did."""
    canonical = cbor2.dumps(value, canonical=True)
    assert codec.decode(canonical) == value
    assert codec.encode(value) == canonical
    as_built = cbor2.dumps(value)  # maps in insertion order, non-ASCII and long keys too
    if as_built != canonical:
        with pytest.raises(codec.CodecError, match="canonical"):
            codec.decode(as_built)


def test_duplicate_map_keys_are_refused() -> None:
    duplicated = bytes.fromhex("a2616101616102")  # {"a":1,"a":2}
    with pytest.raises(codec.CodecError, match="canonical"):
        codec.decode(duplicated)


def test_signed_tx_round_trips_and_verifies() -> None:
    key = SigningKey.generate()
    raw = sign_tx(key, "c", "identity.register", {"x": 1}, 7)
    tx = decode_tx(raw)
    assert (tx.chain, tx.kind, tx.body, tx.nonce, tx.signer) == (
        "c",
        "identity.register",
        {"x": 1},
        7,
        key.public_key,
    )
    verify_signature(tx)
    assert tx.id == codec.sha256(raw)


def test_a_changed_byte_breaks_the_signature() -> None:
    key = SigningKey.generate()
    payload = encode_payload("c", "k.x", {"v": "aaaa"}, key.public_key, 1)
    forged = payload.replace(b"aaaa", b"aaab")
    raw = codec.encode([forged, key.sign(payload)])
    with pytest.raises(TxError) as err:
        verify_signature(decode_tx(raw))
    assert err.value.code == Code.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"\xff\x00garbage", Code.MALFORMED, "malformed CBOR"),
        (codec.encode({"not": "a list"}), Code.MALFORMED, "expected [payload"),
        (codec.encode([b"\x01", b"sig"]), Code.MALFORMED, "expected a map"),
        (codec.encode([codec.encode({"v": 1}), b"s"]), Code.MALFORMED, "missing"),
        (b"\x00" * (MAX_TX_BYTES + 1), Code.TOO_LARGE, "limit"),
    ],
)
def test_malformed_envelopes_name_what_is_wrong(raw: bytes, code: Code, words: str) -> None:
    with pytest.raises(TxError) as err:
        decode_tx(raw)
    assert err.value.code == code
    assert words in err.value.message


@given(_LEDGER_VALUES)
def test_state_writes_are_encoded_canonically(value: object) -> None:
    """The state machine's own encoder (which remembers each map shape's key order) writes
    exactly the bytes of a canonical encoding, whatever order the maps were built in."""
    assert codec.encode_trusted(value) == cbor2.dumps(value, canonical=True)
    if isinstance(value, dict):
        reversed_map = dict(reversed(list(value.items())))
        assert codec.encode_trusted(reversed_map) == cbor2.dumps(value, canonical=True)
        assert codec.encode_trusted([reversed_map, value]) == codec.encode([value, value])


def _long_header(item: bytes) -> bytes:
    """A byte string's CBOR with a 2-byte length header where 1 byte (or none) would do."""
    return b"\x59" + len(item).to_bytes(2, "big") + item


def test_envelopes_are_read_only_in_their_canonical_form() -> None:
    """The envelope is read straight off the bytes when it is canonical; any other spelling
    of the same two byte strings is refused, as the general strict decoder refuses it."""
    key = SigningKey.generate()
    payload = encode_payload("c", "k.x", {"v": 1}, key.public_key, 1)
    signature = key.sign(payload)
    canonical = codec.encode([payload, signature])
    assert decode_tx(canonical).payload == payload
    assert decode_tx(canonical).signature == signature
    spellings = [
        b"\x82" + _long_header(payload) + codec.encode(signature),  # payload length padded
        b"\x82" + codec.encode(payload) + _long_header(signature),  # signature length padded
        b"\x9f" + codec.encode(payload) + codec.encode(signature) + b"\xff",  # indefinite
        canonical + b"\x00",  # trailing byte
    ]
    for raw in spellings:
        with pytest.raises(TxError) as err:
            decode_tx(raw)
        assert err.value.code == Code.MALFORMED
    truncated = canonical[:-1]
    with pytest.raises(TxError) as err:
        decode_tx(truncated)
    assert err.value.code == Code.MALFORMED


def test_tx_ids_are_remembered_yet_always_the_sha256_of_the_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`codec.tx_id` answers from its memo for a tx seen before, hashes large txs and other
    buffers each time, and starts afresh past its byte budget: always SHA-256."""
    monkeypatch.setattr(codec, "_TX_IDS_BYTES", 2_000)
    monkeypatch.setattr(codec, "_tx_ids", {})
    monkeypatch.setattr(codec, "_tx_ids_held", [0])
    small = [bytes([i]) * 420 for i in range(12)]
    for raw in small + small:  # the second pass: fresh objects would hash the same
        assert codec.tx_id(bytes(bytearray(raw))) == hashlib.sha256(raw).digest()
    assert len(codec._tx_ids) <= 2_000 // 420 + 1  # the budget held
    large = b"x" * (codec._TX_ID_MEMO_MAX + 1)
    assert codec.tx_id(large) == hashlib.sha256(large).digest()
    assert large not in codec._tx_ids
    buffer: Any = bytearray(b"abc")  # not hashable: hashed each time, never remembered
    assert codec.tx_id(buffer) == hashlib.sha256(b"abc").digest()


_TEXT = st.text(max_size=12)
_EVENTS = st.lists(
    st.builds(Event, _TEXT, st.lists(st.tuples(_TEXT, _TEXT), max_size=3).map(tuple)),
    max_size=3,
).map(tuple)


@given(
    st.lists(st.binary(max_size=300), max_size=6),
    st.lists(st.builds(TxResult, st.integers(0, 2**32), _TEXT, _EVENTS), max_size=6),
    _EVENTS,
)
def test_a_block_record_is_stored_as_the_canonical_encoding_of_its_results(
    txs: list[bytes], results: list[TxResult], events: tuple[Event, ...]
) -> None:
    """The store writes a block's txs and outcome with cbor2's plain encoder (lists only):
    the bytes are those of the canonical encoding, and read back the same."""
    header = BlockHeader("c", 1, 5, b"p", b"r", b"a", b"")
    record = BlockRecord(header, header.encode(), b"", txs, results, events)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "l.db")
        store.commit({}, 1, b"a", record)
        _, _, stored_txs, stored_results = store.raw_block(1) or (b"",) * 4
        assert stored_txs == cbor2.dumps(txs, canonical=True)
        outcome = [[r.to_obj() for r in results], [e.to_obj() for e in events]]
        assert stored_results == cbor2.dumps(outcome, canonical=True)
        assert store.block(1, strict=True) == record
        store.close()


def test_a_map_shape_seen_in_order_does_not_admit_the_same_keys_out_of_order() -> None:
    """Strict decoding remembers key sequences it found in canonical order; the same keys in
    another order are still refused, at any depth."""
    in_order = {"id": 1, "key": b"k", "org": "h1"}
    assert codec.decode(cbor2.dumps({"body": in_order})) == {"body": in_order}
    for reordered in ({"org": "h1", "key": b"k", "id": 1}, {"key": b"k", "id": 1, "org": "h1"}):
        with pytest.raises(codec.CodecError, match="canonical"):
            codec.decode(cbor2.dumps({"body": reordered}))
    with pytest.raises(codec.CodecError, match="64-bit"):
        codec.decode(cbor2.dumps({"body": {"id": 2**64, "key": b"k", "org": "h1"}}))
