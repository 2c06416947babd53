"""Record versions: vread (`GET /fhir/<Type>/<id>/_history/<n>`) and the instance history
(`GET /fhir/<Type>/<id>/_history`, a `history` Bundle, newest first).

Each version served is decided and logged like a read (its own category may differ from the
latest's). A version the caller may not see is not served, and not hidden either: its history
entry carries the request and a 403 `response.outcome` saying why. History takes no parameters
here (`_count`, `_since`, `_at`...): they are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from medledger.api import interactions, versions
from medledger.api import search as fhir_search
from medledger.api.auth import authenticated, require
from medledger.api.fhir import Svc, _in_scope, _meta_of, serve_version, stored, viewed
from medledger.api.outcomes import FhirError, fhir_response
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims


def make_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")

    @router.get("/{resource_type}/{rid}/_history/{vid}")
    def vread(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        rid: str,
        vid: str,
        request: Request,
    ) -> Response:
        interactions.check(resource_type, "vread")
        require(claims, resource_type, "read")
        view = fhir_search.read_view(resource_type, request.query_params.multi_items())
        if not vid.isdigit() or not 1 <= int(vid) < 2**62:
            raise FhirError(
                404, "not-found", f"{resource_type}/{rid}/_history/{vid}: no such version"
            )
        info = stored(svc, resource_type, rid, int(vid))
        body, headers = serve_version(svc, claims, info)
        return fhir_response(viewed(body, view), headers=headers)

    @router.get("/{resource_type}/{rid}/_history")
    def history(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        rid: str,
        request: Request,
    ) -> Response:
        interactions.check(resource_type, "history-instance")
        require(claims, resource_type, "read")
        if request.query_params:
            names = ", ".join(sorted(set(request.query_params.keys())))
            raise FhirError(
                400, "not-supported", f"history takes no parameters here (given: {names})"
            )
        latest = stored(svc, resource_type, rid)
        return fhir_response(_history_bundle(svc, claims, request, latest))

    return router


def _history_bundle(svc: HospitalServices, claims: Claims, request: Request, latest: Any) -> bytes:
    from medledger.contracts.authorize import Decision

    base = str(request.base_url)
    what = f"{latest.resource_type}/{latest.rid}"
    times = versions.registered_times(svc.node.engine, latest.rid)
    served: list[bytes] = []
    allowed: dict[str, set[str]] = {}  # basis -> rid, logged once each
    denied: dict[str, set[str]] = {}  # reason -> rid
    for number in sorted(svc.vault.versions(latest.rid), reverse=True):
        info = svc.vault.info(latest.rid, number)
        request_part = {
            "method": "POST" if number == 1 else "PUT",
            "url": latest.resource_type if number == 1 else what,
        }
        if not _in_scope(svc, claims, [info], "read"):
            reason = "outside the categories of your scopes"
        else:
            decision = svc.decide(claims, info.pid, _meta_of(svc, info), "treatment")
            if decision.allowed:
                allowed.setdefault(decision.basis, set()).add(info.rid)
                body = versions.with_meta(
                    svc.vault.get(info.rid, number), number, times.get(number)
                )
                response = {
                    "status": "201 Created" if number == 1 else "200 OK",
                    "etag": versions.etag(number),
                }
                if number in times:
                    response["lastModified"] = versions.instant(times[number])
                served.append(
                    b'{"fullUrl":'
                    + orjson.dumps(f"{base}fhir/{what}")
                    + b',"resource":'
                    + body
                    + b',"request":'
                    + orjson.dumps(request_part)
                    + b',"response":'
                    + orjson.dumps(response)
                    + b"}"
                )
                continue
            reason = f"access denied: {decision.reason}"
            denied.setdefault(decision.reason, set()).add(info.rid)
        served.append(orjson.dumps(_withheld(what, number, request_part, reason)))
    for reason, rids in sorted(denied.items()):  # every refusal is on the chain too
        svc.record_access(
            claims,
            latest.pid,
            "read",
            "treatment",
            Decision(False, "", reason),
            sorted(rids),
            wait=False,
        )
    for basis, rids in sorted(allowed.items()):
        svc.record_access(
            claims,
            latest.pid,
            "read",
            "treatment",
            Decision(True, basis, ""),
            sorted(rids),
            wait=False,
        )
    if not allowed:
        raise FhirError(403, "forbidden", f"{what}: no version of it may be served to you")
    head = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "history",
            "total": len(served),
            "link": [{"relation": "self", "url": str(request.url)}],
        }
    )
    return head[:-1] + b',"entry":[' + b",".join(served) + b"]}"


def _withheld(what: str, number: int, request: dict[str, str], reason: str) -> dict[str, Any]:
    """A history entry for a version not served: its request, and why (403)."""
    return {
        "request": request,
        "response": {
            "status": "403 Forbidden",
            "etag": versions.etag(number),
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "forbidden",
                        "diagnostics": f"{what}/_history/{number} withheld: {reason}",
                    }
                ],
            },
        },
    }
