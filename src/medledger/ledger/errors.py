"""Stable rejection codes: clients, tests and operators rely on these numbers never changing."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    MALFORMED = 1  # not canonical CBOR, or not a tx envelope
    UNKNOWN_KIND = 2  # no active contract handles this kind
    WRONG_CHAIN = 3  # signed for another consortium
    BAD_SIGNATURE = 4
    BAD_NONCE = 5  # reused or lower nonce (replay)
    TOO_LARGE = 6
    UNAUTHORIZED = 7  # the signer may not do this
    INVALID_BODY = 8  # a field is missing, unknown or of the wrong type or value
    CONFLICT = 9  # already exists, already voted, already decided
    NOT_FOUND = 10
    EXPIRED = 11
    REFUSED = 12  # a rule of the contract refuses it (retention, cohort size, ...)
    UNSUPPORTED_VERSION = 13
    NOT_YET = 14  # rests on a tx of the same sender not yet committed: send again after it


class TxError(Exception):
    """Raised by validation and handlers; becomes a TxResult with this code and message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
