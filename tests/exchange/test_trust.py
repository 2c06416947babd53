"""Trust: certificates from the consortium CA only, TLS 1.3 only, signed fresh requests only."""

from __future__ import annotations

import ssl
import stat
import time
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medledger.exchange import pki
from medledger.exchange.client import ExchangeError
from medledger.exchange.signing import H_SIGNATURE, H_TIME, RequestSigner, signing_bytes
from medledger.ledger.keys import SigningKey

from .conftest import A, B, Sandbox, bundles


def test_init_makes_a_ca_and_each_hospital_certificates(net_dir: tuple[Path, list[Path]]) -> None:
    directory, homes = net_dir
    ca = x509.load_pem_x509_certificate((directory / "ca" / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((directory / "ca" / "ca.key").stat().st_mode) == 0o600
    ports = set()
    for home in homes:
        files = pki.TlsFiles(home / "keys" / "tls")
        for key in (files.server_key, files.client_key):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        org = home.name
        server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        client = x509.load_pem_x509_certificate(files.client_cert.read_bytes())
        for cert in (server, client):
            assert cert.issuer == ca.subject
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == org
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
        raw = orjson.loads((home / "config.json").read_bytes())
        ports.add(raw["exchange"]["listen"])
        assert set(raw["exchange"]["peers"]) == {h.name for h in homes}
    assert len(ports) == len(homes)  # distinct gateway addresses


def _raw_client(files: pki.TlsFiles, **ctx_over: object) -> httpx.Client:
    ctx = pki.client_context(files)
    for k, v in ctx_over.items():
        setattr(ctx, k, v)
    return httpx.Client(verify=ctx, timeout=5)


def test_a_client_certificate_from_another_ca_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    url = sandbox.x(A).url + "/exchange/v1/health"
    # A look-alike consortium: same names, its own CA.
    pki.create_ca(tmp_path / "rogue-ca", "medledger-sandbox")
    rogue = pki.issue_hospital(tmp_path / "rogue-ca", tmp_path / "rogue", B)
    mixed = pki.TlsFiles(tmp_path / "mixed")
    mixed.directory.mkdir()
    real = pki.TlsFiles.of_home(sandbox.h[B].node.config.home)
    mixed.ca.write_bytes(real.ca.read_bytes())  # trusts the real server...
    mixed.client_cert.write_bytes(rogue.client_cert.read_bytes())  # ...but shows a rogue cert
    mixed.client_key.write_bytes(rogue.client_key.read_bytes())
    mixed.client_key.chmod(0o600)  # a key file passes the secret-file checks
    with _raw_client(mixed) as client, pytest.raises(httpx.TransportError):
        client.get(url)
    # No client certificate at all: the handshake passes (a hospital joining from afar reads
    # the bootstrap answer), and every other endpoint refuses it.
    bare = ssl.create_default_context(cafile=str(real.ca))
    with httpx.Client(verify=bare, timeout=5) as client:
        refused = client.get(url)
        assert refused.status_code == 403
        assert "no client certificate" in refused.json()["error"]
        assert client.get(sandbox.x(A).url + "/exchange/v1/bootstrap").status_code == 200
    # The genuine certificate works.
    with _raw_client(real) as client:
        assert client.get(url).json()["peer"] == B


def test_only_tls_13_is_spoken(sandbox: Sandbox) -> None:
    real = pki.TlsFiles.of_home(sandbox.h[B].node.config.home)
    ctx = pki.client_context(real)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=ctx, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.get(sandbox.x(A).url + "/exchange/v1/health")


def test_a_server_must_be_the_hospital_dialled(sandbox: Sandbox) -> None:
    client = sandbox.x(B).client
    real_a = sandbox.directory.url(A)
    sandbox.directory.set(A, sandbox.x("chu-bordeaux").url)  # a hijacked directory entry
    try:
        with pytest.raises(ExchangeError) as wrong:
            client.post(A, "index", {"pid": "0" * 64})
        assert "another hospital" in wrong.value.reason
    finally:
        sandbox.directory.set(A, real_a)


def _send(sandbox: Sandbox, headers: dict[str, str], body: bytes) -> httpx.Response:
    client = sandbox.x(B).client._client(A)
    return client.post(
        "/exchange/v1/records",
        content=body,
        headers={**headers, "content-type": "application/json"},
    )


def test_forged_replayed_and_expired_signatures_are_refused(sandbox: Sandbox) -> None:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B)
    body = orjson.dumps({"pid": pid, "rids": rids[:1], "purpose": "treatment"})
    signer = RequestSigner(sandbox.h[B].node.org_key)
    path = "/exchange/v1/records"

    good = signer.headers("POST", path, body, A)
    assert _send(sandbox, good, body).status_code == 200
    replay = _send(sandbox, good, body)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]

    forged = signer.headers("POST", path, body, A)
    forged[H_SIGNATURE] = ("00" if forged[H_SIGNATURE][:2] != "00" else "11") + forged[H_SIGNATURE][
        2:
    ]
    assert _send(sandbox, forged, body).status_code == 401

    tampered = signer.headers("POST", path, body, A)
    other = orjson.dumps({"pid": pid, "rids": rids[:3], "purpose": "treatment"})
    assert _send(sandbox, tampered, other).status_code == 401  # the body is signed too

    old = RequestSigner(sandbox.h[B].node.org_key, clock=lambda: time.time() - 61)
    expired = _send(sandbox, old.headers("POST", path, body, A), body)
    assert expired.status_code == 401 and "60 s" in expired.json()["error"]

    elsewhere = signer.headers("POST", path, body, "chu-bordeaux")  # signed for another hospital
    assert _send(sandbox, elsewhere, body).status_code == 401

    unsigned = _send(sandbox, {}, body)
    assert unsigned.status_code == 401

    reasons = [r["reason"] for r in sandbox.x(A).evidence.rows()]
    for reason in ("replay", "bad signature", "expired", "unsigned or malformed"):
        assert reason in reasons
    # Only the one genuine request was served and logged on the chain.
    reads = [e for e in sandbox.trail(pid) if e["action"] == "read"]
    assert len(reads) == 1 and reads[0]["rids"] == rids[:1]


def test_signing_covers_every_part_of_the_request() -> None:
    base = signing_bytes("POST", "/x?a=1", b"{}", 1, b"n" * 16, A)
    assert base != signing_bytes("GET", "/x?a=1", b"{}", 1, b"n" * 16, A)
    assert base != signing_bytes("POST", "/x?a=2", b"{}", 1, b"n" * 16, A)
    assert base != signing_bytes("POST", "/x?a=1", b"[]", 1, b"n" * 16, A)
    assert base != signing_bytes("POST", "/x?a=1", b"{}", 2, b"n" * 16, A)
    assert base != signing_bytes("POST", "/x?a=1", b"{}", 1, b"m" * 16, A)
    assert base != signing_bytes("POST", "/x?a=1", b"{}", 1, b"n" * 16, B)
    assert H_TIME in RequestSigner(SigningKey.generate()).headers("GET", "/", b"", A)
