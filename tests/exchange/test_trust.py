"""Trust: TLS keys pinned from the chain (no CA), TLS 1.3 only, signed fresh requests only.

Every test here runs over real TLS on 127.0.0.1: a member's certificate is accepted because
its key is the member's `tls_key` in committed state, anything else is refused at the
handshake, and a block that removes a member or rotates its key changes that from the next
handshake on."""

from __future__ import annotations

import socket
import ssl
import stat
import time
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from medledger.exchange import pki
from medledger.exchange.client import ExchangeError
from medledger.exchange.signing import H_SIGNATURE, H_TIME, RequestSigner, signing_bytes
from medledger.ledger.genesis import Genesis
from medledger.ledger.keys import SigningKey

from .conftest import A, B, C, Sandbox, bundles


def test_init_gives_each_hospital_its_own_tls_key_named_in_the_genesis(
    net_dir: tuple[Path, list[Path]],
) -> None:
    directory, homes = net_dir
    assert not (directory / "ca").exists()  # no consortium CA: nobody can mint identities
    genesis = {m.org: m for m in Genesis.load(directory / "genesis.json").members}
    ports = set()
    for home in homes:
        files = pki.TlsFiles(home / "keys" / "tls")
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        assert pki.cert_key(cert.public_bytes(serialization.Encoding.DER)) == (
            genesis[home.name].tls_key
        )
        raw = orjson.loads((home / "config.json").read_bytes())
        assert genesis[home.name].addresses["gateway"] == raw["exchange"]["listen"]
        ports.add(raw["exchange"]["listen"])
        assert set(raw["exchange"]["peers"]) == {h.name for h in homes}
    assert len({m.tls_key for m in genesis.values()}) == len(homes)
    assert len(ports) == len(homes)  # distinct gateway addresses


def _pins(sandbox: Sandbox) -> dict[str, bytes]:
    return {m["org"]: m["tls_key"] for m in sandbox.root.engine.query("governance/members", {})}


def _handshake(url: str, ctx: ssl.SSLContext) -> str:
    """A bare TLS handshake with the gateway at `url`: "ok", or the refusal."""
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /exchange/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
                # TLS 1.3: the server judges our certificate after our side of the handshake,
                # so its refusal (an alert, or the connection closed) comes on the first read.
                answer = tls.recv(64)
                return "ok" if answer.startswith(b"HTTP/1.1") else "refused: closed"
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"


def test_a_strangers_self_signed_certificate_is_refused_at_the_handshake(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = sandbox.x(A).url
    pins = _pins(sandbox)
    # A look-alike: B's name, its own key, a certificate claiming to come from B's pin.
    rogue = pki.TlsFiles(tmp_path / "rogue")
    pki.new_identity(rogue.directory, B, ("127.0.0.1",))
    assert _handshake(url, pki.client_context(rogue, pins)).startswith("refused")
    # No client certificate at all.
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
    assert _handshake(url, bare) != "ok"
    # The genuine key is accepted, and the gateway knows whom it serves.
    real = pki.client_context(pki.TlsFiles.of_home(sandbox.h[B].node.config.home), pins)
    assert _handshake(url, real) == "ok"
    with httpx.Client(verify=real, timeout=5) as client:
        assert client.get(url + "/exchange/v1/health").json()["peer"] == B
    # And a client refuses a server whose key is not pinned.
    impostor = pki.client_context(pki.TlsFiles.of_home(sandbox.h[B].node.config.home), {C: b""})
    assert _handshake(url, impostor).startswith("refused")


def _govern(sandbox: Sandbox, action: str, args: dict[str, object]) -> None:
    committed = sandbox.h[A].node.wallet.send(
        "governance.propose", {"action": action, "args": args}
    )
    (created,) = [e for e in committed.result.events if e.type == "proposal.created"]
    sandbox.h[C].node.wallet.send(
        "governance.vote", {"proposal": int(created.get("id") or 0), "approve": True}
    )


def test_a_removed_member_is_refused_from_the_next_handshake(sandbox: Sandbox) -> None:
    url_a = sandbox.x(A).url
    before = pki.client_context(pki.TlsFiles.of_home(sandbox.h[B].node.config.home), _pins(sandbox))
    assert _handshake(url_a, before) == "ok"
    assert sandbox.x(B).client.post(A, "index", {"pid": "0" * 64})[0] is not None
    _govern(sandbox, "remove_member", {"org": B})
    assert B not in _pins(sandbox)
    # The same certificate and key, one block later: refused by the server's handshake.
    assert _handshake(url_a, before).startswith("refused")
    with pytest.raises(ExchangeError, match="unreachable"):
        sandbox.x(B).client.post(A, "index", {"pid": "0" * 64})
    # And A, dialling B, no longer trusts B's server.
    with pytest.raises(ExchangeError, match="unreachable"):
        sandbox.x(A).client.post(B, "index", {"pid": "0" * 64})
    # C is untouched.
    assert sandbox.x(C).client.post(A, "index", {"pid": "0" * 64})[0] is not None


def test_a_rotated_tls_key_old_refused_new_accepted(sandbox: Sandbox, tmp_path: Path) -> None:
    url_a = sandbox.x(A).url
    home_b = sandbox.h[B].node.config.home
    old = pki.TlsFiles.of_home(home_b)
    new = pki.TlsFiles(tmp_path / "tls-next")
    new_key = pki.new_identity(new.directory, B, ("127.0.0.1",))
    old_ctx = pki.client_context(old, _pins(sandbox))
    assert _handshake(url_a, old_ctx) == "ok"
    sandbox.h[B].node.wallet.send("governance.update_member", {"tls_key": new_key})
    pins = _pins(sandbox)
    assert pins[B] == new_key
    assert _handshake(url_a, pki.client_context(old, pins)).startswith("refused")
    assert _handshake(url_a, pki.client_context(new, pins)) == "ok"


def test_only_tls_13_is_spoken(sandbox: Sandbox) -> None:
    ctx = pki.client_context(pki.TlsFiles.of_home(sandbox.h[B].node.config.home), _pins(sandbox))
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
        assert "not the one the chain pins" in wrong.value.reason
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
