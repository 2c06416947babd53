"""Key-encryption key (KEK) handling and the key hierarchy below it.

Key hierarchy (all keys 32 bytes):

    KEK (key file mode 0600, or environment variable)
     +- wrapping key   = HKDF(KEK, info="medledger/vault/v1/wrap")
     |    wraps, with AES-256-GCM, one random patient key per (patient, generation);
     |    the associated data binds each wrapped key to the hospital, pid and generation
     +- fingerprint    = HMAC(KEK, "medledger/vault/v1/kek-fingerprint")[:16]
          stored in the vault so that a wrong KEK is refused at open time

    patient key PK (random, stored only wrapped under the KEK)
     +- metadata key   = HKDF(PK, info="medledger/vault/v1/metadata" || hospital || pid || gen)
     +- digest key     = HKDF(PK, info="medledger/vault/v4/research-digest" || hospital
     |                        || pid || gen): seals the patient's research digest (digest.py)
     +- set wrapping   = HKDF(PK, info="medledger/vault/v2/set-wrap" || hospital || pid || gen)
          wraps one random set key per (patient, custodian) key set:
          the hospital's own records form one set (custodian = this hospital), the copies
          held of each other custodian's records one set each; the associated data binds a
          wrapped set key to the hospital, pid, generation, custodian, copy flag and set id

    set key SK (random, stored only wrapped under the patient key)
     +- record key     = HKDF(SK, info="medledger/vault/v2/record" || set context)
     +- salt key       = HKDF(SK, info="medledger/vault/v2/salt"   || set context)
          salt(rid, version) = HMAC-SHA256(salt key, rid || version)

Two levels, for two kinds of erasure. Deleting the one wrapped patient key row
crypto-shreds the whole patient in constant time: every set key was wrapped
under it. Deleting one wrapped set key row shreds the copies held of one
custodian's records apart, while the hospital's own records (under legal
retention) and the copies of other custodians stay readable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medledger.host.secretfile import (
    InsecureSecretFile,
    SecretFileError,
    SecretFileExists,
    SecretFileMissing,
    read_secret,
    write_secret,
)
from medledger.vault.errors import InsecureKeyFileError, KeyFileError, VaultIntegrityError

KEY_SIZE = 32
NONCE_SIZE = 12
DEFAULT_KEK_ENV = "MEDLEDGER_KEK"

_LABEL_WRAP = b"medledger/vault/v1/wrap"
_LABEL_FINGERPRINT = b"medledger/vault/v1/kek-fingerprint"
_LABEL_PATIENT_KEY_AAD = b"medledger/vault/v1/patient-key"
_LABEL_METADATA = b"medledger/vault/v1/metadata"
_LABEL_SALT_VALUE = b"medledger/vault/v1/salt-value"
_LABEL_SET_WRAP = b"medledger/vault/v2/set-wrap"
_LABEL_SET_KEY_AAD = b"medledger/vault/v2/set-key"
_LABEL_SET_RECORD = b"medledger/vault/v2/record"
_LABEL_SET_SALT = b"medledger/vault/v2/salt"
_LABEL_DIGEST = b"medledger/vault/v4/research-digest"
_LENGTH = struct.Struct(">I").pack  # a field's length prefix
_TRUE, _FALSE = b"\x01", b"\x00"


def encode_fields(*fields: bytes | str | int) -> bytes:
    """Length-prefix each field so that no two field lists encode to the same bytes.

    Used for every HKDF info, HMAC input and AEAD associated data: plain
    concatenation would let ("ab", "c") collide with ("a", "bc"). Encoding a list is
    encoding its parts one after the other, so a constant prefix can be encoded once.
    """
    parts: list[bytes] = []
    for value in fields:
        kind = type(value)  # the exact types first: called several times per record read
        if kind is str:
            raw = value.encode()  # type: ignore[union-attr]
        elif kind is bytes:
            raw = value
        elif kind is bool:
            raw = _TRUE if value else _FALSE
        elif kind is int:
            raw = value.to_bytes(8, "big", signed=True)  # type: ignore[union-attr]
        elif isinstance(value, bool):
            raw = _TRUE if value else _FALSE
        elif isinstance(value, int):
            raw = value.to_bytes(8, "big", signed=True)
        elif isinstance(value, str):
            raw = value.encode("utf-8")
        else:
            raw = bytes(value)
        parts += (_LENGTH(len(raw)), raw)
    return b"".join(parts)


#: The labels' encodings, prefixed to their contexts' (`encode_fields` concatenates).
_LABEL_METADATA_INFO = encode_fields(_LABEL_METADATA)
_LABEL_SET_WRAP_INFO = encode_fields(_LABEL_SET_WRAP)
_LABEL_SET_RECORD_INFO = encode_fields(_LABEL_SET_RECORD)
_LABEL_SET_SALT_INFO = encode_fields(_LABEL_SET_SALT)
_LABEL_DIGEST_INFO = encode_fields(_LABEL_DIGEST)


def hkdf(key: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 with an empty salt: the input keys are already uniformly random."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


# --------------------------------------------------------------------------- KEK


def parse_key_text(raw: bytes, *, allow_raw: bool = True) -> bytes:
    """Decode a 32-byte key given raw, as 64 hex digits, or as base64url (padded or not).

    Raw bytes are accepted only from key files (`allow_raw`): an environment
    variable of 32 characters is far more likely a password than a key.
    Raises ValueError (never echoing the key) when the text is none of these.
    """
    if allow_raw and len(raw) == KEY_SIZE:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_SIZE:
        with contextlib.suppress(binascii.Error, ValueError):
            return bytes.fromhex(text.decode("ascii"))
    if len(text) in (43, 44):
        with contextlib.suppress(binascii.Error, ValueError):
            padded = text.rstrip(b"=") + b"=" * (-len(text.rstrip(b"=")) % 4)
            key = base64.urlsafe_b64decode(padded)
            if len(key) == KEY_SIZE and base64.urlsafe_b64encode(key).rstrip(b"=") == text.rstrip(
                b"="
            ):
                return key
    raise ValueError(
        "expected a 32-byte key: raw bytes, 64 hex digits or base64url (43/44 characters)"
    )


def load_kek(path: Path | None, env_var: str = DEFAULT_KEK_ENV) -> bytes:
    """Load the hospital's key-encryption key from a key file, else from an env variable.

    The key file is read by medledger.host.secretfile: it must be a regular file (not
    a link) that neither group nor others can read or write (mode 0600 or
    stricter); anything looser is refused with InsecureKeyFileError instead of
    being silently used. The mode is checked on the opened descriptor, so a file
    swapped between check and read is caught.
    """
    if path is not None:
        try:
            raw = read_secret(Path(path), what="key file")
        except SecretFileMissing:
            raise KeyFileError(f"key file {path} does not exist (create it with init)") from None
        except InsecureSecretFile as exc:
            raise InsecureKeyFileError(str(exc)) from None
        except SecretFileError as exc:
            raise KeyFileError(str(exc)) from None
        try:
            return parse_key_text(raw)
        except ValueError as exc:
            raise KeyFileError(f"key file {path} is malformed: {exc}") from None
    value = os.environ.get(env_var)
    if value is None or not value.strip():
        raise KeyFileError(f"no key-encryption key: give a key file or set ${env_var}")
    try:
        return parse_key_text(value.encode("ascii", "strict"), allow_raw=False)
    except (ValueError, UnicodeEncodeError):
        raise KeyFileError(
            f"${env_var} is malformed: expected 64 hex digits or base64url of 32 bytes"
        ) from None


def create_kek_file(path: Path, *, overwrite: bool = False) -> bytes:
    """Write a new random KEK to `path` (mode 0600 from creation on) and return it.

    The key is written by medledger.host.secretfile.write_secret: to a temporary
    file created 0600 in the same folder, fsynced, then moved into place
    atomically, so a crash never leaves a half-written or briefly world-readable
    key. Without `overwrite` an existing file is never replaced (os.link fails
    atomically if the name exists): replacing a KEK would make every record of
    the vault unreadable.
    """
    key = secrets.token_bytes(KEY_SIZE)
    try:
        write_secret(Path(path), key.hex() + "\n", overwrite=overwrite)
    except SecretFileExists:
        raise KeyFileError(f"key file {path} already exists; not overwriting it") from None
    return key


def kek_fingerprint(kek: bytes) -> bytes:
    """A 16-byte public fingerprint of the KEK, stored in the vault to detect a wrong KEK."""
    return hmac.new(kek, _LABEL_FINGERPRINT, hashlib.sha256).digest()[:16]


# ----------------------------------------------------------------- patient keys


class RecordKeys:
    """Keys derived from one key set's data key; never stored, recomputed on demand.

    A key set is one patient's own records, or the copies held of one custodian's
    records for that patient (see the module docstring). Each key is derived when first
    used, then kept: a study query reading thousands of patients decrypts records and
    never asks a salt, so the salt key's HKDF is not paid there. The set key held instead
    of the two derived keys gives its holder nothing more than they did.
    """

    __slots__ = (
        "_aead",
        "_ctx",
        "_record_key",
        "_salt_key",
        "_set_key",
        "generation",
        "kid",
        "pid",
    )

    def __init__(self, pid: str, generation: int, kid: str, set_key: bytes, ctx: bytes) -> None:
        self.pid, self.generation, self.kid = pid, generation, kid
        self._set_key, self._ctx = set_key, ctx  # ctx: the set's encoded context (HKDF info)
        self._record_key: bytes | None = None
        self._salt_key: bytes | None = None
        self._aead: AESGCM | None = None

    def __repr__(self) -> str:
        return f"RecordKeys(pid={self.pid!r}, generation={self.generation}, kid={self.kid!r})"

    def __eq__(self, other: object) -> bool:  # the same set key in the same context
        return (
            isinstance(other, RecordKeys)
            and (self.pid, self.generation, self.kid, self._ctx)
            == (other.pid, other.generation, other.kid, other._ctx)
            and hmac.compare_digest(self._set_key, other._set_key)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def record_key(self) -> bytes:
        """HKDF(set key, "medledger/vault/v2/record" || set context)."""
        if self._record_key is None:
            self._record_key = hkdf(self._set_key, _LABEL_SET_RECORD_INFO + self._ctx)
        return self._record_key

    @property
    def salt_key(self) -> bytes:
        """HKDF(set key, "medledger/vault/v2/salt" || set context)."""
        if self._salt_key is None:
            self._salt_key = hkdf(self._set_key, _LABEL_SET_SALT_INFO + self._ctx)
        return self._salt_key

    def record_aead(self) -> AESGCM:
        """The record key's AES-GCM, built once per key set (every record of it uses it)."""
        if self._aead is None:
            self._aead = AESGCM(self.record_key)
        return self._aead

    def salt(self, rid: str, version: int) -> bytes:
        """Per-record salt for the chain commitment: HMAC(salt key, rid, version)."""
        return hmac.new(self.salt_key, encode_fields(rid, version), hashlib.sha256).digest()

    def salt_value_key(self) -> bytes:
        """Key that encrypts salts received with copies (the custodian's salts)."""
        return hkdf(self.salt_key, _LABEL_SALT_VALUE)


