"""One reader and one writer for every secret file (medledger.host.secretfile)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medledger.host.secretfile import (
    InsecureSecretFile,
    SecretFileError,
    SecretFileExists,
    SecretFileMissing,
    read_hex_secret,
    read_secret,
    write_secret,
)
from medledger.ledger.keys import SigningKey


def test_written_secret_reads_back_mode_0600_without_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "box.key"
    write_secret(path, "ab" * 32 + "\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_hex_secret(path) == bytes.fromhex("ab" * 32)
    assert [p.name for p in path.parent.iterdir()] == ["box.key"]


def test_write_never_replaces_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_secret(path, b"first")
    with pytest.raises(SecretFileExists, match="already exists"):
        write_secret(path, b"second")
    assert read_secret(path) == b"first"
    write_secret(path, b"second", overwrite=True)
    assert read_secret(path) == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_secret_open_to_group_or_others_is_refused_naming_the_file(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "org.key"
    write_secret(path, "00" * 32)
    path.chmod(mode)
    with pytest.raises(InsecureSecretFile, match=f"{path} has mode {mode:04o}.*chmod 600"):
        read_secret(path, what="key file")
    with pytest.raises(SecretFileError, match="chmod 600"):
        SigningKey.from_file(path)  # the ledger's key files go through the same reader


def test_secret_0400_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    write_secret(path, "11" * 32)
    path.chmod(0o400)
    assert read_hex_secret(path) == bytes.fromhex("11" * 32)


def test_symlink_missing_and_malformed_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_secret(real, "22" * 32)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InsecureSecretFile, match="symbolic link"):
        read_secret(link)
    with pytest.raises(SecretFileMissing, match=f"{tmp_path / 'absent'} does not exist"):
        read_secret(tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as missing:  # callers asking for the OS error get it
        read_secret(tmp_path / "absent")
    assert missing.value.filename == str(tmp_path / "absent")
    with pytest.raises(InsecureSecretFile, match="not a regular file"):
        read_secret(tmp_path)
    short = tmp_path / "short"
    write_secret(short, "33" * 16)
    with pytest.raises(SecretFileError, match="expected 32 bytes"):
        read_hex_secret(short)
    garbage = tmp_path / "garbage"
    write_secret(garbage, "not hex at all")
    with pytest.raises(SecretFileError, match=f"{garbage} is malformed: not hex") as info:
        read_hex_secret(garbage)
    assert "not hex at all" not in str(info.value)  # the content is never echoed


def test_signing_key_file_round_trip(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "org.key")
    key.save(tmp_path / "org.key")  # a signing key file may be rewritten (same as before)
    assert SigningKey.from_file(tmp_path / "org.key").public_key == key.public_key
