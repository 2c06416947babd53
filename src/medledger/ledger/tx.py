"""The transaction envelope.

Wire form: canonical CBOR array `[payload, signature]` where payload is the canonical CBOR map
`{v, chain, kind, body, signer, nonce}` and signature is Ed25519 over the payload bytes.
The tx id is SHA-256 of the whole wire bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from medledger.ledger import codec
from medledger.ledger.errors import Code, TxError
from medledger.ledger.keys import SigningKey, verify

VERSION = 1
MAX_TX_BYTES = 512 * 1024  # a whole FHIR bundle's index entries fit in one tx
_FIELDS = {"v", "chain", "kind", "body", "signer", "nonce"}


@dataclass(frozen=True)
class Tx:
    v: int
    chain: str
    kind: str
    body: dict[str, Any]
    signer: bytes
    nonce: int
    signature: bytes
    raw: bytes
    payload: bytes
    id: bytes  # SHA-256 of `raw` (`codec.tx_id`), computed once when decoded


def encode_payload(
    chain: str, kind: str, body: dict[str, Any], signer: bytes, nonce: int, v: int = VERSION
) -> bytes:
    return codec.encode(
        {"v": v, "chain": chain, "kind": kind, "body": body, "signer": signer, "nonce": nonce}
    )


def sign_tx(key: SigningKey, chain: str, kind: str, body: dict[str, Any], nonce: int) -> bytes:
    """Build the wire bytes of a tx signed by key."""
    payload = encode_payload(chain, kind, body, key.public_key, nonce)
    return codec.encode([payload, key.sign(payload)])


def tx_id(raw: bytes) -> bytes:
    return codec.tx_id(raw)


def decode_tx(raw: bytes) -> Tx:
    """Parse the envelope; does not check the signature (see `verify_signature`)."""
    if len(raw) > MAX_TX_BYTES:
        raise TxError(Code.TOO_LARGE, f"tx is {len(raw)} bytes, the limit is {MAX_TX_BYTES}")
    envelope = _split_envelope(raw)
    if envelope is None:  # not the canonical shape: the general decoder says what is wrong
        try:
            outer = codec.decode(raw)
        except codec.CodecError as exc:
            raise TxError(Code.MALFORMED, f"tx: {exc}") from None
        if (
            not isinstance(outer, list)
            or len(outer) != 2
            or not isinstance(outer[0], bytes)
            or not isinstance(outer[1], bytes)
        ):
            raise TxError(Code.MALFORMED, "tx: expected [payload bytes, signature bytes]")
        envelope = outer[0], outer[1]
    payload, signature = envelope
    try:
        fields = codec.decode(payload)
    except codec.CodecError as exc:
        raise TxError(Code.MALFORMED, f"tx payload: {exc}") from None
    if type(fields) is dict and fields.keys() == _FIELDS:
        v, chain, kind, body = fields["v"], fields["chain"], fields["kind"], fields["body"]
        signer, nonce = fields["signer"], fields["nonce"]
        if (  # every field of the exact type, as decoded (the usual case, checked at once)
            type(v) is int
            and type(chain) is str
            and type(kind) is str
            and type(body) is dict
            and type(signer) is bytes
            and type(nonce) is int
            and v == VERSION
            and len(signer) == 32
            and nonce >= 1
        ):
            return Tx(
                v, chain, kind, body, signer, nonce, signature, raw, payload, codec.tx_id(raw)
            )
    _refuse_payload(fields)


def _refuse_payload(fields: Any) -> NoReturn:
    """Why a decoded payload is not a tx's (each check in turn, to name the first failure)."""
    if not isinstance(fields, dict):
        raise TxError(Code.MALFORMED, "tx payload: expected a map")
    if fields.keys() != _FIELDS:
        missing = sorted(_FIELDS - set(fields))
        unknown = sorted(set(fields) - _FIELDS)
        raise TxError(Code.MALFORMED, f"tx payload: missing {missing}, unknown {unknown}")
    checks = (
        ("v", int),
        ("chain", str),
        ("kind", str),
        ("body", dict),
        ("signer", bytes),
        ("nonce", int),
    )
    for name, typ in checks:
        if type(fields[name]) is not typ:  # exact, as decoded: a bool is not an int here
            raise TxError(Code.MALFORMED, f"tx payload: field {name} must be {typ.__name__}")
    if fields["v"] != VERSION:
        raise TxError(Code.UNSUPPORTED_VERSION, f"tx version {fields['v']} is not supported")
    if len(fields["signer"]) != 32:
        raise TxError(Code.MALFORMED, "tx payload: signer must be a 32-byte Ed25519 key")
    if fields["nonce"] < 1:
        raise TxError(Code.BAD_NONCE, "nonce must be at least 1")
    raise AssertionError("a payload refused by no check")  # unreachable: decode_tx took it


def _bytes_item(raw: bytes, pos: int) -> tuple[int, int] | None:
    """The span of the canonical CBOR byte string starting at `pos` (its length in the
    shortest header, RFC 8949 4.2.1), or None if another item or header is there."""
    if pos >= len(raw):
        return None
    head = raw[pos]
    if 0x40 <= head <= 0x57:
        start, length = pos + 1, head - 0x40
    elif head == 0x58 and pos + 2 <= len(raw) and raw[pos + 1] >= 24:
        start, length = pos + 2, raw[pos + 1]
    elif head == 0x59 and pos + 3 <= len(raw):
        start, length = pos + 3, int.from_bytes(raw[pos + 1 : pos + 3], "big")
        if length < 0x100:
            return None
    elif head == 0x5A and pos + 5 <= len(raw):
        start, length = pos + 5, int.from_bytes(raw[pos + 1 : pos + 5], "big")
        if length < 0x10000:
            return None
    else:
        return None
    end = start + length
    return (start, end) if end <= len(raw) else None


def _split_envelope(raw: bytes) -> tuple[bytes, bytes] | None:
    """`[payload, signature]` read straight off canonical bytes (an array of two byte strings
    with shortest headers is canonical by construction), without decoding and re-encoding
    the whole tx; None for any other shape, which `codec.decode` then explains."""
    if not raw or raw[0] != 0x82:
        return None
    payload = _bytes_item(raw, 1)
    if payload is None:
        return None
    signature = _bytes_item(raw, payload[1])
    if signature is None or signature[1] != len(raw):
        return None
    return raw[payload[0] : payload[1]], raw[signature[0] : signature[1]]


def verify_signature(tx: Tx) -> None:
    if not verify(tx.signer, tx.payload, tx.signature):
        raise TxError(Code.BAD_SIGNATURE, "signature does not verify against the signer's key")
