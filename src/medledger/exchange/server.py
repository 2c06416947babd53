"""Serving an ASGI app over mutual TLS from a background thread (uvicorn).

uvicorn does not tell the application which client certificate a connection presented, and the
gateway needs it: the certificate's hospital must be the signer's. So connections use a small
subclass of uvicorn's h11 protocol that reads the verified peer certificate once per
connection and puts its hospital (the member whose pinned TLS key it carries, `pki.peer_org`)
into every request's `request.state.peer_org`.

The same protocol bounds the connections one hospital may hold open at once
(`MAX_PEER_CONNECTIONS`): past it, a new connection is closed as soon as its certificate is
known, so that a member opening thousands cannot exhaust the server's file descriptors and
lock the other hospitals out. (Its requests and streams are bounded in gateway.py.)

The server runs in its own thread and event loop, so a node process can run its ledger engine,
its gateway and its sync agent side by side, and a sandbox can run several hospitals' gateways
in one process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import weakref
from collections import Counter
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from medledger.exchange.pki import peer_org

log = logging.getLogger(__name__)


#: Connections one hospital may hold open to a server at once (its client pools 32).
MAX_PEER_CONNECTIONS = 64

# Open connections per hospital, per server (a process may serve several gateways).
_open: weakref.WeakKeyDictionary[ServerState, Counter[str]] = weakref.WeakKeyDictionary()


class _MtlsH11Protocol(H11Protocol):
    """h11 protocol that exposes the verified client certificate's hospital to the app."""

    _counted: str | None = None  # the hospital this connection is counted for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        org = None
        if ssl_object is not None:
            org = peer_org(ssl_object)
        self.app_state = {**self.app_state, "peer_org": org}
        if org is None:
            return
        counts = _open.setdefault(self.server_state, Counter())
        if counts[org] >= MAX_PEER_CONNECTIONS:
            log.warning("%s holds %d connections already: closing a new one", org, counts[org])
            transport.close()
            return
        counts[org] += 1
        self._counted = org

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted is not None:
            counts = _open.get(self.server_state)
            if counts is not None:
                counts[self._counted] -= 1
                if counts[self._counted] <= 0:
                    del counts[self._counted]
            self._counted = None
        super().connection_lost(exc)


def open_connections(server: uvicorn.Server, org: str) -> int:
    """How many connections `org` holds open to `server` now."""
    counts = _open.get(server.server_state)
    return counts[org] if counts is not None else 0


class ServerThread:
    """An ASGI app served over TLS by uvicorn in a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        name: str = "gateway",
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=_MtlsH11Protocol,
            ssl_context_factory=(lambda _c, _d: ssl_context) if ssl_context else None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # SystemExit when the port is taken
            self._error = exc

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise OSError(
                    f"{self.name}: could not listen on {self.host}:{self.server.config.port}"
                    + (f" ({self._error})" if self._error else "")
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not listening after {timeout}s")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        servers = getattr(self.server, "servers", [])
        for s in servers:
            for sock in s.sockets or ():
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def stop(self, grace: float = 0.5, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish for `grace` seconds, then close.

        Idle keep-alive TLS connections from peers would otherwise hold the shutdown until
        uvicorn's own timeout (their close_notify never comes while the peer is idle).
        """
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(grace)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(timeout)
            self._thread = None
