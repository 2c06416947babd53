"""Ed25519 signing keys (pynacl) and their files.

Key files hold the 32-byte seed in hex, mode 0600, written atomically so that a crash never
leaves a half-written key behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import nacl.exceptions
import nacl.signing


class KeyFileError(ValueError):
    pass


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
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"{path}: key file must not be readable by others (mode {mode:o})")
        try:
            seed = bytes.fromhex(path.read_text().strip())
        except ValueError:
            raise KeyFileError(f"{path}: not a hex Ed25519 seed") from None
        return cls(seed)

    def save(self, path: Path) -> None:
        write_secret(path, self.seed.hex() + "\n")

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


def write_secret(path: Path, text: str) -> None:
    """Write a secret file atomically with mode 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when signature is a valid Ed25519 signature of message by public_key."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True
