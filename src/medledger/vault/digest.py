"""The sealed research digest: per patient, one row per consent category, and an index row.

A study query reads thousands of patients; decrypting each one's records (three to four
ciphertexts, their key set, their JSON) was most of a hospital's answer. The digest keeps,
per patient and consent category, what a `Digester` says of each latest version of the
hospital's own records of that category (copies never: their custodian answers for them),
`{rid: [version, facts]}`, as one AES-GCM ciphertext under a key derived from the patient
key (keys.py, "research-digest"). A study reads only the rows of the categories its consent
allows: the facts of a category the patient did not consent to are never decrypted for it.
The vault does not read the facts: the digester (interop.research_facts) makes them and says
their category.

Staleness costs nothing to check, per category. The patient's index row (category `INDEX`)
binds the own key set's id and running `manifest` (every put and withdrawal of an own record
extends it) and the digester's version; it lists the categories that have a row, each with a
random tag that row's associated data binds (with the category: a row moved to another
category or patient fails its tag), and the categories known to be empty. A put reseals the
index and the rows of the categories it writes only: the others' tags stay valid. Any other
change to the own records stales the index, so every row; a row replaced or rolled back
fails its tag; a category the index does not know is rebuilt from the records of the types
it can hold. A row past `ROW_BOUND` is not kept by puts (rebuilt by its readers). Never read
stale. Erasure shreds the rows with the patient key (and deletes
them); a restore or a replica leaves them out (derived: rebuilt on first read).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag

from medledger.vault.keys import NONCE_SIZE, PatientKeys, encode_fields

_LABEL_INDEX_AAD = encode_fields(b"medledger/vault/v5/research-digest-index-aad")
_LABEL_ROW_AAD = encode_fields(b"medledger/vault/v5/research-digest-row-aad")

#: The category name of a patient's index row (no consent category is written so).
INDEX = "*"
#: "Every category", in an index's `empty`: a patient whose own records were all digested.
EVERY = "*"

#: The largest sealed row a put opens or reseals (bytes; ~280 readings' facts of ~115 bytes).
#: A put folds its records into the rows of their categories; past this, the row is dropped
#: (the index forgets its category) and the next reader rebuilds it from the records, so a
#: put's digest work never grows with the patient's history (a bedside monitor's reading a
#: minute): at most one such row read, opened and resealed per category it writes.
ROW_BOUND = 32 * 1024

#: rid -> [version, facts]: the facts of the latest own version of each record.
Entries = dict[str, list[Any]]


class Digester(Protocol):
    """Says what a study can ask of one record and its consent category; `version` names the
    facts' shape."""

    @property
    def version(self) -> str: ...

    def __call__(self, resource: dict[str, Any]) -> tuple[str, Any]:
        """The record's consent category, and its facts as JSON can encode them."""
        ...

    def types_in(self, categories: Collection[str]) -> Collection[str] | None:
        """The resource types whose records can fall in these categories (None: any type):
        a rebuild decrypts only those."""
        ...


@dataclass
class Index:
    """What a patient's digest rows are: `rows` category -> tag (its row's binding), `empty`
    the categories known to hold nothing (`EVERY`, or a list)."""

    rows: dict[str, str] = field(default_factory=dict)
    empty: str | list[str] = field(default_factory=list)

    def knows(self, category: str) -> bool:
        """Whether the rows say all of this category (a row, or known empty)."""
        return category in self.rows or self.empty == EVERY or category in self.empty

    def build(self, category: str, tag: str | None) -> None:
        """The category is now known: a row with `tag`, or empty (None)."""
        self.rows.pop(category, None)
        if tag is not None:
            self.rows[category] = tag
            if self.empty != EVERY and category in self.empty:
                self.empty = [c for c in self.empty if c != category]
        elif self.empty != EVERY and category not in self.empty:
            self.empty = sorted([*self.empty, category])

    def forget(self, category: str) -> bool:
        """The category is no longer known (its row dropped: rebuilt by its next reader);
        False when the index cannot say so (`empty` is EVERY: every other category known)."""
        if self.empty == EVERY:
            return False
        self.rows.pop(category, None)
        self.empty = [c for c in self.empty if c != category]
        return True


def index_aad(keys: PatientKeys, kid: str, manifest: bytes, version: str) -> bytes:
    """What an index is bound to: hospital, patient, generation, own key set and its manifest
    (the own records' state), and the digester's version."""
    return _LABEL_INDEX_AAD + keys.context + encode_fields(kid, manifest, version)


def row_aad(keys: PatientKeys, category: str, tag: str, version: str) -> bytes:
    """What a category's row is bound to: hospital, patient, generation, its category, the tag
    its index lists for it, and the digester's version."""
    return _LABEL_ROW_AAD + keys.context + encode_fields(category, tag, version)


def new_tag() -> str:
    """A fresh row tag (a row resealed gets a new one: the older row no longer opens)."""
    return os.urandom(16).hex()


def seal_digest(keys: PatientKeys, aad: bytes, payload: Any) -> bytes:
    """nonce || ciphertext+tag of the payload (a row's entries, an index's fields)."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + keys.digest_aead().encrypt(nonce, orjson.dumps(payload), aad)


def open_digest(keys: PatientKeys, aad: bytes, sealed: bytes) -> Any:
    """The payload, or None when it fails its tag (stale: sealed for another state of the own
    records, another tag or category, or by another digester version; or altered)."""
    try:
        plain = keys.digest_aead().decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        return None
    return orjson.loads(plain)


def seal_index(keys: PatientKeys, aad: bytes, index: Index) -> bytes:
    return seal_digest(keys, aad, {"rows": index.rows, "empty": index.empty})


def open_index(keys: PatientKeys, aad: bytes, sealed: bytes | None) -> Index | None:
    """The index, or None when missing or stale (every row of the patient is then stale)."""
    payload = None if sealed is None else open_digest(keys, aad, sealed)
    if not isinstance(payload, dict):
        return None
    return Index(dict(payload["rows"]), payload["empty"])


def open_row(
    keys: PatientKeys, index: Index, category: str, sealed: bytes | None, version: str
) -> Entries | None:
    """The category's entries ({} when the index knows it empty), or None when the index does
    not know it or its row is missing or fails its tag: rebuilt from the records."""
    tag = index.rows.get(category)
    if tag is None:
        return {} if index.knows(category) else None
    entries = (
        None if sealed is None else open_digest(keys, row_aad(keys, category, tag, version), sealed)
    )
    return entries if isinstance(entries, dict) else None
