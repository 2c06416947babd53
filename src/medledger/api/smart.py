"""SMART backend services: registered clients get tokens with a signed assertion.

https://hl7.org/fhir/smart-app-launch/backend-services.html. A hospital registers each of its
systems (lab analyser, EHR feed...) with the public key(s) it signs with (a JWKS) and the
`system/` scopes it may hold (`medledger token client add`, kept in the hospital home,
`smart-clients.json`). The system then asks `POST /auth/token` with
`grant_type=client_credentials`, `client_assertion_type` = `ASSERTION_TYPE` (jwt-bearer),
`client_assertion=<JWT>` and `scope`; the assertion is a JWT signed RS384 or ES384 by one of
its registered keys (`kid`), with iss = sub = its client id, aud = this token endpoint's URL,
exp at most five minutes ahead and a `jti` never used before (kept until its exp, in
`smart-assertions-seen`, so a restart does not reopen a replay). The answer is a bearer token
of the hospital's built-in issuer for `Device/<client id>`, with the requested scopes narrowed
to the registered ones. Errors follow RFC 6749 §5.2 (`invalid_request`, `invalid_client`,
`unsupported_grant_type`, `invalid_scope`): the assertion authenticates the client
(RFC 7523 §2.2), so every fault in it is `invalid_client`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from medledger.api.scopes import Grant, ScopeError, parse_scope
from medledger.api.services import HospitalServices, issuer_key
from medledger.api.tokens import mint

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_SECONDS = 300  # exp no further ahead than this
TOKEN_SECONDS = 300  # lifetime of the access tokens issued here
CLIENTS_FILE = "smart-clients.json"
SEEN_FILE = "smart-assertions-seen"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_MAX_ASSERTION = 16 * 1024
_MIN_RSA_BITS = 2048


class ClientError(ValueError):
    """A client registration that cannot be kept; the message says what is wrong."""


class OAuthError(Exception):
    """An RFC 6749 error answer: `error` code, description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


# -- registered clients --------------------------------------------------------------------


