"""Bearer tokens: compact JWTs signed with EdDSA (Ed25519), and the built-in issuer.

A hospital normally trusts its own identity provider; for demos and tests each hospital home
has a built-in issuer key (`keys/issuer.key`), and `medledger token` mints tokens with it.
Only what the API needs is implemented: EdDSA signatures, `exp`/`nbf`/`iat` (integers, or
the token is refused), `iss` and `aud`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from medledger.ledger.keys import SigningKey, verify


class TokenError(ValueError):
    """The token is malformed, badly signed, expired or not for us; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _unb64(text: str, part: str) -> bytes:
    """Strict base64url (RFC 7515): no padding, alphabet only, canonical last character.

    Lenient decoding would let one token have many spellings (an `=` added, a character the
    decoder skips, unused low bits set), each with another hash: a signed-out token would come
    back re-encoded. So exactly one spelling of each byte string is accepted."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(f"token {part} is not base64url (no padding, URL-safe alphabet only)")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # unused low bits set in the last character
        raise TokenError(f"token {part} is not canonical base64url")
    return data


def mint(key: SigningKey, claims: dict[str, Any], kid: str = "") -> str:
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


@dataclass(frozen=True)
class Claims:
    subject: str  # "Practitioner/<id>", "Patient/<pid>" or "Device/<client>"
    scopes: frozenset[str]
    patient: str | None  # launch context: the pid a patient-level token is limited to
    issuer: str
    expires: int
    raw: dict[str, Any]
    token_id: str = ""  # what a logout revokes: `content_id`, not the token's spelling


def patient_of(claims: Claims) -> str | None:
    """The pid this token IS, or None: the one test of "this token is patient X".

    A token is the patient only when its subject is `Patient/<pid>` and its `patient` launch
    context names the same pid. A practitioner's token from a SMART EHR launch also carries
    `patient`: for it the launch context only narrows what it reaches (`outside_launch`); it is
    still authorized as the practitioner it is, with their status and roles."""
    kind, _, ident = claims.subject.partition("/")
    if kind == "Patient" and ident and claims.patient == ident:
        return ident
    return None


def outside_launch(claims: Claims, pid: str) -> bool:
    """True when a launch context limits this token to another patient than `pid`."""
    return claims.patient is not None and claims.patient != pid


def verify_token(
    token: str, keys: dict[str, bytes], audience: str, now: float | None = None
) -> Claims:
    """Check signature (key chosen by `iss`), time window and audience."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a compact JWT (header.payload.signature)")
    raw_header, raw_claims = _unb64(parts[0], "header"), _unb64(parts[1], "payload")
    signature = _unb64(parts[2], "signature")
    try:
        header = orjson.loads(raw_header)
        claims = orjson.loads(raw_claims)
    except orjson.JSONDecodeError:
        raise TokenError("token header or payload is not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise TokenError("token algorithm must be EdDSA")
    if not isinstance(claims, dict):
        raise TokenError("token payload must be a JSON object")
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in keys:
        raise TokenError("token issuer is not trusted here")
    if not verify(keys[issuer], f"{parts[0]}.{parts[1]}".encode(), signature):
        raise TokenError("token signature does not verify")
    t = time.time() if now is None else now
    for name in ("exp", "nbf", "iat"):  # a time we cannot read is refused, never ignored
        value = claims.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TokenError(f"token claim {name} must be an integer (seconds since 1970)")
    exp = claims.get("exp")
    if exp is None:
        raise TokenError("token needs an exp claim")
    if exp < t:
        raise TokenError("token expired")
    if claims.get("nbf", 0) > t + 60:
        raise TokenError("token not valid yet")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise TokenError("token audience is not this server")
    sub = claims.get("sub")
    scope = claims.get("scope", "")
    if not isinstance(sub, str) or not isinstance(scope, str):
        raise TokenError("token needs sub and scope")
    patient = claims.get("patient")
    return Claims(
        subject=sub,
        scopes=frozenset(scope.split()),
        patient=patient if isinstance(patient, str) else None,
        issuer=issuer,
        expires=exp,
        raw=claims,
        token_id=content_id(raw_header, raw_claims),
    )


def content_id(header: bytes, payload: bytes) -> str:
    """What signs a token out: SHA-256 of its decoded header and payload, the content the
    issuer signed, not of one spelling of it. Any signature over the same content is the same
    token (JSON holds no NUL byte, so the separator is unambiguous)."""
    return hashlib.sha256(header + b"\0" + payload).hexdigest()
