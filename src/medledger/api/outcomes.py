"""Every API error is a FHIR OperationOutcome, with an HTTP status that says the same thing."""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.responses import Response

FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    def __init__(self, status: int, code: str, diagnostics: str, expression: str = "") -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.expression = expression


def outcome(severity: str, code: str, diagnostics: str, expression: str = "") -> bytes:
    issue: dict[str, object] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})


def fhir_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


async def fhir_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return fhir_response(
        outcome("error", exc.code, exc.diagnostics, exc.expression), exc.status, headers
    )
