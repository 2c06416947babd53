"""A small client for CometBFT's JSON-RPC (the parts medledger uses).

JSON-RPC over HTTP POST for everything, so that errors come back in one shape (`RpcError`)
and int64 parameters can be sent as strings, as CometBFT's JSON codec expects.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import httpx


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
        self._client = httpx.Client(base_url=self.url, timeout=timeout)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CometRpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Call one method; return its `result`, raise RpcError / RpcUnavailable."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = self._client.post("/", json=body)
        except httpx.TransportError as exc:
            raise RpcUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            raise RpcUnavailable(
                f"{self.url}: HTTP {response.status_code}, not JSON-RPC: {response.text[:200]}"
            ) from None
        error = payload.get("error")
        if error:
            raise RpcError(
                int(error.get("code", 0)), error.get("message", ""), error.get("data", "")
            )
        return payload.get("result")

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


def b64(value: str | None) -> bytes:
    """Decode one of CometBFT's base64 byte fields (null and "" are empty)."""
    return base64.b64decode(value) if value else b""