def _public_key(jwk: dict[str, Any], where: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The public key of a JWK (RSA, or EC on P-384); ClientError naming the fault."""
    if "d" in jwk:
        raise ClientError(f"{where}: a private key; register the public key only")
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            n = int.from_bytes(_unb64(str(jwk["n"])), "big")
            e = int.from_bytes(_unb64(str(jwk["e"])), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
            if key.key_size < _MIN_RSA_BITS:
                raise ClientError(f"{where}: RSA keys of at least {_MIN_RSA_BITS} bits")
            return key
        if kty == "EC":
            if jwk.get("crv") != "P-384":
                raise ClientError(f"{where}: EC keys on P-384 only (ES384)")
            x = int.from_bytes(_unb64(str(jwk["x"])), "big")
            y = int.from_bytes(_unb64(str(jwk["y"])), "big")
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    except (KeyError, ValueError) as exc:
        if isinstance(exc, ClientError):
            raise
        raise ClientError(f"{where}: not a valid {kty} public key ({exc})") from None
    raise ClientError(f"{where}: kty must be RSA or EC, not {kty!r}")


def _check_jwks(jwks: Any) -> list[dict[str, Any]]:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ClientError('the JWKS must be {"keys": [...]} with at least one key')
    kids: set[str] = set()
    for i, jwk in enumerate(keys):
        where = f"keys[{i}]"
        if not isinstance(jwk, dict):
            raise ClientError(f"{where}: not a JSON object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise ClientError(f"{where}: every key needs a kid (assertions name it)")
        if kid in kids:
            raise ClientError(f"{where}: kid {kid!r} is repeated")
        kids.add(kid)
        alg = jwk.get("alg")
        if alg is not None and alg not in ALGORITHMS:
            raise ClientError(f"{where}: alg {alg!r}; supported: {', '.join(ALGORITHMS)}")
        _public_key(jwk, where)
    return keys


def _check_scopes(scope: str) -> str:
    scopes = scope.split()
    if not scopes:
        raise ClientError("--scope: at least one system/ scope")
    for s in scopes:
        try:
            grant = parse_scope(s)
        except ScopeError as exc:
            raise ClientError(f"--scope: {exc}") from None
        if grant is None or grant.level != "system":
            raise ClientError(f"--scope: {s!r} is not a system/ resource scope")
    return " ".join(scopes)


def add_client(home: Path, client_id: str, jwks: Any, scope: str) -> dict[str, Any]:
    """Register (or replace) a backend client of this hospital; returns its entry."""
    if not _CLIENT_ID.match(client_id):
        raise ClientError("--id: letters, digits, '.', '_' and '-', 1 to 64 characters")
    keys = _check_jwks(jwks)
    entry = {"scope": _check_scopes(scope), "jwks": {"keys": keys}}
    path = home / CLIENTS_FILE
    clients = load_clients(home)
    clients[client_id] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"clients": clients}, option=orjson.OPT_INDENT_2))
    tmp.replace(path)
    return entry


def load_clients(home: Path) -> dict[str, Any]:
    path = home / CLIENTS_FILE
    if not path.exists():
        return {}
    found = orjson.loads(path.read_bytes()).get("clients", {})
    return found if isinstance(found, dict) else {}


class SeenAssertions:
    """Assertion ids (`client|jti`) already used, until their exp; a file in the home."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def first_use(self, key: str, expires: int, now: float) -> bool:
        """Record the assertion; False if it was seen before (a replay)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            seen: dict[str, int] = {}
            if self.path.exists():
                for line in self.path.read_text().splitlines():
                    ident, _, exp = line.partition(" ")
                    if exp.isdigit() and int(exp) >= now:
                        seen[ident] = int(exp)
            if digest in seen:
                return False
            seen[digest] = expires
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(f"{i} {e}\n" for i, e in sorted(seen.items())))
            tmp.replace(self.path)
            return True


# -- the assertion -------------------------------------------------------------------------


def _unb64(text: str) -> bytes:
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify_signature(key: Any, alg: str, signed: bytes, signature: bytes) -> bool:
    try:
        if alg == "RS384" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
            return True
        if alg == "ES384" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 96:  # JWS: r || s, 48 bytes each
                return False
            r = int.from_bytes(signature[:48], "big")
            s = int.from_bytes(signature[48:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
            return True
    except InvalidSignature:
        return False
    return False


def authenticate(
    assertion: str, clients: dict[str, Any], audience: str, now: float
) -> tuple[str, dict[str, Any]]:
    """(client id, claims) of a valid client assertion; OAuthError(invalid_client) otherwise."""

    def refuse(why: str) -> OAuthError:
        return OAuthError("invalid_client", f"client_assertion: {why}", 401)

    parts = assertion.split(".")
    if len(assertion) > _MAX_ASSERTION or len(parts) != 3:
        raise refuse("not a compact JWS (header.payload.signature)")
    try:
        header = orjson.loads(_unb64(parts[0]))
        claims = orjson.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, orjson.JSONDecodeError):
        raise refuse("not base64url-encoded JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise refuse("header and payload must be JSON objects")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise refuse(f"alg must be one of {', '.join(ALGORITHMS)}")
    if not isinstance(kid, str) or not kid:
        raise refuse("the header needs the kid of a registered key")
    client_id = claims.get("iss")
    if not isinstance(client_id, str) or claims.get("sub") != client_id:
        raise refuse("iss and sub must both be the client id")
    client = clients.get(client_id)
    if not isinstance(client, dict):
        raise refuse(f"client {client_id!r} is not registered here")
    jwk = next((k for k in client["jwks"]["keys"] if k.get("kid") == kid), None)
    if jwk is None:
        raise refuse(f"kid {kid!r} is not a registered key of {client_id}")
    if jwk.get("alg") not in (None, alg):
        raise refuse(f"key {kid!r} is registered for {jwk['alg']}, not {alg}")
    signed = f"{parts[0]}.{parts[1]}".encode()
    try:
        key = _public_key(jwk, kid)
    except ClientError as exc:  # the registry was edited by hand
        raise refuse(f"the registered key cannot be used: {exc}") from None
    if not _verify_signature(key, str(alg), signed, signature):
        raise refuse("the signature does not verify with the registered key")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise refuse(f"aud must be this token endpoint, {audience}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise refuse("exp must be an integer (seconds since 1970)")
    if exp <= now:
        raise refuse("expired")
    if exp > now + MAX_ASSERTION_SECONDS:
        raise refuse(f"exp is more than {MAX_ASSERTION_SECONDS} seconds ahead")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int) or value > now + 60):
            raise refuse(f"{name} must be an integer, not in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise refuse("jti must be a non-empty string (at most 256 characters)")
    return client_id, claims


def narrowed(requested: str, registered: str) -> list[str]:
    """The requested scopes within the registered ones: each requested resource scope meets
    each registered one (type, c/r/u/d/s letters and category restriction in common)."""
    have = [g for g in (parse_scope(s) for s in registered.split()) if g is not None]
    granted: set[str] = set()
    for scope in requested.split():
        try:
            want = parse_scope(scope)
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if want is None or want.level != "system":
            continue  # only system/ scopes are granted to a backend service
        for grant in have:
            met = _meet(want, grant)
            if met is not None:
                granted.add(met)
    return sorted(granted)


def _meet(a: Grant, b: Grant) -> str | None:
    if a.resource_type != b.resource_type and "*" not in (a.resource_type, b.resource_type):
        return None
    kind = b.resource_type if a.resource_type == "*" else a.resource_type
    letters = "".join(c for c in "cruds" if c in a.letters and c in b.letters)
    if not letters:
        return None
    if a.categories is None or b.categories is None:
        categories = a.categories if b.categories is None else b.categories
    else:
        categories = a.categories & b.categories
        if not categories:
            return None
    query = "" if categories is None else "?category=" + ",".join(sorted(categories))
    return f"system/{kind}.{letters}{query}"


# -- the endpoints ---------------------------------------------------------------------------


def token_endpoint(request: Request) -> str:
    return f"{request.base_url}auth/token"


def smart_configuration(request: Request, services: HospitalServices) -> dict[str, object]:
    return {
        "issuer": services.issuer_id,
        "token_endpoint": token_endpoint(request),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": [
            "patient/*.read",
            "user/*.read",
            "user/*.write",
            "patient/*.rs",
            "user/*.cruds",
            "system/*.rs",
            "system/*.cruds",
        ],
        "capabilities": [
            "permission-v1",
            "permission-v2",
            "permission-patient",
            "permission-user",
            "client-confidential-asymmetric",
        ],
        "code_challenge_methods_supported": ["S256"],
    }


def make_router() -> APIRouter:
    router = APIRouter()

    @router.get("/.well-known/smart-configuration")
    def configuration_at_root(request: Request) -> dict[str, object]:
        return smart_configuration(request, request.app.state.services)

    @router.get("/fhir/.well-known/smart-configuration")
    def configuration_at_fhir_base(request: Request) -> dict[str, object]:
        return smart_configuration(request, request.app.state.services)

    @router.post("/auth/token")
    async def token(request: Request) -> Response:
        import anyio

        svc: HospitalServices = request.app.state.services
        try:
            form = await request.form()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            answer = await anyio.to_thread.run_sync(
                lambda: issue(svc, fields, token_endpoint(request))
            )
        except OAuthError as exc:
            headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description},
                exc.status,
                headers,
            )
        return JSONResponse(answer, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    return router


def issue(svc: HospitalServices, form: dict[str, str], audience: str) -> dict[str, Any]:
    """The SMART token response for a client_credentials request (OAuthError otherwise)."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion")
    if not assertion:
        raise OAuthError("invalid_request", "client_assertion is required")
    scope = form.get("scope")
    if not scope:
        raise OAuthError("invalid_request", "scope is required")
    home = svc.node.config.home
    now = time.time()
    clients = load_clients(home)
    client_id, claims = authenticate(assertion, clients, audience, now)
    seen = SeenAssertions(home / SEEN_FILE)
    if not seen.first_use(f"{client_id}|{claims['jti']}", int(claims["exp"]), now):
        raise OAuthError("invalid_client", "client_assertion: this jti was already used", 401)
    granted = narrowed(scope, clients[client_id]["scope"])
    if not granted:
        raise OAuthError(
            "invalid_scope", f"none of the requested scopes is registered for {client_id}"
        )
    issued = int(now)
    access = mint(
        issuer_key(home),
        {
            "iss": svc.issuer_id,
            "aud": svc.audience,
            "sub": f"Device/{client_id}",
            "client_id": client_id,
            "scope": " ".join(granted),
            "iat": issued,
            "nbf": issued,
            "exp": issued + TOKEN_SECONDS,
        },
    )
    return {
        "access_token": access,
        "token_type": "bearer",
        "expires_in": TOKEN_SECONDS,
        "scope": " ".join(granted),
    }
