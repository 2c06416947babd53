"""Authentication (bearer JWT) and SMART scope checks, as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from medledger.api.outcomes import FhirError
from medledger.api.scopes import allowed_levels
from medledger.api.tokens import Claims, TokenError, verify_token


def authenticated(request: Request) -> Claims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise FhirError(401, "login", "a bearer token is required")
    svc = request.app.state.services
    try:
        return verify_token(token.strip(), svc.trusted_issuers, svc.audience)
    except TokenError as exc:
        raise FhirError(401, "login", str(exc)) from None


def require(claims: Claims, resource_type: str, interaction: str) -> None:
    """403 unless a scope allows this interaction on this resource type."""
    levels = allowed_levels(claims.scopes, resource_type, interaction)
    if not levels:
        raise FhirError(
            403,
            "forbidden",
            f"no scope allows {interaction} on {resource_type} (token scopes: "
            f"{' '.join(sorted(claims.scopes)) or 'none'})",
        )
    if levels == {"patient"} and claims.patient is None:
        raise FhirError(403, "forbidden", "patient/ scopes need a patient launch context")
