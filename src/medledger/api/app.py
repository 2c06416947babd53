"""The FastAPI application one hospital's node serves (the pages are mounted on it by
`medledger.web.site`, above this package)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from medledger.api import history, monitoring, research, smart, summary, writes
from medledger.api.fhir import make_router
from medledger.api.outcomes import (
    FhirError,
    fhir_error_handler,
    fhir_response,
    http_error_handler,
    outcome,
)
from medledger.api.services import HospitalServices


def create_app(
    services: HospitalServices, unavailable_page: monitoring.UnavailablePage | None = None
) -> FastAPI:
    """The API; while the node cannot serve (`node.health`), every path but /health and
    /metrics answers 503 with the reason: an OperationOutcome on the API's paths,
    `unavailable_page(request, reason)` on the others (the pages')."""
    app = FastAPI(
        title=f"medledger — {services.node.config.name}",
        description="FHIR R4 facade, patient portal API and admin of one hospital's node.",
        version="0.1.0",
    )
    app.state.services = services
    app.add_exception_handler(FhirError, fhir_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)  # 404, 405... as FHIR

    async def invalid(request, exc):  # type: ignore[no-untyped-def]
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return fhir_response(outcome("error", "invalid", f"{where}: {first.get('msg', '')}"), 400)

    app.add_exception_handler(RequestValidationError, invalid)

    async def too_large(request: Request, exc: Exception) -> Response:
        return _too_large(request.url.path, services)

    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_middleware(BodyLimit, services=services)
    app.add_middleware(
        monitoring.ServeWhenAvailable, services=services, page=unavailable_page
    )  # refuses before a body is read
    app.add_middleware(ReadsUnderWay, services=services)  # outermost: as a read arrives

    # Order matters: the fixed paths (smart configuration under /fhir) before `/{type}/{id}`.
    app.include_router(monitoring.make_router())
    app.include_router(smart.make_router())
    app.include_router(summary.make_router())
    app.include_router(history.make_router())
    app.include_router(research.make_router())
    app.include_router(make_router())
    app.include_router(writes.make_router())
    return app


class BodyTooLarge(HTTPException):
    """A request body went past its limit while it was being read."""

    def __init__(self) -> None:
        super().__init__(413, "request body too large")


def _limit(path: str, services: HospitalServices) -> int:
    return services.max_body_bytes if path.startswith("/fhir") else services.max_form_bytes


def _too_large(path: str, services: HospitalServices) -> Response:
    limit = _limit(path, services)
    text = f"request body is larger than this server accepts here ({limit} bytes)"
    if path.startswith("/fhir"):
        return fhir_response(outcome("error", "too-costly", text), 413)
    return HTMLResponse(f"<p>{text}</p>", status_code=413)


class BodyLimit:
    """Bounds every request body (FHIR writes: `api.max_body_bytes`; forms: `api.max_form_bytes`).

    A declared Content-Length over the limit is refused before a byte is read; a body without
    one (chunked) is counted as it arrives and refused as soon as it passes the limit, so a
    huge upload never sits in memory."""

    def __init__(self, app: Any, services: HospitalServices) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = _limit(scope["path"], self.services)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(scope["path"], self.services)(scope, receive, send)
            return
        received = 0

        async def bounded() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, bounded, send)


class ReadsUnderWay:
    """Tells the hospital's audit journal that a FHIR read is under way as it arrives
    (`AuditJournal.expecting`): while reads under way have not yet logged their entries, the
    journal's writer holds a write back (by up to a millisecond) so that one fsync serves
    them too, and a lone read's entry is written at once. Nothing is served sooner or later
    than its entry is durable: every read still waits for its own."""

    def __init__(self, app: Any, services: HospitalServices) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        journal = self.services.node.audit_started  # a read starts it; this only tells it
        if (
            journal is None
            or scope["type"] != "http"
            or scope["method"] != "GET"
            or not scope["path"].startswith("/fhir")
        ):
            await self.app(scope, receive, send)
            return
        with journal.expecting():
            await self.app(scope, receive, send)
