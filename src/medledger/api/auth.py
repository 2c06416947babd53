"""Authentication (bearer JWT) and SMART scope checks, as FastAPI dependencies.

`require` is the one scope decision: the FHIR API and the pages both call it. `writer` is the
one check of who may write records: the token's practitioner as the chain knows them now.
"""

from __future__ import annotations

from fastapi import Request

from medledger.api.outcomes import FhirError
from medledger.api.scopes import Permission, ScopeError, permission
from medledger.api.tokens import Claims, TokenError, verify_token


def authenticated(request: Request) -> Claims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise FhirError(401, "login", "a bearer token is required")
    svc = request.app.state.services
    try:
        claims = verify_token(token.strip(), svc.trusted_issuers, svc.audience)
    except TokenError as exc:
        raise FhirError(401, "login", str(exc)) from None
    if svc.signed_out.revoked(claims.token_id):
        raise FhirError(401, "login", "token was signed out")
    return claims


def scope_permission(claims: Claims, resource_type: str, interaction: str) -> Permission:
    """What the token's scopes allow (403 if one of its scopes cannot be honoured exactly)."""
    try:
        return permission(claims.scopes, resource_type, interaction)
    except ScopeError as exc:
        raise FhirError(403, "forbidden", str(exc)) from None


def require(claims: Claims, resource_type: str, interaction: str) -> Permission:
    """403 unless a scope allows this interaction on this resource type; returns what it allows
    (a category restriction the caller must apply to the resources it serves)."""
    allowed = scope_permission(claims, resource_type, interaction)
    if not allowed:
        raise FhirError(
            403,
            "forbidden",
            f"no scope allows {interaction} on {resource_type} (token scopes: "
            f"{' '.join(sorted(claims.scopes)) or 'none'})",
        )
    if allowed.levels == {"patient"} and claims.patient is None:
        raise FhirError(403, "forbidden", "patient/ scopes need a patient launch context")
    return allowed


def allows(claims: Claims, resource_type: str, interaction: str) -> Permission | None:
    """`require` for the pages: the permission, or None where the API would answer 403."""
    try:
        return require(claims, resource_type, interaction)
    except FhirError:
        return None
