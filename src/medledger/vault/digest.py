"""The sealed research digest: one row per patient, the facts of their latest own records.

A study query reads thousands of patients; decrypting each one's records (three to four
ciphertexts, their key set, their JSON) was most of a hospital's answer. The digest keeps,
per patient, what a `Digester` says of each latest version of the hospital's own records
(copies never: their custodian answers for them), `{rid: [version, facts]}`, as one AES-GCM
ciphertext under a key derived from the patient key (keys.py, "research-digest"). The vault
does not read the facts: the digester (interop.research_facts) makes them.

Staleness costs nothing to check: the associated data binds the own key set's id and its
running `manifest`, which every put and withdrawal of an own record extends, and the
digester's version. A digest sealed before any later change to the own records fails its tag
and is rebuilt from the records: it is never read stale. Erasure shreds it with the patient
key (and deletes its row); a restore or a replica leaves it out (derived: rebuilt on first
read).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag

from medledger.vault.keys import NONCE_SIZE, PatientKeys, encode_fields

_LABEL_DIGEST_AAD = encode_fields(b"medledger/vault/v4/research-digest-aad")

#: rid -> [version, facts]: the facts of the latest own version of each record.
Entries = dict[str, list[Any]]


class Digester(Protocol):
    """Says what a study can ask of one record; `version` names the facts' shape."""

    @property
    def version(self) -> str: ...

    def __call__(self, resource: dict[str, Any]) -> Any:
        """The record's facts, as JSON can encode them."""
        ...


def digest_aad(keys: PatientKeys, kid: str, manifest: bytes, version: str) -> bytes:
    """What a digest is bound to: hospital, patient, generation, own key set and its manifest
    (the own records' state), and the digester's version."""
    return _LABEL_DIGEST_AAD + encode_fields(
        keys.hospital_id, keys.pid, keys.generation, kid, manifest, version
    )


def seal_digest(keys: PatientKeys, aad: bytes, entries: Entries) -> bytes:
    """nonce || ciphertext+tag of the entries."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + keys.digest_aead().encrypt(nonce, orjson.dumps(entries), aad)


def open_digest(keys: PatientKeys, aad: bytes, sealed: bytes) -> Entries | None:
    """The entries, or None when the digest is stale (sealed for another state of the own
    records, or by another digester version) or was altered: the caller rebuilds it."""
    try:
        plain = keys.digest_aead().decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        return None
    entries = orjson.loads(plain)
    return entries if isinstance(entries, dict) else None
