"""FHIR writes: create, conditional create (`If-None-Exist`), update (`PUT`), transaction.

Every write goes through the hospital's ingestion (`Ingestor.ingest_bytes`), the path files and
HL7 feeds take: a create is the resource alone; an update and a conditional create are a
one-entry transaction Bundle whose entry carries the `request` (`PUT Type/id`,
`ifNoneExist`), so the ingestion decides them as it decides the same entry in a file.

Who writes is checked before the body is read: an active practitioner of this hospital with a
care role, or one of its system clients (`HospitalServices.author_of`); the registration names
that author and writes the `create` entries of the access trail in the same tx. The body must
be FHIR JSON (415 otherwise), of the type of the URL (400), within `api.max_body_bytes` (413,
`app.BodyLimit`). A conditional create (`If-None-Exist`, or the same criteria as the POST's
query, as fhirpy sends them) that matches one resource answers it (200, decided and logged
like a read), several: 412. An update names the stored resource in its URL and body
(400 if they differ), may be guarded by `If-Match: W/"n"` (412 if the resource moved on), and
never moves a record to another patient nor touches a copy held for another hospital.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from medledger.api import interactions, versions
from medledger.api.auth import authenticated, require
from medledger.api.fhir import Svc, serve_version, stored
from medledger.api.outcomes import FhirError, check_media_type, fhir_response
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims

#: The search parameters an `If-None-Exist` may use (anything else is refused, never ignored).
CONDITIONAL_PARAMETERS = ("identifier", "_id")


def make_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")

    @router.post("/{resource_type}")
    async def create(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        request: Request,
    ) -> Response:
        interactions.check(resource_type, "create")
        require(claims, resource_type, "create")
        author = await _author(svc, claims)
        check_media_type(request)
        body = await request.body()  # bounded by app.BodyLimit
        _resource_of(body, resource_type)
        criteria = request.headers.get("if-none-exist")
        if request.url.query:  # the criteria as query parameters, as fhirpy sends them
            if criteria is not None:
                raise FhirError(
                    400, "invalid", "conditional create: If-None-Exist or a query, not both"
                )
            criteria = request.url.query
        if criteria is None:
            created = await _write(svc, request, body, f"{resource_type}.json", author)
            if created is None:
                raise FhirError(409, "conflict", f"{resource_type}: nothing was stored")
            return created
        found = _matches(svc, resource_type, criteria)
        if len(found) > 1:
            raise FhirError(
                412,
                "duplicate",
                f"If-None-Exist: {len(found)} {resource_type} resources match; "
                "a conditional create needs at most one",
            )
        if found:
            return _existing(svc, claims, request, found[0])
        entry = {"method": "POST", "url": resource_type, "ifNoneExist": criteria}
        response = await _write(
            svc, request, _transaction(body, entry), f"{resource_type}.json", author
        )
        if response is None:  # the ingestion found it meanwhile (its own conditional rule)
            again = _matches(svc, resource_type, criteria)
            if len(again) != 1:
                raise FhirError(409, "conflict", "If-None-Exist: a concurrent write; retry")
            return _existing(svc, claims, request, again[0])
        return response

    @router.put("/{resource_type}/{rid}")
    async def update(
        svc: Svc,
        claims: Annotated[Claims, Depends(authenticated)],
        resource_type: str,
        rid: str,
        request: Request,
    ) -> Response:
        interactions.check(resource_type, "update")
        require(claims, resource_type, "update")
        author = await _author(svc, claims)
        check_media_type(request)
        body = await request.body()
        resource = _resource_of(body, resource_type)
        if resource.get("id") != rid:
            raise FhirError(
                400,
                "invalid",
                f"id: the body's id {resource.get('id')!r} is not the URL's {rid!r}",
                "id",
            )
        current = _current(svc, resource_type, rid)
        if current is not None:
            _check_update(svc, current, resource, request.headers.get("if-match"))
        entry = {"method": "PUT", "url": f"{resource_type}/{rid}"}
        response = await _write(
            svc, request, _transaction(body, entry), f"{resource_type}.json", author, current
        )
        if response is None:
            raise FhirError(409, "conflict", f"{resource_type}/{rid}: nothing was stored")
        return response

    @router.post("")
    async def transaction(
        svc: Svc, claims: Annotated[Claims, Depends(authenticated)], request: Request
    ) -> Response:
        require(claims, "Bundle", "create")
        author = await _author(svc, claims)
        check_media_type(request)
        body = await request.body()
        _check_transaction_scopes(claims, body)
        result = await _ingest(svc, body, "transaction.json", author)
        base = str(request.base_url)
        entries = []
        for rid in result.rids:
            info = svc.vault.info(rid)
            updated = versions.registered_times(svc.node.engine, rid).get(info.version)
            response: dict[str, Any] = {
                "status": "201 Created" if info.version == 1 else "200 OK",
                "location": _location(base, info),
                "etag": versions.etag(info.version),
            }
            if updated is not None:
                response["lastModified"] = versions.instant(updated)
            entries.append({"response": response})
        return fhir_response(
            orjson.dumps(
                {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
            )
        )

    return router


async def _author(svc: HospitalServices, claims: Claims) -> str:
    import anyio

    # Who writes is checked on the chain before the body is even read.
    author: str = await anyio.to_thread.run_sync(svc.author_of, claims)
    return author


async def _ingest(svc: HospitalServices, body: bytes, source: str, author: str) -> Any:
    import anyio

    # The writer's own ids are an id space of their own: the same id sent again by the same
    # writer is the same resource (unchanged, or a new version), never a duplicate.
    sender = f"urn:medledger:api:{author}" if author else ""
    result = await anyio.to_thread.run_sync(
        lambda: svc.ingestor.ingest_bytes(body, source, author=author, sender=sender)
    )
    if result.rejections:
        first = result.rejections[0]
        raise FhirError(422, "invalid", f"{first.where}: {first.reason}".strip(": "), first.where)
    return result


async def _write(
    svc: HospitalServices,
    request: Request,
    body: bytes,
    source: str,
    author: str,
    current: Any = None,
) -> Response | None:
    """Ingest one resource; answer it as stored (201 new, 200 a new version or unchanged),
    or None when the ingestion stored nothing (a conditional create it matched itself)."""
    result = await _ingest(svc, body, source, author)
    if not result.rids:
        return None
    info = svc.vault.info(result.rids[0])
    if current is not None and info.rid != current.rid:
        raise FhirError(
            409,
            "conflict",
            f"{current.resource_type}/{current.rid}: the ingestion stored "
            f"{info.resource_type}/{info.rid} instead",
        )
    served, headers, version = versions.served(svc.vault, svc.node.engine, info.rid)
    created = current is None and version == 1 and not result.unchanged
    headers["Location"] = _location(str(request.base_url), info, version)
    return fhir_response(served, 201 if created else 200, headers)


def _location(base: str, info: Any, version: int | None = None) -> str:
    return f"{base}fhir/{info.resource_type}/{info.rid}/_history/{version or info.version}"


def _resource_of(body: bytes, resource_type: str) -> dict[str, Any]:
    """The body as a JSON object of the URL's type (400 otherwise)."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, "invalid", f"body is not JSON: {exc}") from None
    if not isinstance(resource, dict):
        raise FhirError(400, "invalid", "body is not a FHIR resource (a JSON object)")
    found = resource.get("resourceType")
    if found != resource_type:
        raise FhirError(
            400,
            "invalid",
            f"resourceType: {found!r} sent to /fhir/{resource_type}",
            "resourceType",
        )
    return resource


