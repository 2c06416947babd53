"""Secret files (signing seeds, box and pseudonym keys, the vault's KEK, TLS keys): one
reader and one writer for all of them.

A secret file must be a regular file that only its owner may access: mode 0600
or stricter (0400 is fine). The reader opens it without following a symbolic
link (a link could point anywhere the attacker likes), then checks the type and
the mode on the opened descriptor, so a file swapped between check and read is
caught. The writer creates the file 0600 from its first byte under a temporary
name in the same folder, fsyncs it and moves it into place atomically, so a
crash never leaves a half-written or briefly readable secret; it never replaces
an existing file unless asked (replacing a KEK would make a whole vault
unreadable).

Every refusal is a `SecretFileError` whose message names the file. This module
imports nothing of medledger, so every layer (the ledger's keys, the vault, the
node) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

MAX_SECRET_BYTES = 64 * 1024  # a PEM key is a few hundred bytes; a seed 65


class SecretFileError(ValueError):
    """A secret file is missing, unsafe, too large or malformed; the message names it."""


class SecretFileMissing(SecretFileError, FileNotFoundError):
    """The secret file does not exist (also a FileNotFoundError, for callers that ask)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.filename = str(path)  # where the OS error would name it

    def __str__(self) -> str:
        return str(self.args[0])


class InsecureSecretFile(SecretFileError):
    """The secret file is a link, not a regular file, or group/others may access it."""


class SecretFileExists(SecretFileError, FileExistsError):
    """write_secret was asked not to replace a file that is already there."""


def read_secret(path: Path, *, what: str = "secret file") -> bytes:
    """The bytes of a secret file, after refusing a link, a non-regular file and any mode
    that lets group or others access it. `what` names the file in errors ("key file")."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted in place of a key is refused below, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SecretFileMissing(f"{what} {path} does not exist", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InsecureSecretFile(
                f"{what} {path} is a symbolic link; refusing to follow it"
            ) from None
        raise SecretFileError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InsecureSecretFile(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise InsecureSecretFile(
                f"{what} {path} has mode {mode:04o}: group/others may access it; "
                f"refusing to use it (fix with: chmod 600 {path})"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretFileError(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes")
    return data


def read_hex_secret(path: Path, *, size: int = 32, what: str = "secret file") -> bytes:
    """A `size`-byte secret stored as hex digits (one line) in a secret file."""
    text = read_secret(path, what=what).strip()
    try:
        data = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SecretFileError(f"{what} {path} is malformed: not hex digits") from None
    if len(data) != size:
        raise SecretFileError(f"{what} {path} is malformed: expected {size} bytes")
    return data


def write_secret(path: Path, data: bytes | str, *, overwrite: bool = False) -> None:
    """Write a secret file atomically, mode 0600 from its first byte.

    Without `overwrite` an existing file is never replaced: os.link fails
    atomically if the name exists, and SecretFileExists is raised.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise SecretFileExists(f"{path} already exists; not overwriting it") from None
            finally:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives a crash
    finally:
        os.close(dir_fd)
