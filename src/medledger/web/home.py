"""The home page: which hospital's node this is, and the way to its three views."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medledger.web.auth import services
from medledger.web.render import render


def router() -> APIRouter:
    """`GET /`."""
    routes = APIRouter()

    @routes.get("/")
    def home(request: Request) -> Response:
        svc = services(request)
        return render(
            request, "home.html", "medledger", org=svc.org, chain_id=svc.node.config.chain_id
        )

    return routes
