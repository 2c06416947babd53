"""The names under which a hospital finds again what it stored: senders' ids and identifiers.

A sender refers to a resource by its own id (`Patient/123` in its id space, its `source
system`), or by an identifier (`Patient?identifier=system|value`); we store under fresh rids.
The vault keeps, next to each record, opaque *aliases* (`Vault.remember`): HMAC-SHA256, under
a key derived from the hospital's pseudonym key, of

- `("source", source system, resource type, sender's id)`, and
- `("identifier", resource type, "system|value")` (canonical, as pseudonyms are: an INS is
  normalised, a bare OID becomes `urn:oid:`),

so that a Patient identifier (a direct identifier) is never at rest in clear, and the vault
never learns what an alias names. This module computes them; the vault finds the rids.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from typing import Any

from medledger.interop.ins import is_ins_system
from medledger.interop.pseudonym import canonical_identifier, canonical_system
from medledger.vault.keys import encode_fields

_LABEL_KEY = b"medledger/node/v1/alias-key"


class Aliases:
    """Alias computation for one hospital (`org`) under its pseudonym key."""

    def __init__(self, pseudonym_key: bytes, org: str) -> None:
        self._key = hmac.new(
            bytes(pseudonym_key), encode_fields(_LABEL_KEY, org), hashlib.sha256
        ).digest()

    def _mac(self, *fields: str) -> bytes:
        return hmac.new(self._key, encode_fields(*fields), hashlib.sha256).digest()

    def source(self, system: str, resource_type: str, source_id: str) -> bytes:
        """The alias of a sender's id for a resource, in the sender's id space `system`."""
        return self._mac("source", system, resource_type, source_id)

    def identifier(self, resource_type: str, system: str, value: str) -> bytes | None:
        """The alias of an identifier of a resource; None when it names nothing usable."""
        try:
            canonical = canonical_identifier(system, value)
        except ValueError:  # an empty part, a '|' in the system, an invalid INS
            return None
        return self._mac("identifier", resource_type, canonical)

    def identifiers(self, resource: Mapping[str, Any]) -> list[bytes]:
        """The aliases of every identifier (with a system and a value) of a resource, INS first.

        Takes `identifier` as a list (most types) or a single object (Bundle)."""
        resource_type = str(resource.get("resourceType"))
        raw = resource.get("identifier")
        found: list[tuple[bool, bytes]] = []
        for ident in raw if isinstance(raw, list) else [raw]:
            if not isinstance(ident, Mapping):
                continue
            system, value = ident.get("system"), ident.get("value")
            if not isinstance(system, str) or not isinstance(value, str):
                continue
            alias = self.identifier(resource_type, system, value)
            if alias is not None:
                found.append((not is_ins_system(canonical_system(system)), alias))
        found.sort(key=lambda pair: pair[0])  # stable: INS first, then in the sender's order
        return list(dict.fromkeys(alias for _, alias in found))

    def search(self, resource_type: str, query: str) -> bytes | None:
        """The alias a search `identifier=system|value` looks for; None for any other search
        (several parameters, another parameter, an identifier without a system)."""
        name, eq, value = query.partition("=")
        if name != "identifier" or not eq or "&" in value:
            return None
        system, bar, code = urllib.parse.unquote(value).partition("|")
        if not bar or not system or not code:
            return None
        return self.identifier(resource_type, system, code)
