"""SMART backend services: a hospital system registered with its public key gets a token by a
signed assertion, and every fault in the assertion is refused the RFC 6749 way."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from typer.testing import CliRunner

from medledger.api.smart import ASSERTION_TYPE, ClientError, add_client, narrowed
from medledger.cli import app as cli

from .conftest import Api

TOKEN_URL = "http://testserver/auth/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int) -> str:
    return b64(value.to_bytes(size, "big"))


class LabSystem:
    """A lab analyser's middleware as a hospital registers it: an EC P-384 key (ES384)."""

    def __init__(self, client_id: str = "lab-middleware", kid: str = "lab-2026") -> None:
        self.client_id = client_id
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP384R1())

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-384",
                    "kid": self.kid,
                    "alg": "ES384",
                    "use": "sig",
                    "x": _int(numbers.x, 48),
                    "y": _int(numbers.y, 48),
                }
            ]
        }

    def assertion(self, **changes: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": TOKEN_URL,
            "exp": now + 240,
            "jti": str(uuid.uuid4()),
        } | changes
        header = {"alg": "ES384", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


class EhrSystem:
    """An EHR feed signing RS384 with a 2048-bit RSA key."""

    client_id = "ehr-feed"
    kid = "ehr-rsa-1"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self.kid,
                    "alg": "RS384",
                    "n": _int(numbers.n, 256),
                    "e": b64(numbers.e.to_bytes(3, "big")),
                }
            ]
        }

    def assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": TOKEN_URL,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        header = {"alg": "RS384", "kid": self.kid}
        signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
        return f"{signing_input}.{b64(signature)}"


def _ask(api: Api, assertion: str, scope: str = "system/*.rs", **form: str) -> Any:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scope,
    } | form
    return api.client.post("/auth/token", data=data)


@pytest.fixture
def lab(api: Api) -> LabSystem:
    system = LabSystem()
    add_client(api.services.node.config.home, system.client_id, system.jwks(), "system/*.rs")
    return system


def test_smart_configuration_is_complete_at_the_root_and_the_fhir_base(api: Api) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        r = api.client.get(path)  # no token
        assert r.status_code == 200, r.text
        config = r.json()
        assert config["token_endpoint"] == TOKEN_URL
        assert config["grant_types_supported"] == ["client_credentials"]
        assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {
            "RS384",
            "ES384",
        }


def test_a_registered_system_gets_a_token_and_searches_with_it(api: Api, lab: LabSystem) -> None:
    r = _ask(api, lab.assertion())
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["token_type"] == "bearer" and answer["scope"] == "system/*.rs"
    assert 0 < answer["expires_in"] <= 300
    assert r.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {answer['access_token']}"}
    found = api.client.get(f"/fhir/Observation?patient={api.patient_rid}", headers=headers)
    assert found.status_code == 200 and found.json()["total"] > 0
    # a read-only registration does not write
    r = api.client.post("/fhir/Patient", content=b"{}", headers=headers)
    assert r.status_code == 403


def test_rsa_keys_work_too(api: Api) -> None:
    ehr = EhrSystem()
    add_client(api.services.node.config.home, ehr.client_id, ehr.jwks(), "system/Observation.cruds")
    r = _ask(api, ehr.assertion(), scope="system/Observation.cr system/Patient.rs")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Observation.cr"  # requested ∩ registered


def test_a_replayed_assertion_is_refused(api: Api, lab: LabSystem) -> None:
    assertion = lab.assertion()
    assert _ask(api, assertion).status_code == 200
    again = _ask(api, assertion)
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"
    assert "jti" in again.json()["error_description"]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"aud": "http://elsewhere/token"}, "aud"),
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"exp": int(time.time()) + 3600}, "300 seconds"),
        ({"sub": "someone-else"}, "iss and sub"),
        ({"jti": ""}, "jti"),
        ({"iss": "unknown", "sub": "unknown"}, "not registered"),
    ],
)
def test_a_faulty_assertion_is_invalid_client(
    api: Api, lab: LabSystem, changes: dict[str, Any], why: str
) -> None:
    r = _ask(api, lab.assertion(**changes))
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client" and why in r.json()["error_description"]


