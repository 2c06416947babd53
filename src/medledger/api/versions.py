"""A record version as the FHIR API serves it: `meta.versionId`, `meta.lastUpdated`, `ETag`.

The vault keeps the bytes a hospital sent; the version number and the time it was registered
are the server's, so they are set on the way out: `versionId` is the vault's version, and
`lastUpdated` the time the chain registered that version (the block time of its `records`
entry, the same for every hospital holding a copy). A resource sent without `meta` keeps its
exact bytes after the added `meta`; one with a `meta` of its own has it rewritten. A document
Bundle is served exactly as it came (its `ETag` and `Last-Modified` only).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson

from medledger.contracts import queries
from medledger.vault import Vault


def etag(version: int) -> str:
    return f'W/"{version}"'


def instant(ms: int) -> str:
    """A FHIR instant (UTC, milliseconds) of a block time."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def registered_times(engine: queries.Queryable, rid: str) -> dict[int, int]:
    """version -> block time (ms) at which the chain registered it (empty if not yet)."""
    return {int(row["version"]): int(row["time"]) for row in queries.record_versions(engine, rid)}


def with_meta(raw: bytes, version: int, updated_ms: int | None) -> bytes:
    """The stored bytes with the server's `meta.versionId` (and `lastUpdated` when known)."""
    meta: dict[str, Any] = {"versionId": str(version)}
    if updated_ms is not None:
        meta["lastUpdated"] = instant(updated_ms)
    resource = orjson.loads(raw)
    if "meta" not in resource:  # keep the bytes as received: splice meta in front
        head = raw.lstrip()
        body = head[1:].lstrip()
        sep = b"" if body.startswith(b"}") else b","
        return b'{"meta":' + orjson.dumps(meta) + sep + body
    own = resource["meta"] if isinstance(resource["meta"], dict) else {}
    resource["meta"] = own | meta
    return orjson.dumps(resource)


def headers(version: int, updated_ms: int | None) -> dict[str, str]:
    found = {"ETag": etag(version)}
    if updated_ms is not None:
        when = datetime.fromtimestamp(updated_ms / 1000, UTC)
        found["Last-Modified"] = format_datetime(when, usegmt=True)
    return found


def served(
    vault: Vault, engine: queries.Queryable, rid: str, version: int | None = None
) -> tuple[bytes, dict[str, str], int]:
    """(body with meta, ETag/Last-Modified headers, version) of a stored record version."""
    info = vault.info(rid, version)
    updated = registered_times(engine, rid).get(info.version)
    raw = vault.get(rid, info.version)
    if info.resource_type == "Bundle":  # a document is served as it came (its meta its own)
        return raw, headers(info.version, updated), info.version
    return with_meta(raw, info.version, updated), headers(info.version, updated), info.version
