"""KEK files and environment, key wrapping and derivation."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.vault import InsecureKeyFileError, KeyFileError, create_kek_file, load_kek
from medledger.vault.errors import VaultIntegrityError
from medledger.vault.keys import KeyRing, encode_fields, hkdf, kek_fingerprint

PID_A = "a" * 64
PID_B = "b" * 64


@pytest.fixture
def no_env_kek(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MEDLEDGER_KEK", raising=False)
    yield


def test_create_kek_file_is_0600_and_loads_back(tmp_path: Path, no_env_kek: None) -> None:
    path = tmp_path / "keys" / "kek"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        key = create_kek_file(path)
    finally:
        os.umask(old_umask)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_kek(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["kek"]  # no temp file left behind


def test_create_kek_file_never_overwrites_by_default(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    first = create_kek_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_kek_file(path)
    assert load_kek(path) == first
    second = create_kek_file(path, overwrite=True)
    assert second != first
    assert load_kek(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek"
    create_kek_file(path)
    path.chmod(mode)
    with pytest.raises(InsecureKeyFileError, match=r"chmod 600") as info:
        load_kek(path)
    assert f"{mode:04o}" in str(info.value)


def test_key_file_0400_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    key = create_kek_file(path)
    path.chmod(0o400)
    assert load_kek(path) == key


def test_key_file_symlink_missing_and_malformed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    create_kek_file(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(KeyFileError):
        load_kek(link)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_kek(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.write_bytes(b"not a key at all\n")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed") as info:
        load_kek(bad)
    assert "not a key" not in str(info.value)  # the content is never echoed


def test_raw_binary_key_file(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    path = tmp_path / "kek.bin"
    path.write_bytes(key)
    path.chmod(0o600)
    assert load_kek(path) == key


def test_kek_from_env_hex_and_base64url(monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    for text in (
        key.hex(),
        key.hex().upper(),
        base64.urlsafe_b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        f"  {key.hex()}\n",
    ):
        monkeypatch.setenv("MEDLEDGER_KEK", text)
        assert load_kek(None) == key
    monkeypatch.setenv("OTHER_KEK", key.hex())
    assert load_kek(None, env_var="OTHER_KEK") == key


def test_key_file_takes_precedence_over_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLEDGER_KEK", secrets.token_bytes(32).hex())
    file_key = create_kek_file(tmp_path / "kek")
    assert load_kek(tmp_path / "kek") == file_key


@pytest.mark.parametrize(
    "value",
    ["", "   ", "zz" * 32, "ab" * 31, "x" * 32, "password1234567890123456789012345", "é" * 64],
)
def test_bad_env_kek_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MEDLEDGER_KEK", value)
    with pytest.raises(KeyFileError):
        load_kek(None)


def test_missing_env_kek(no_env_kek: None) -> None:
    with pytest.raises(KeyFileError, match=r"\$MEDLEDGER_KEK"):
        load_kek(None)


def test_encode_fields_is_unambiguous() -> None:
    assert encode_fields("ab", "c") != encode_fields("a", "bc")
    assert encode_fields(1, "x") != encode_fields("1", "x")
    assert encode_fields(True) != encode_fields(1)


def test_wrapped_key_is_bound_to_hospital_pid_and_generation() -> None:
    kek = secrets.token_bytes(32)
    ring = KeyRing(kek, "hosp-a")
    wrapped = ring.new_wrapped_key(PID_A, 1)
    keys = ring.unwrap(PID_A, 1, wrapped)
    assert ring.unwrap(PID_A, 1, wrapped) == keys  # deterministic derivation
    with pytest.raises(VaultIntegrityError):
        ring.unwrap(PID_B, 1, wrapped)
    with pytest.raises(VaultIntegrityError):
        ring.unwrap(PID_A, 2, wrapped)
    with pytest.raises(VaultIntegrityError):
        KeyRing(kek, "hosp-b").unwrap(PID_A, 1, wrapped)
    with pytest.raises(VaultIntegrityError):
        KeyRing(secrets.token_bytes(32), "hosp-a").unwrap(PID_A, 1, wrapped)
    flipped = bytearray(wrapped)
    flipped[-1] ^= 1
    with pytest.raises(VaultIntegrityError):
        ring.unwrap(PID_A, 1, bytes(flipped))


def test_derived_keys_and_salts_are_distinct() -> None:
    ring = KeyRing(secrets.token_bytes(32), "hosp-a")
    a = ring.unwrap(PID_A, 1, ring.new_wrapped_key(PID_A, 1))
    b = ring.unwrap(PID_B, 1, ring.new_wrapped_key(PID_B, 1))
    # Under each patient key: the own records' set and one set per custodian of copies.
    a_own = a.unwrap_set_key("hosp-a", False, "k1", a.new_wrapped_set_key("hosp-a", False, "k1"))
    a_copies = a.unwrap_set_key("hosp-b", True, "k2", a.new_wrapped_set_key("hosp-b", True, "k2"))
    b_own = b.unwrap_set_key("hosp-a", False, "k3", b.new_wrapped_set_key("hosp-a", False, "k3"))
    derived = {a.metadata_key, a.set_wrap_key, b.metadata_key, b.set_wrap_key}
    derived |= {k for s in (a_own, a_copies, b_own) for k in (s.record_key, s.salt_key)}
    assert len(derived) == 10 and all(len(k) == 32 for k in derived)
    salts = {a_own.salt("r1", 1), a_own.salt("r1", 2), a_own.salt("r2", 1), b_own.salt("r1", 1)}
    salts.add(a_copies.salt("r1", 1))
    assert len(salts) == 5
    assert a_own.salt("r1", 1) == a_own.salt("r1", 1)
    assert repr(a_own.record_key) not in repr(a_own) and repr(a_own.salt_key) not in repr(a_own)
    assert repr(a.metadata_key) not in repr(a) and repr(a.set_wrap_key) not in repr(a)
    assert kek_fingerprint(b"k" * 32) != kek_fingerprint(b"l" * 32)


def test_set_key_is_bound_to_its_patient_custodian_and_set() -> None:
    ring = KeyRing(secrets.token_bytes(32), "hosp-a")
    a = ring.unwrap(PID_A, 1, ring.new_wrapped_key(PID_A, 1))
    b = ring.unwrap(PID_B, 1, ring.new_wrapped_key(PID_B, 1))
    wrapped = a.new_wrapped_set_key("hosp-b", True, "k1")
    assert a.unwrap_set_key("hosp-b", True, "k1", wrapped) == a.unwrap_set_key(
        "hosp-b", True, "k1", wrapped
    )
    for custodian, is_copy, kid, patient in (
        ("hosp-c", True, "k1", a),  # presented as another custodian's copies
        ("hosp-b", False, "k1", a),  # as own records
        ("hosp-b", True, "k2", a),  # as another set
        ("hosp-b", True, "k1", b),  # under another patient's key
    ):
        with pytest.raises(VaultIntegrityError, match="key set"):
            patient.unwrap_set_key(custodian, is_copy, kid, wrapped)


def test_keyring_repr_hides_the_kek() -> None:
    kek = secrets.token_bytes(32)
    text = repr(KeyRing(kek, "hosp-a"))
    assert kek.hex() not in text and "hosp-a" in text


def test_keys_derived_on_first_use_are_the_documented_derivations() -> None:
    # Each key is now derived when first asked (a study query never asks the metadata or
    # salt keys): the values must stay those of the module's hierarchy, or every vault
    # written before would become unreadable.
    kek = secrets.token_bytes(32)
    ring = KeyRing(kek, "hosp-a")
    wrapped = ring.new_wrapped_key(PID_A, 3)
    patient_key = AESGCM(hkdf(kek, b"medledger/vault/v1/wrap")).decrypt(
        wrapped[:12],
        wrapped[12:],
        encode_fields(b"medledger/vault/v1/patient-key", "hosp-a", PID_A, 3),
    )
    keys = ring.unwrap(PID_A, 3, wrapped)
    ctx = ("hosp-a", PID_A, 3)
    set_wrap_key = hkdf(patient_key, encode_fields(b"medledger/vault/v2/set-wrap", *ctx))
    assert keys.set_wrap_key == set_wrap_key
    assert keys.metadata_key == hkdf(
        patient_key, encode_fields(b"medledger/vault/v1/metadata", *ctx)
    )

    set_wrapped = keys.new_wrapped_set_key("hosp-b", True, "k9")
    set_key = AESGCM(set_wrap_key).decrypt(
        set_wrapped[:12],
        set_wrapped[12:],
        encode_fields(b"medledger/vault/v2/set-key", *ctx, "hosp-b", True, "k9"),
    )
    copies = keys.unwrap_set_key("hosp-b", True, "k9", set_wrapped)
    set_ctx = (*ctx, "hosp-b", True, "k9")
    assert copies.record_key == hkdf(set_key, encode_fields(b"medledger/vault/v2/record", *set_ctx))
    assert copies.salt_key == hkdf(set_key, encode_fields(b"medledger/vault/v2/salt", *set_ctx))
    assert copies == keys.unwrap_set_key("hosp-b", True, "k9", set_wrapped)
    assert "k9" in repr(copies) and set_key.hex() not in repr(copies)