def test_a_key_that_is_not_the_registered_one_is_refused(api: Api, lab: LabSystem) -> None:
    impostor = LabSystem(lab.client_id, lab.kid)  # same names, another key
    r = _ask(api, impostor.assertion())
    assert r.status_code == 401 and "signature" in r.json()["error_description"]
    stranger_kid = LabSystem(lab.client_id, "other-kid")
    r = _ask(api, stranger_kid.assertion())
    assert r.status_code == 401 and "kid" in r.json()["error_description"]


def test_scopes_and_grant_type_errors_follow_rfc_6749(api: Api, lab: LabSystem) -> None:
    r = _ask(api, lab.assertion(), scope="patient/*.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = _ask(api, lab.assertion(), grant_type="authorization_code")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = _ask(api, lab.assertion(), client_assertion_type="urn:other")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_requested_scopes_are_narrowed_to_the_registered_ones() -> None:
    assert narrowed("system/*.cruds", "system/*.rs") == ["system/*.rs"]
    assert narrowed("system/Observation.rs", "system/*.rs") == ["system/Observation.rs"]
    assert narrowed("system/*.rs launch openid", "system/Patient.r") == ["system/Patient.r"]
    assert narrowed("user/*.rs", "system/*.rs") == []
    assert narrowed(
        "system/Observation.rs?category=laboratory,vital-signs",
        "system/Observation.rs?category=laboratory",
    ) == ["system/Observation.rs?category=laboratory"]


def test_registration_refuses_what_it_could_not_check(tmp_path: Path) -> None:
    lab = LabSystem()
    with pytest.raises(ClientError, match="private key"):
        jwk = lab.jwks()["keys"][0] | {"d": "AAAA"}
        add_client(tmp_path, "lab", {"keys": [jwk]}, "system/*.rs")
    with pytest.raises(ClientError, match="kid"):
        jwk = {k: v for k, v in lab.jwks()["keys"][0].items() if k != "kid"}
        add_client(tmp_path, "lab", {"keys": [jwk]}, "system/*.rs")
    with pytest.raises(ClientError, match="system/"):
        add_client(tmp_path, "lab", lab.jwks(), "user/*.rs")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    weak = {"kty": "RSA", "kid": "k", "n": _int(small.public_numbers().n, 128), "e": "AQAB"}
    with pytest.raises(ClientError, match="2048"):
        add_client(tmp_path, "lab", {"keys": [weak]}, "system/*.rs")


def test_the_cli_registers_a_client_and_still_mints_demo_tokens(api: Api, tmp_path: Path) -> None:
    home = api.services.node.config.home
    jwks = tmp_path / "lab.jwks.json"
    lab = LabSystem("lab-cli")
    jwks.write_bytes(orjson.dumps(lab.jwks()))
    runner = CliRunner()
    added = runner.invoke(
        cli,
        ["token", "client", "add", "--home", str(home), "--id", "lab-cli"]
        + ["--jwks", str(jwks), "--scope", "system/*.rs"],
    )
    assert added.exit_code == 0, added.output
    assert _ask(api, lab.assertion()).status_code == 200
    listed = runner.invoke(cli, ["token", "client", "list", "--home", str(home)])
    assert "lab-cli" in listed.output and "lab-2026" in listed.output
    minted = runner.invoke(
        cli,
        ["token", "--home", str(home), "--user", "Practitioner/dr-martin", "--scopes", "user/*.rs"],
    )
    assert minted.exit_code == 0 and minted.output.count(".") >= 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": []}')
    refused = runner.invoke(
        cli,
        ["token", "client", "add", "--home", str(home), "--id", "x", "--jwks", str(bad)]
        + ["--scope", "system/*.rs"],
    )
    assert refused.exit_code != 0 and "at least one key" in refused.output
