"""A small client for CometBFT's JSON-RPC (the parts medledger uses).

JSON-RPC over HTTP POST for everything, so that errors come back in one shape (`RpcError`)
and int64 parameters can be sent as strings, as CometBFT's JSON codec expects.

Over the standard library's `http.client`, kept-alive connections reused from a small pool:
a hospital's node calls this for every tx it submits and the audit journal polls through it
several times a second; httpx's request machinery (cookies, auth, redirects, hooks) cost
about a third of the journal process's CPU for calls that need none of it.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import select
import threading
import urllib.parse
from typing import Any

import orjson

# A kept-alive connection the server closed meanwhile shows as one of these on its next use.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class RpcError(Exception):
    """CometBFT answered with a JSON-RPC error (not a transport failure)."""

    def __init__(self, code: int, message: str, data: str) -> None:
        super().__init__(f"{message} ({code}): {data}")
        self.code = code
        self.message = message
        self.data = data


class RpcUnavailable(ConnectionError):
    """The node's RPC could not be reached (process down, wrong port)."""


class CometRpc:
    """Synchronous JSON-RPC client for one CometBFT node; safe to share between threads."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url}: a CometBFT RPC address is http://host:port")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path or "/"
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []  # kept alive, free to reuse
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> CometRpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Call one method; return its `result`, raise RpcError / RpcUnavailable."""
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        )
        try:
            status, data = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            raise RpcUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            text = data[:200].decode(errors="replace")
            raise RpcUnavailable(f"{self.url}: HTTP {status}, not JSON-RPC: {text}") from None
        if not isinstance(payload, dict):
            raise RpcUnavailable(f"{self.url}: HTTP {status}, not a JSON-RPC answer")
        error = payload.get("error")
        if error:
            raise RpcError(
                int(error.get("code", 0)), error.get("message", ""), error.get("data", "")
            )
        return payload.get("result")

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """POST one request on a kept-alive connection: the status and the body. A reused
        connection the server had closed is dropped and the request sent once more on a new
        one (the server answered nothing on it; a tx sent twice is known to CometBFT's cache
        and answered as such, see engine.check_result_from_error)."""
        conn, reused = self._take()
        try:
            try:
                conn.request("POST", self._path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
            except _STALE:
                if not reused:
                    raise
                conn.close()
                conn = self._connect()
                conn.request("POST", self._path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return response.status, data

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection still open (and True), else a new one (and False)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            # Readable while idle: the server closed it (EOF) or sent what no request asked.
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=self._timeout)

    # -- the calls medledger uses -------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def height(self) -> int:
        return int(self.status()["sync_info"]["latest_block_height"])

    def net_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("net_info")
        return result

    def validators(self, height: int | None = None) -> list[dict[str, Any]]:
        """Every validator at a height (all pages)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": str(page), "per_page": "100"}
            if height is not None:
                params["height"] = str(height)
            result = self.call("validators", **params)
            out.extend(result["validators"])
            if len(out) >= int(result["total"]) or not result["validators"]:
                return out
            page += 1

    def block(self, height: int | None = None) -> dict[str, Any]:
        params = {} if height is None else {"height": str(height)}
        result: dict[str, Any] = self.call("block", **params)
        return result

    def blockchain(self, min_height: int, max_height: int) -> list[dict[str, Any]]:
        """Block metas (header, block_id, num_txs), at most 20 per call, highest first."""
        result = self.call("blockchain", minHeight=str(min_height), maxHeight=str(max_height))
        metas: list[dict[str, Any]] = result["block_metas"]
        return metas

    def block_results(self, height: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("block_results", height=str(height))
        return result

    def abci_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("abci_info")["response"]
        return result

    def abci_query(self, path: str, data: bytes = b"") -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "abci_query", path=path, data=data.hex(), height="0", prove=False
        )["response"]
        return result

    def broadcast_tx_sync(self, tx: bytes) -> dict[str, Any]:
        """Hand a tx to this node's mempool; the result carries its CheckTx code and log."""
        result: dict[str, Any] = self.call("broadcast_tx_sync", tx=base64.b64encode(tx).decode())
        return result


def _readable(sock: Any) -> bool:
    poller = select.poll()  # not select(): a busy node's descriptors may pass FD_SETSIZE
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def b64(value: str | None) -> bytes:
    """Decode one of CometBFT's base64 byte fields (null and "" are empty)."""
    return base64.b64decode(value) if value else b""