def _transaction(body: bytes, request: dict[str, str]) -> bytes:
    """A one-entry transaction Bundle around the resource, carrying its request."""
    return (
        b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
        + body
        + b',"request":'
        + orjson.dumps(request)
        + b"}]}"
    )


def _current(svc: HospitalServices, resource_type: str, rid: str) -> Any:
    """The stored record an update names: None when the id is not stored here (the update
    creates it), 400 when it is another type's, 410 when its patient was erased."""
    from medledger.vault.errors import PatientErased, RecordNotFound

    try:
        info = svc.vault.info(rid)
    except RecordNotFound:
        return None
    except PatientErased:
        raise FhirError(410, "deleted", f"{resource_type}/{rid} was erased") from None
    if info.resource_type != resource_type:
        raise FhirError(
            400, "invalid", f"{resource_type}/{rid}: {rid} is not a {resource_type} here"
        )
    return info


def _check_update(
    svc: HospitalServices, current: Any, resource: dict[str, Any], if_match: str | None
) -> None:
    what = f"{current.resource_type}/{current.rid}"
    if current.is_copy:
        raise FhirError(
            403,
            "forbidden",
            f"{what} is {current.custodian}'s record held here as a copy: only its custodian "
            "updates it",
        )
    if if_match is not None and if_match.strip() not in (
        versions.etag(current.version),
        f'"{current.version}"',
    ):
        raise FhirError(
            412,
            "conflict",
            f"If-Match: {what} is at version {current.version} ({versions.etag(current.version)})",
        )
    if current.resource_type == "Patient":
        from medledger.interop.pseudonym import NoPatientIdentifier, patient_pid

        try:
            pid = patient_pid(svc.node.config.pseudonym_key(), resource)
        except (NoPatientIdentifier, ValueError) as exc:
            raise FhirError(400, "invalid", f"identifier: {exc}", "identifier") from None
        if pid != current.pid:
            raise FhirError(
                400,
                "invalid",
                f"identifier: names another patient than {what}; a record never changes patient",
                "identifier",
            )


