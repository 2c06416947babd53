"""Ed25519 signing keys (pynacl) and their files.

Key files hold the 32-byte seed in hex; they are read and written by medledger.host.secretfile
(mode 0600, no symbolic link, written atomically so that a crash never leaves a half-written
key behind).
"""

from __future__ import annotations

import os
from pathlib import Path

import nacl.exceptions
import nacl.signing

from medledger.host.secretfile import SecretFileError, read_hex_secret, write_secret


class KeyFileError(SecretFileError):
    """A key (or key file) is not a usable Ed25519 seed."""


class SigningKey:
    """A thin wrapper so the rest of the code never imports nacl directly."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFileError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.seed = seed
        self.public_key: bytes = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        return cls(read_hex_secret(path, what="key file"))

    def save(self, path: Path) -> None:
        write_secret(path, self.seed.hex() + "\n", overwrite=True)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when signature is a valid Ed25519 signature of message by public_key."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True