class PatientKeys:
    """Keys derived from one patient key; never stored, recomputed on demand.

    Each is derived when first used, then kept (a study query's read needs only the set
    wrapping key, never the metadata key); holding the patient key instead of its two
    derived keys gives nothing more."""

    __slots__ = (
        "_ctx",
        "_data_key",
        "_digest",
        "_metadata_key",
        "_set_wrap",
        "generation",
        "hospital_id",
        "pid",
    )

    def __init__(self, hospital_id: str, pid: str, generation: int, data_key: bytes) -> None:
        self.hospital_id, self.pid, self.generation = hospital_id, pid, generation
        self._data_key = data_key
        self._ctx = encode_fields(hospital_id, pid, generation)
        self._metadata_key: bytes | None = None
        self._set_wrap: AESGCM | None = None
        self._digest: AESGCM | None = None

    @property
    def context(self) -> bytes:
        """`encode_fields(hospital_id, pid, generation)`, encoded once: a prefix of the
        associated data of what is sealed under these keys."""
        return self._ctx

    def __repr__(self) -> str:
        return (
            f"PatientKeys(hospital_id={self.hospital_id!r}, pid={self.pid!r}, "
            f"generation={self.generation})"
        )

    def __eq__(self, other: object) -> bool:  # the same patient key, hence every derived key
        return (
            isinstance(other, PatientKeys)
            and (self.hospital_id, self.pid, self.generation)
            == (other.hospital_id, other.pid, other.generation)
            and hmac.compare_digest(self._data_key, other._data_key)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def metadata_key(self) -> bytes:
        """HKDF(PK, "medledger/vault/v1/metadata" || hospital || pid || generation)."""
        if self._metadata_key is None:
            self._metadata_key = hkdf(self._data_key, _LABEL_METADATA_INFO + self._ctx)
        return self._metadata_key

    @property
    def set_wrap_key(self) -> bytes:
        """HKDF(PK, "medledger/vault/v2/set-wrap" || hospital || pid || generation)."""
        return hkdf(self._data_key, _LABEL_SET_WRAP_INFO + self._ctx)

    @property
    def digest_key(self) -> bytes:
        """HKDF(PK, "medledger/vault/v4/research-digest" || hospital || pid || generation)."""
        return hkdf(self._data_key, _LABEL_DIGEST_INFO + self._ctx)

    def digest_aead(self) -> AESGCM:
        """The digest key's AES-GCM, built once (a study read opens one digest per patient)."""
        if self._digest is None:
            self._digest = AESGCM(self.digest_key)
        return self._digest

    def _set_aead(self) -> AESGCM:
        if self._set_wrap is None:
            self._set_wrap = AESGCM(self.set_wrap_key)
        return self._set_wrap

    def _set_aad(self, custodian: str, is_copy: bool, kid: str) -> bytes:
        return encode_fields(
            _LABEL_SET_KEY_AAD, self.hospital_id, self.pid, self.generation, custodian, is_copy, kid
        )

    def new_wrapped_set_key(self, custodian: str, is_copy: bool, kid: str) -> bytes:
        """Draw a fresh random set key and return it wrapped: nonce || ciphertext+tag."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        set_key = secrets.token_bytes(KEY_SIZE)
        aad = self._set_aad(custodian, is_copy, kid)
        return nonce + self._set_aead().encrypt(nonce, set_key, aad)

    def unwrap_set_key(self, custodian: str, is_copy: bool, kid: str, wrapped: bytes) -> RecordKeys:
        """Unwrap a key set's data key (its record and salt keys derive from it).

        Fails with VaultIntegrityError when the wrapped set key was changed, or
        moved to another patient, generation, custodian or set.
        """
        try:
            set_key = self._set_aead().decrypt(
                wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], self._set_aad(custodian, is_copy, kid)
            )
        except InvalidTag:
            raise VaultIntegrityError(
                f"the key set {kid} of patient {self.pid} ({'copies of ' if is_copy else ''}"
                f"{custodian}) failed authentication: the key row was altered or moved"
            ) from None
        ctx = encode_fields(self.hospital_id, self.pid, self.generation, custodian, is_copy, kid)
        return RecordKeys(self.pid, self.generation, kid, set_key, ctx)


class KeyRing:
    """Wraps and unwraps patient data keys under the hospital's KEK.

    Holds only the wrapping key derived from the KEK (the KEK itself is not
    kept), and never caches patient keys: every use unwraps the key row read
    in the same transaction, so an erasure done by another process is honoured
    at once.
    """

    __slots__ = ("_fingerprint", "_wrap", "hospital_id")

    def __init__(self, kek: bytes, hospital_id: str):
        if len(kek) != KEY_SIZE:
            raise KeyFileError(f"the KEK must be {KEY_SIZE} bytes, got {len(kek)}")
        self.hospital_id = hospital_id
        self._wrap = AESGCM(hkdf(kek, _LABEL_WRAP))
        self._fingerprint = kek_fingerprint(kek)

    @property
    def fingerprint(self) -> bytes:
        """Public fingerprint of the KEK (see kek_fingerprint)."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"KeyRing(hospital_id={self.hospital_id!r}, kek={self._fingerprint.hex()})"

    def _aad(self, pid: str, generation: int) -> bytes:
        return encode_fields(_LABEL_PATIENT_KEY_AAD, self.hospital_id, pid, generation)

    def new_wrapped_key(self, pid: str, generation: int) -> bytes:
        """Draw a fresh random patient key and return it wrapped: nonce || ciphertext+tag."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        data_key = secrets.token_bytes(KEY_SIZE)
        return nonce + self._wrap.encrypt(nonce, data_key, self._aad(pid, generation))

    def unwrap(self, pid: str, generation: int, wrapped: bytes) -> PatientKeys:
        """Unwrap a patient key and derive its metadata key and set wrapping key.

        Fails with VaultIntegrityError when the wrapped key was changed, moved
        to another pid or generation, or when the KEK is not the one that
        wrapped it.
        """
        try:
            data_key = self._wrap.decrypt(
                wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], self._aad(pid, generation)
            )
        except InvalidTag:
            raise VaultIntegrityError(
                f"the key of patient {pid} (generation {generation}) failed authentication: "
                "wrong KEK, or the key row was altered"
            ) from None
        return PatientKeys(self.hospital_id, pid, generation, data_key)
