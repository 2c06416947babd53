"""What held in the attack review stays held: tokens, escaping, redirects, isolation.

Each case is an attack an outsider or a signed-in user tried; the test replays it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import pytest

from medledger.api.tokens import TokenError, mint, verify_token
from medledger.ledger.keys import SigningKey

from .conftest import Api

ISSUER = SigningKey(hashlib.sha256(b"issuer").digest())
KEYS = {"https://idp.example": ISSUER.public_key}
AUDIENCE = "https://chu-lyon.example/fhir"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": "https://idp.example",
        "aud": AUDIENCE,
        "sub": "Practitioner/dr-a",
        "scope": "user/*.rs",
        "iat": now,
        "exp": now + 600,
        **extra,
    }


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    return f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}.{_b64(signature)}"


def test_a_well_formed_token_verifies() -> None:
    claims = verify_token(mint(ISSUER, _claims()), KEYS, AUDIENCE)
    assert claims.subject == "Practitioner/dr-a" and claims.scopes == {"user/*.rs"}


def test_alg_none_is_refused() -> None:
    token = _unsigned({"alg": "none", "typ": "JWT"}, _claims(), b"")
    with pytest.raises(TokenError, match="algorithm must be EdDSA"):
        verify_token(token, KEYS, AUDIENCE)


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """Algorithm confusion: the verifier's public key used as an HMAC secret."""
    header, claims = {"alg": "HS256", "typ": "JWT"}, _claims()
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}".encode()
    mac = hmac.new(ISSUER.public_key, signing_input, hashlib.sha256).digest()
    with pytest.raises(TokenError, match="algorithm must be EdDSA"):
        verify_token(_unsigned(header, claims, mac), KEYS, AUDIENCE)


def test_a_payload_changed_after_signing_is_refused() -> None:
    head, _, sig = mint(ISSUER, _claims()).split(".")
    wider = _b64(orjson.dumps(_claims(scope="system/*.cruds")))
    with pytest.raises(TokenError, match="signature does not verify"):
        verify_token(f"{head}.{wider}.{sig}", KEYS, AUDIENCE)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"exp": int(time.time()) - 5}, "expired"),
        ({"exp": None}, "needs an exp claim"),
        ({"iss": "https://evil.example"}, "issuer is not trusted"),
        ({"aud": "https://other-hospital.example/fhir"}, "audience is not this server"),
        ({"aud": None}, "audience is not this server"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
    ],
)
def test_expiry_issuer_audience_and_not_before_are_checked(
    change: dict[str, object], words: str
) -> None:
    claims = {k: v for k, v in _claims(**change).items() if v is not None}
    with pytest.raises(TokenError, match=words):
        verify_token(mint(ISSUER, claims), KEYS, AUDIENCE)


def test_a_token_signed_by_an_untrusted_key_under_a_trusted_issuer_is_refused() -> None:
    forger = SigningKey(hashlib.sha256(b"forger").digest())
    with pytest.raises(TokenError, match="signature does not verify"):
        verify_token(mint(forger, _claims()), KEYS, AUDIENCE)


# -- pages: escaping and redirects ----------------------------------------------------------


def test_the_login_form_escapes_what_it_echoes(api: Api) -> None:
    payload = '"><script>alert(1)</script>'
    r = api.client.post("/login", data={"token": "not-a-token", "next": payload})
    assert r.status_code == 401
    assert "<script>alert(1)" not in r.text
    assert "&lt;script&gt;" in r.text or "&#x27;" in r.text or "&quot;&gt;" in r.text


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example/", "\\\\evil.example", "evil"],
)
def test_login_never_redirects_off_the_site(api: Api, target: str) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    token = headers["Authorization"].removeprefix("Bearer ")
    r = api.client.post("/login", data={"token": token, "next": target}, follow_redirects=False)
    assert r.status_code == 303
    # Resolved as a browser would (a backslash counts as a slash), it stays on this site.
    landing = urljoin("https://chu-lyon.example/", r.headers["location"].replace("\\", "/"))
    assert urlsplit(landing).netloc == "chu-lyon.example"


def test_a_local_redirect_after_login_is_kept(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    token = headers["Authorization"].removeprefix("Bearer ")
    r = api.client.post("/login", data={"token": token, "next": "/portal"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/portal"
