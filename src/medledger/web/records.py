"""The patient's local records that a token reaches: the rows of the portal and the
clinician timeline."""

from __future__ import annotations

from typing import Any

import orjson

from medledger.api.auth import allows
from medledger.api.fhir import LocalRecords
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims


def timeline_rows(svc: HospitalServices, pid: str, claims: Claims) -> list[dict[str, Any]]:
    """Local records of the patient that the token's scopes reach (as an API search would),
    newest first, with their source hospital."""
    from medledger.interop.metadata import extract_metadata

    rows = []
    for info in LocalRecords(svc).latest(pid):
        allowed = allows(claims, info.resource_type, "search")
        if allowed is None:
            continue
        resource = orjson.loads(svc.vault.get(info.rid))
        if not allowed.covers(resource):
            continue
        meta = extract_metadata(resource)
        rows.append(
            {
                "rid": info.rid,
                "type": info.resource_type,
                "date": meta.get("date") or "",
                "title": meta.get("title") or "",
                "code": meta.get("code") or "",
                "category": meta.get("category") or "",
                "source": info.custodian,
                "copy": info.is_copy,
            }
        )
    rows.sort(key=lambda r: r["date"], reverse=True)
    return rows
