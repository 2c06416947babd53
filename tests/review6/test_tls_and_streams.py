"""Review of issue 16's pinned TLS (session 6), over real TLS on 127.0.0.1: what one member's
bad key does to the others, and what a removed member still gets on a connection it opened
before its removal."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx

from medledger.exchange import pki
from tests.exchange.conftest import A, B, C, Sandbox
from tests.review6.test_governance_attacks import off_curve_tls_key


def _pins(sandbox: Sandbox) -> dict[str, bytes]:
    return {m["org"]: m["tls_key"] for m in sandbox.root.engine.query("governance/members", {})}


def _handshake(url: str, ctx: ssl.SSLContext) -> str:
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /exchange/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
                answer = tls.recv(64)
                return "ok" if answer.startswith(b"HTTP/1.1") else "refused: closed"
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"


def test_one_unloadable_pin_does_not_stop_every_handshake(sandbox: Sandbox) -> None:
    """A pin that does not load as a key (say a member's tls_key off the curve) must cost only
    that member its connections: the contexts are rebuilt from all pins at every handshake."""
    pins = {**_pins(sandbox), C: off_curve_tls_key()}
    files_b = pki.TlsFiles.of_home(sandbox.h[B].node.config.home)
    assert _handshake(sandbox.x(A).url, pki.client_context(files_b, pins)) == "ok"


def _propose(sandbox: Sandbox, action: str, args: dict[str, object]) -> int:
    """A proposes (an event every member's stream shows); its id."""
    committed = sandbox.h[A].node.wallet.send(
        "governance.propose", {"action": action, "args": args}
    )
    (created,) = [e for e in committed.result.events if e.type == "proposal.created"]
    return int(created.get("id") or 0)


def _govern(sandbox: Sandbox, action: str, args: dict[str, object]) -> int:
    """A proposes, C approves: executed (two of three); the height of the vote."""
    proposal = _propose(sandbox, action, args)
    voted = sandbox.h[C].node.wallet.send(
        "governance.vote", {"proposal": proposal, "approve": True}
    )
    return int(voted.height)


def test_a_removed_members_open_event_stream_ends_with_its_membership(sandbox: Sandbox) -> None:
    """B opens its event stream on A's gateway while a member, then the others remove it. The
    stream must not go on carrying the consortium's events past the removal block."""
    _propose(sandbox, "set_param", {"name": "proposal_ttl_ms", "value": 86_400_000})
    client = sandbox.x(B).client
    stream = client.events(A, from_height=1, timeout=5.0)
    first = next(stream)  # open, authenticated while B was a member
    assert first["id"]
    removed_at = _govern(sandbox, "remove_member", {"org": B})
    # Something consortium-wide after the removal: a new proposal everyone sees.
    _propose(sandbox, "set_param", {"name": "proposal_ttl_ms", "value": 3_600_000})
    late: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        try:
            for ev in stream:
                if int(ev["id"].split("-")[0]) > removed_at:
                    late.append(ev)
                    return
        except httpx.HTTPError:
            pass  # the server closed the stream
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert done.wait(30), "the stream neither ended nor carried anything"
    assert late == [], f"{B}, removed at height {removed_at}, still received {late[0]['event']}"


def test_a_removed_member_cannot_resume_a_session_it_made_while_a_member(
    sandbox: Sandbox,
) -> None:
    """A resumed TLS 1.3 session shows no certificate: a ticket B got while a member must not
    carry it past its removal."""
    url = httpx.URL(sandbox.x(A).url)
    ctx = pki.client_context(pki.TlsFiles.of_home(sandbox.h[B].node.config.home), _pins(sandbox))
    with (
        socket.create_connection((url.host, url.port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET /exchange/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1")
        session = tls.session
    _govern(sandbox, "remove_member", {"org": B})
    with socket.create_connection((url.host, url.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, session=session) as tls:
                tls.sendall(b"GET /exchange/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
                answer = tls.recv(64)
                resumed = tls.session_reused
        except (ssl.SSLError, ConnectionError):
            answer, resumed = b"", False
    assert not resumed
    assert not answer.startswith(b"HTTP/1.1 200")


def test_the_pseudonym_key_is_not_taken_from_a_tls_key_the_chain_rotated_away(
    sandbox: Sandbox,
    tmp_path: Path,
) -> None:
    """`medledger join` pins the member it asks to its tls_key *in the genesis*. C rotated its
    TLS key because the old one was stolen; whoever holds the old one serves a look-alike of
    C's gateway. The key it hands out (sealed to our box key: anyone can seal) must not
    become this hospital's pseudonym key."""
    from fastapi import FastAPI
    from nacl.public import PrivateKey, SealedBox

    from medledger.exchange.server import ServerThread
    from medledger.provisioning import rotation
    from medledger.provisioning.join import JoinError, fetch_pseudonym_key

    node_c = sandbox.h[C].node
    stolen = pki.TlsFiles(tmp_path / "stolen")
    shutil.copytree(pki.TlsFiles.of_home(node_c.config.home).directory, stolen.directory)
    staged = rotation.stage(node_c.config, ["tls"], node_c.org_key.public_key)
    node_c.wallet.send("governance.update_member", staged.body)
    rotation.switch(node_c.config, staged)
    assert _pins(sandbox)[C] != pki.identity_key(stolen)

    config_b = sandbox.h[B].node.config
    before = (config_b.home / "keys" / "pseudonym.key").read_bytes()
    evil = b"\x66" * 32
    app = FastAPI()

    genesis = json.loads(node_c.config.genesis_path.read_text())  # public: anyone has it

    @app.get("/exchange/v1/bootstrap")
    def bootstrap() -> dict[str, Any]:
        return {"org": C, "genesis": genesis}

    @app.post("/exchange/v1/pseudonym-key")
    def pseudonym_key() -> dict[str, Any]:
        box = PrivateKey(config_b.box_key()).public_key
        return {"org": B, "sealed": base64.b64encode(SealedBox(box).encrypt(evil)).decode()}

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(stolen.cert), str(stolen.key))
    rogue = ServerThread(app, "127.0.0.1", 0, ctx, name="rogue").start()
    try:
        with contextlib.suppress(JoinError):  # refused: what must happen
            fetch_pseudonym_key(config_b, rogue.url)
    finally:
        rogue.stop()
    assert (config_b.home / "keys" / "pseudonym.key").read_bytes() == before, (
        "a key from the stolen, rotated-away TLS key became the pseudonym key"
    )
