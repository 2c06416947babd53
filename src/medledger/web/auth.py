"""Who is signed in, and which POSTs are let through.

The caller's bearer token sits in an HttpOnly cookie set by the sign-in form (`Secure` over
https). Signing out revokes the token on the server (`HospitalServices.signed_out`) until it
expires, so a copy of it is useless after.

Every POST is refused when its Origin (or Referer) is another site, the sign-in form
included, and a signed-in POST must carry the session's CSRF token (an HMAC of the token, in
the hidden field every POST form writes with the `csrf_field` macro). Every page router
depends on `guard_post`.

A page applies the token's SMART scopes through the API's own `auth.require`, like the API.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from medledger.api.outcomes import FhirError
from medledger.api.scopes import ScopeError, grants
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims, TokenError, patient_of, verify_token
from medledger.web.render import render

COOKIE = "medledger_token"


def services(request: Request) -> HospitalServices:
    svc: HospitalServices = request.app.state.services
    return svc


def signed_in(request: Request) -> Claims | None:
    """The claims of the cookie's token, if it is valid, honourable and not signed out."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    svc = services(request)
    try:
        claims = verify_token(token, svc.trusted_issuers, svc.audience)
        grants(claims.scopes)  # a scope the server cannot honour exactly signs nobody in
    except (TokenError, ScopeError):
        return None
    if svc.signed_out.revoked(claims.token_id):
        return None
    return claims


def csrf_token(svc: HospitalServices, claims: Claims | None) -> str:
    """The session's CSRF token: bound to the signed-in token, useless with any other."""
    if claims is None:
        return ""
    return hmac.new(svc.csrf_secret, claims.token_id.encode(), hashlib.sha256).hexdigest()[:32]


def _same_site(request: Request) -> bool:
    """Whether a POST comes from this site's own pages (by Origin, else Referer). A client
    that sends neither is no browser acting for someone else; a browser always sends Origin
    on a cross-site POST."""
    own = str(request.base_url).rstrip("/")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return True


async def guard_post(request: Request) -> None:
    """Every page POST: same site, and the session's CSRF token when someone is signed in."""
    if request.method != "POST":
        return
    if not _same_site(request):
        raise FhirError(403, "forbidden", "a form posted from another site is refused")
    claims = signed_in(request)
    if claims is None or request.url.path == "/login":
        return  # nobody signed in: the handler refuses, nothing is done in anyone's name
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(
        sent, csrf_token(services(request), claims)
    ):
        raise FhirError(403, "forbidden", "this form has no valid CSRF token: reload the page")


def is_clinician(claims: Claims | None) -> bool:
    """A practitioner whose scopes let them read records as a user (`user/...r`): the
    clinician view, break-the-glass and access requests all lead to reading records."""
    if claims is None or not claims.subject.startswith("Practitioner/"):
        return False
    return any(g.level == "user" and "r" in g.letters for g in grants(claims.scopes))


def clinician_refusal(claims: Claims | None) -> str:
    """Why a signed-in practitioner sees the sign-in form instead of the clinician view."""
    if claims is None or not claims.subject.startswith("Practitioner/"):
        return ""
    return "your token's scopes allow no reading of records (a user/ read scope is needed)"


def patient_claims(request: Request, resource_type: str, interaction: str) -> tuple[Claims, str]:
    """A signed-in patient whose scopes allow this FHIR interaction (403 otherwise), and their
    pid. Only a token that IS the patient (`patient_of`): a practitioner's launch context is
    not a patient sign-in."""
    from medledger.api.auth import require

    claims = signed_in(request)
    pid = None if claims is None else patient_of(claims)
    if claims is None or pid is None:
        raise FhirError(401, "login", "sign in as a patient first")
    require(claims, resource_type, interaction)
    return claims, pid


def login_form(request: Request, target: str, message: str = "") -> Response:
    """The sign-in form, sending the user on to `target`; 401 when it says why not."""
    return render(
        request, "login.html", "Sign in", 401 if message else 200, target=target, message=message
    )


def router() -> APIRouter:
    """Sign in (the token in a cookie) and sign out (the token revoked)."""
    routes = APIRouter(dependencies=[Depends(guard_post)])

    @routes.post("/login")
    def login(
        request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        svc = services(request)
        try:
            claims = verify_token(token.strip(), svc.trusted_issuers, svc.audience)
            grants(claims.scopes)
        except (TokenError, ScopeError) as exc:
            return login_form(request, next, f"That token was refused: {exc}.")
        if svc.signed_out.revoked(claims.token_id):
            return login_form(request, next, "That token was refused: it was signed out.")
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        if "\\" in target:  # browsers read /\host as //host
            target = "/"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token.strip(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @routes.get("/logout")
    def logout(request: Request) -> Response:
        claims = signed_in(request)
        if claims is not None:  # the token itself stops working, not just this cookie
            services(request).signed_out.revoke(claims.token_id, claims.expires)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(
            COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response

    return routes
