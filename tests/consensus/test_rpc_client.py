"""CometRpc, the node's JSON-RPC client to its CometBFT, against a small HTTP server that
answers like one: kept-alive connections are reused, one the server closed meanwhile is
replaced without the caller seeing it, and every failure comes back in one of two shapes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medledger.consensus.cometbft.rpc import CometRpc, RpcError, RpcUnavailable


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    close_after_answer = False  # drop the connection after answering, without saying so
    answer: bytes | None = None  # a fixed body instead of the JSON-RPC answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as CometBFT's RPC server does
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.answer is not None:
            body = self.server.answer
        elif request["method"] == "status":
            result = {"sync_info": {"latest_block_height": "7"}}
            body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
        else:
            error = {"code": -32601, "message": "Method not found", "data": request["method"]}
            body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.close_after_answer:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def test_calls_reuse_one_kept_alive_connection(server: _Server) -> None:
    with CometRpc(_url(server)) as rpc:
        assert [rpc.height() for _ in range(5)] == [7] * 5
    assert server.connections == 1


def test_a_connection_the_server_closed_is_replaced_unseen(server: _Server) -> None:
    server.close_after_answer = True
    with CometRpc(_url(server)) as rpc:
        assert [rpc.height() for _ in range(3)] == [7] * 3
    assert server.connections == 3  # a new one each time, and no call failed


def test_a_json_rpc_error_is_an_rpc_error(server: _Server) -> None:
    with CometRpc(_url(server)) as rpc, pytest.raises(RpcError, match="Method not found"):
        rpc.call("no_such_method")


def test_an_answer_that_is_not_json_rpc_is_unavailable(server: _Server) -> None:
    server.answer = b"<html>a proxy's error page</html>"
    with CometRpc(_url(server)) as rpc, pytest.raises(RpcUnavailable, match="not JSON-RPC"):
        rpc.height()


def test_no_server_is_unavailable() -> None:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    url = _url(httpd)
    httpd.server_close()  # the port is free again: nothing listens there
    with CometRpc(url, timeout=2) as rpc, pytest.raises(RpcUnavailable, match="127.0.0.1"):
        rpc.height()


def test_an_address_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        CometRpc("tcp://127.0.0.1:26657")
