"""`/health`, `/metrics`, and the 503 every other path answers while the node cannot serve.

- `GET /health` (anyone: it says nothing about a patient, nor how busy the node is): JSON
  `{status: "ok"|"degraded", reasons, org, engine, height, app_hash, chain_height,
  catching_up, peers, sync_lag_blocks}`; 200 when ok, 503 when not (load balancers read the
  status code). The explorer's poll of the other hospitals reads it too.
- `GET /metrics`: Prometheus text exposition format (version 0.0.4). Served to a client on
  loopback, or to one that sends `Authorization: Bearer <token>` where the token is the
  content of `<home>/metrics.token` (mode 0600; no file: loopback only); others get 403.
- `ServeWhenAvailable`: ASGI middleware; while `node.health.unavailable()` gives a reason,
  every other request is answered 503 (an OperationOutcome on the API's paths, the page
  `page(request, reason)` renders elsewhere) with `Retry-After`, before anything runs.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from medledger.api.outcomes import API_PREFIXES, fhir_response, outcome
from medledger.api.services import HospitalServices
from medledger.node.health import Status

#: Paths served whatever the node's state: they report it.
MONITORING_PATHS = ("/health", "/metrics")
RETRY_AFTER_S = "5"
EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"
TOKEN_FILE = "metrics.token"

UnavailablePage = Callable[[Request, str], Response]


def _plain_page(request: Request, reason: str) -> Response:
    from html import escape

    return HTMLResponse(
        f"<!doctype html><title>Service unavailable</title><h1>Service unavailable</h1>"
        f"<p>{escape(reason)}</p>",
        status_code=503,
    )


class ServeWhenAvailable:
    """Refuses every request but `MONITORING_PATHS` with 503 and the reason while the node
    cannot serve (see `node.health`); passes them through again as soon as it can."""

    def __init__(
        self, app: Any, services: HospitalServices, page: UnavailablePage | None = None
    ) -> None:
        self.app = app
        self.services = services
        self.page = page or _plain_page

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in MONITORING_PATHS:
            await self.app(scope, receive, send)
            return
        reason = await run_in_threadpool(self.services.node.health.unavailable)
        if not reason:
            await self.app(scope, receive, send)
            return
        headers = {"Retry-After": RETRY_AFTER_S}
        if scope["path"].startswith(API_PREFIXES):
            response = fhir_response(outcome("error", "transient", reason), 503, headers)
        else:
            response = self.page(Request(scope), reason)
            response.status_code = 503
            response.headers.update(headers)
        await response(scope, receive, send)


def health_body(svc: HospitalServices, status: Status) -> dict[str, object]:
    info = svc.node.app.info() if svc.node.app is not None else None
    return {
        "status": "ok" if status.ok else "degraded",
        "reasons": list(status.reasons),
        "org": svc.org,
        "engine": status.engine,
        "height": status.height,
        "app_hash": info.app_hash.hex() if info else "",
        "chain_height": status.chain_height,
        "catching_up": status.catching_up,
        "peers": status.peers,
        "sync_lag_blocks": status.sync_lag_blocks,
    }  # the volumes (mempool, audit backlog) only in /metrics, which not everyone may read


# name -> (type, help, value of the Status); a None value is left out of the exposition.
_METRICS: list[tuple[str, str, str, Callable[[Status], float | int | bool | None]]] = [
    ("medledger_up", "gauge", "1 when the node serves requests, 0 when it answers 503.",
     lambda s: not s.unavailable),
    ("medledger_height", "gauge", "Last block committed by this node's replica.",
     lambda s: s.height),
    ("medledger_chain_height", "gauge", "Latest block of this node's CometBFT.",
     lambda s: s.chain_height),
    ("medledger_catching_up", "gauge", "1 while CometBFT is catching up with the chain.",
     lambda s: s.catching_up),
    ("medledger_sync_lag_blocks", "gauge",
     "Blocks the most advanced connected peer has that this node lacks.",
     lambda s: s.sync_lag_blocks),
    ("medledger_peers", "gauge", "CometBFT peers connected.", lambda s: s.peers),
    ("medledger_non_member_peers", "gauge",
     "CometBFT peers connected whose node id no current member names (restart CometBFT).",
     lambda s: s.non_member_peers),
    ("medledger_mempool_txs", "gauge", "Transactions waiting in CometBFT's mempool.",
     lambda s: s.mempool_txs),
    ("medledger_audit_backlog_entries", "gauge",
     "Access entries journaled at this node, not yet on the chain.",
     lambda s: s.audit_backlog),
]  # fmt: skip


def exposition(org: str, status: Status) -> str:
    """The metrics in Prometheus text format, each sample labelled with the hospital."""
    label = org.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines = []
    for name, kind, text, value_of in _METRICS:
        value = value_of(status)
        if value is None:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines.append(f'{name}{{org="{label}"}} {int(value)}')
    return "\n".join(lines) + "\n"


def _metrics_token(home: Path) -> bytes | None:
    try:
        token = (home / TOKEN_FILE).read_bytes().strip()
    except FileNotFoundError:
        return None
    return token or None


def may_read_metrics(request: Request, home: Path) -> bool:
    """A loopback client, or the bearer of `<home>/metrics.token`."""
    host = request.client.host if request.client else ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    token = _metrics_token(home)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token)
    )


def make_router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/health")
    def health(request: Request) -> Response:
        svc: HospitalServices = request.app.state.services
        status = svc.node.health.status()
        return JSONResponse(health_body(svc, status), status_code=200 if status.ok else 503)

    @routes.get("/metrics")
    def metrics(request: Request) -> Response:
        svc: HospitalServices = request.app.state.services
        if not may_read_metrics(request, svc.node.config.home):
            return PlainTextResponse(
                f"metrics: loopback clients, or a bearer of {TOKEN_FILE} only\n", 403
            )
        text = exposition(svc.org, svc.node.health.status())
        return Response(text, media_type=EXPOSITION)

    return routes
