"""ABCI socket framing: each protobuf message is preceded by its length as an unsigned varint.

This is what CometBFT v0.38 does in `abci/types/messages.go` (`WriteMessage` / `ReadMessage`
through `protoio.NewDelimitedWriter/Reader`), with a 100 MiB cap on a single message.
"""

from __future__ import annotations

MAX_MESSAGE_SIZE = 104_857_600  # CometBFT's maxMsgSize for ABCI messages


class FramingError(ValueError):
    """The peer sent bytes that are not a valid length-prefixed message stream."""


_ONE_BYTE = [bytes([n]) for n in range(128)]


def encode_uvarint(n: int) -> bytes:
    """Unsigned LEB128, as Go's binary.PutUvarint (one byte under 128: every CheckTx and
    Flush answer's length, from a table)."""
    if 0 <= n < 128:
        return _ONE_BYTE[n]
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame(message: bytes) -> bytes:
    """Prefix one serialized message with its uvarint length."""
    return encode_uvarint(len(message)) + message


def split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete message at the start of buf; keep a partial tail.

    Parsing a whole read buffer at once (rather than one message per await) is what lets the
    server answer a burst of pipelined CheckTx requests with a single write.
    """
    messages: list[bytes] = []
    pos = 0
    end = len(buf)
    while pos < end:
        length = 0
        shift = 0
        i = pos
        while True:
            if i >= end:
                del buf[:pos]
                return messages
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise FramingError("message length varint is too long")
        if length > MAX_MESSAGE_SIZE:
            raise FramingError(f"message of {length} bytes exceeds {MAX_MESSAGE_SIZE}")
        if i + length > end:
            break
        messages.append(bytes(buf[i : i + length]))
        pos = i + length
    del buf[:pos]
    return messages