def _existing(svc: HospitalServices, claims: Claims, request: Request, info: Any) -> Response:
    """The one resource a conditional create matched, served as a read is (200)."""
    body, headers = serve_version(svc, claims, info)
    headers["Location"] = _location(str(request.base_url), info)
    return fhir_response(body, 200, headers)


def _matches(svc: HospitalServices, resource_type: str, criteria: str) -> list[Any]:
    """This hospital's own latest records of `resource_type` matching `If-None-Exist`.

    `_id=<rid>` and `identifier=[system|]value` (several joined by `&`, all must match); a
    Patient is found by the identifier its pid derives from and by the ingestion's resolver
    (the hospital's memory of identifiers), any other type by the resolver."""
    try:
        pairs = parse_qsl(criteria, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise FhirError(400, "invalid", "If-None-Exist: not a search query") from None
    if not pairs:
        raise FhirError(400, "invalid", "If-None-Exist: empty search")
    found: set[str] | None = None
    for name, value in pairs:
        if name not in CONDITIONAL_PARAMETERS:
            raise FhirError(
                400,
                "not-supported",
                f"If-None-Exist: parameter {name!r} is not supported here "
                f"(supported: {', '.join(CONDITIONAL_PARAMETERS)})",
            )
        if not value:
            raise FhirError(400, "invalid", f"If-None-Exist: {name} has no value")
        rids = (
            _by_id(svc, resource_type, value)
            if name == "_id"
            else _by_identifier(svc, resource_type, value)
        )
        found = rids if found is None else found & rids
    return [svc.vault.info(rid) for rid in sorted(found or ())]


def _by_id(svc: HospitalServices, resource_type: str, rid: str) -> set[str]:
    try:
        info = stored(svc, resource_type, rid)
    except FhirError:
        return set()
    return set() if info.is_copy else {rid}


def _by_identifier(svc: HospitalServices, resource_type: str, token: str) -> set[str]:
    from medledger.interop.pseudonym import canonical_identifier, pseudonymise

    system, bar, value = token.partition("|")
    if not bar:
        system, value = "", token
    found: set[str] = set()
    resolved = svc.ingestor._resolve(f"{resource_type}?identifier={quote(token, safe='|:/')}")
    if resolved is not None and resolved.startswith(f"{resource_type}/"):
        found.add(resolved.split("/", 1)[1])
    if resource_type != "Patient" or not system:
        return found
    try:
        wanted = canonical_identifier(system, value)
        pid = pseudonymise(svc.node.config.pseudonym_key(), system, value)
    except ValueError:
        return found
    for info in svc.vault.records_of(pid, include_copies=False):
        if info.resource_type != "Patient" or info.rid in found:
            continue
        if info.version != max(svc.vault.versions(info.rid)):
            continue
        patient = orjson.loads(svc.vault.get(info.rid, info.version))
        for identifier in patient.get("identifier") or ():
            if not isinstance(identifier, dict):
                continue
            try:
                same = (
                    canonical_identifier(
                        str(identifier.get("system", "")), str(identifier.get("value", ""))
                    )
                    == wanted
                )
            except ValueError:
                same = False
            if same:
                found.add(info.rid)
                break
    return found


def _check_transaction_scopes(claims: Claims, body: bytes) -> None:
    """A transaction creates only what the scopes allow: each entry's type, created (or
    updated, for a PUT); a `Bundle.c` scope alone creates nothing."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, "invalid", f"body is not JSON: {exc}") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "resourceType: a transaction is a Bundle")
    entries = resource.get("entry")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        kind = inner.get("resourceType") if isinstance(inner, dict) else None
        req = entry.get("request") if isinstance(entry, dict) else None
        method = req.get("method") if isinstance(req, dict) else None
        if isinstance(kind, str):
            try:
                require(claims, kind, "update" if method == "PUT" else "create")
            except FhirError as exc:
                raise FhirError(exc.status, exc.code, f"entry[{i}]: {exc.diagnostics}") from None
