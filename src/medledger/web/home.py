"""The home page: which hospital's node this is, and the way to its three views."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from medledger.web.auth import services
from medledger.web.i18n import COOKIE, LANGUAGES
from medledger.web.render import render


def router() -> APIRouter:
    """`GET /` and the language switch (`GET /lang/fr?next=/portal`)."""
    routes = APIRouter()

    @routes.get("/lang/{code}")
    def switch(request: Request, code: str, next: str = "/") -> Response:
        """Remember the chosen language (a cookie) and go back; only paths of this site."""
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        if "\\" in target:  # browsers read /\host as //host
            target = "/"
        response = RedirectResponse(target, status_code=303)
        if code in LANGUAGES:
            response.set_cookie(
                COOKIE,
                code,
                max_age=365 * 86400,
                samesite="lax",
                secure=request.url.scheme == "https",
            )
        return response

    @routes.get("/")
    def home(request: Request) -> Response:
        svc = services(request)
        return render(
            request, "home.html", "medledger", org=svc.org, chain_id=svc.node.config.chain_id
        )

    return routes
