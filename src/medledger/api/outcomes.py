"""Every API error is a FHIR OperationOutcome, with an HTTP status that says the same thing.

`FhirError` is what the routes raise; `http_error_handler` turns the framework's own errors
(no such route: 404, method not allowed: 405, ...) into the same shape for every path under the
FHIR base, the token endpoint and `/.well-known`, so no `{"detail": ...}` ever reaches a FHIR
client.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

FHIR_JSON = "application/fhir+json"
#: The request bodies a FHIR write accepts (a missing Content-Type is read as JSON).
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
#: Paths whose errors are OperationOutcomes (the pages answer HTML).
API_PREFIXES = ("/fhir", "/auth", "/.well-known")

#: HTTP status -> the OperationOutcome issue code that says the same.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}


class FhirError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        expression: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.expression = expression
        self.headers = headers or {}


def outcome(severity: str, code: str, diagnostics: str, expression: str = "") -> bytes:
    issue: dict[str, object] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})


def fhir_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def check_media_type(request: Request) -> None:
    """415 unless the body is declared as FHIR JSON (or not declared at all)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise FhirError(
            415,
            "not-supported",
            f"Content-Type {media or declared!r} is not accepted here: send {JSON_TYPES[0]}",
        )


async def fhir_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="fhir"')
    return fhir_response(
        outcome("error", exc.code, exc.diagnostics, exc.expression), exc.status, headers or None
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """The framework's errors (unknown route, method not allowed...) as OperationOutcomes."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith(API_PREFIXES):
        from fastapi.exception_handlers import http_exception_handler

        return await http_exception_handler(request, exc)
    status = exc.status_code
    if status == 404:
        text = f"no FHIR interaction is served at {request.method} {request.url.path}"
    elif status == 405:
        text = f"{request.method} is not allowed on {request.url.path}"
    else:
        text = str(exc.detail)
    code = _ISSUE_CODES.get(status, "exception")
    return fhir_response(outcome("error", code, text), status, dict(exc.headers or {}) or None)
