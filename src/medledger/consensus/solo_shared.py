"""One solo ledger shared by the processes of a sandbox on one machine.

The solo engine has one writer: the process that holds the ledger's lock (`medledger sandbox
run`, or the first `medledger node run` of a sandbox hospital) produces every block. It also
serves `LedgerServer` on a Unix socket beside the ledger file (`DIR/ledger/ledger.sock`,
mode 0600): a tx handed in there is checked and queued by its engine exactly like one of its
own. Every other process of the sandbox (another hospital's `node run`, a `recover run`, a
one-shot command such as `member vote` or `ingest`) uses `SoloClient`: it submits through
that socket and reads the committed state straight from the ledger file (SQLite lets readers
in beside the writer), so it has the same read view, queries and block stream as the
producer's own nodes. This is how a sandbox hospital can run, die and be recovered as a
process of its own, with the commands used on CometBFT (docs/recovery.md).

Submitting needs no authority beyond the signature every tx carries: the producer's CheckTx
decides, as CometBFT's RPC does for a node's local clients.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medledger.consensus.engine import Committed, Submitted
from medledger.ledger import codec
from medledger.ledger.app import query_store
from medledger.ledger.contract import Registry
from medledger.ledger.results import BlockRecord, TxResult
from medledger.ledger.store import StateView, Store

if TYPE_CHECKING:
    from medledger.consensus.solo import SoloEngine

MAX_FRAME = 256 * 1024 * 1024  # a full block of txs, with room
_HEADER = struct.Struct(">I")
_SUN_PATH_MAX = 107  # bytes in a Unix socket address (Linux), without the final NUL


class ProducerUnavailable(RuntimeError):
    """No process serves the solo ledger: nothing can be submitted until one runs."""


def socket_path(ledger_db: Path) -> Path:
    """Where the producer of the solo ledger at `ledger_db` serves it."""
    return ledger_db.with_name("ledger.sock")


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """`path` as a socket address; a path too long for one is reached through its folder's
    descriptor (/proc/self/fd/N/name), as deep pytest or home folders need."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _send(sock: socket.socket, obj: Any) -> None:
    body = codec.encode(obj)
    sock.sendall(_HEADER.pack(len(body)) + body)


def _receive(sock: socket.socket) -> Any:
    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("the other side closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes is over {MAX_FRAME}")
    return codec.decode(exactly(size))


class LedgerServer:
    """Serves `engine.submit_many` to the other processes of the sandbox (producer side)."""

    def __init__(self, engine: SoloEngine, path: Path) -> None:
        self.engine = engine
        self.path = path
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LedgerServer:
        engine = self.engine

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    request = _receive(self.request)
                except (ConnectionError, codec.CodecError, struct.error):
                    return
                _send(self.request, _answer(engine, request))

        # The caller holds the ledger's lock: a socket file left here is a dead producer's.
        self.path.unlink(missing_ok=True)
        with _address(self.path) as address:
            server = socketserver.ThreadingUnixStreamServer(address, Handler)
        server.daemon_threads = True
        os.chmod(self.path, 0o600)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="solo-ledger-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.path.unlink(missing_ok=True)


def _answer(engine: SoloEngine, request: Any) -> dict[str, Any]:
    op = request.get("op") if isinstance(request, dict) else None
    if op == "ping":
        return {"height": engine.height()}
    txs = request.get("txs") if op == "submit" else None
    if not isinstance(txs, list) or not all(isinstance(t, bytes) for t in txs):
        return {"error": "request: expected {op: submit, txs: [bytes]} or {op: ping}"}
    try:
        done = engine.submit_many(txs)
    except Exception as exc:  # noqa: BLE001 - the engine stopped: say why to the submitter
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"submitted": [[s.tx_id, s.check.to_obj()] for s in done]}


def _call(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
            _address(path) as address,
        ):
            sock.settimeout(timeout)
            sock.connect(address)
            _send(sock, request)
            answer = _receive(sock)
    except (OSError, ConnectionError) as exc:
        raise ProducerUnavailable(
            f"{path}: no process produces this solo ledger's blocks ({type(exc).__name__}: "
            f"{exc}); start `medledger sandbox run` or a `medledger node run` of the sandbox"
        ) from None
    if not isinstance(answer, dict):
        raise ProducerUnavailable(f"{path}: an answer that is not a map")
    if "error" in answer:
        raise RuntimeError(f"the solo ledger's producer refused: {answer['error']}")
    return answer


def serving(path: Path, timeout: float = 2.0) -> bool:
    """Whether a producer answers at `path` now."""
    try:
        _call(path, {"op": "ping"}, timeout)
    except (ProducerUnavailable, RuntimeError):
        return False
    return True


class SoloClient:
    """The Engine of a process beside the solo ledger's producer (`medledger.consensus.engine`).

    Reads come from the ledger file, each in one SQLite snapshot (steady against the
    producer's commits); `submit` goes through the producer's socket. Without a socket
    (`socket=None`) it only reads, for commands beside a producer that serves none.
    """

    def __init__(
        self, ledger_db: Path, registry: Registry, socket: Path | None, poll: float = 0.05
    ) -> None:
        self.store = Store(ledger_db)
        self.registry = registry
        self.socket = socket
        self.poll = poll
        self.timeout = 60.0
        self._lock = threading.Lock()  # one snapshot at a time on the one connection
        self._closed = threading.Event()

    @property
    def submits(self) -> bool:
        return self.socket is not None

    def producer_gone(self, timeout: float = 1.0) -> str:
        """Why nothing can be committed now ("" when the producer answers): for the node's
        health probe, which then refuses requests (503) rather than fail their writes."""
        if self.socket is None or serving(self.socket, timeout):
            return ""
        return (
            f"the solo ledger's producer ({self.socket}) does not answer: nothing can be "
            "written to the chain; the node serves again by itself once it is back"
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Store]:
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("this solo ledger client is closed")
            with self.store.snapshot():
                self.store.reread()
                yield self.store

    # -- Engine interface -------------------------------------------------------------
    def submit(self, tx: bytes) -> Submitted:
        return self.submit_many([tx])[0]

    def submit_many(self, txs: list[bytes]) -> list[Submitted]:
        if self.socket is None:
            raise ProducerUnavailable(
                "this process only reads the solo ledger: the process that holds it serves "
                "no socket to submit through"
            )
        answer = _call(self.socket, {"op": "submit", "txs": txs}, self.timeout)
        return [Submitted(bytes(tid), TxResult.from_obj(res)) for tid, res in answer["submitted"]]

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        deadline = time.monotonic() + timeout
        while True:
            with self._reading() as store:
                loc = store.locate_tx(tx_id)
                record = None if loc is None else store.block(loc[0])
            if loc is not None and record is not None:
                return Committed(tx_id, loc[0], loc[1], record.results[loc[1]])
            if time.monotonic() >= deadline:
                raise TimeoutError(f"tx {tx_id.hex()} not committed within {timeout}s")
            time.sleep(self.poll)

    def query(self, path: str, data: Any = None) -> Any:
        with self._reading() as store:
            return query_store(store, self.registry, path, data)

    @contextlib.contextmanager
    def read_view(self) -> Iterator[StateView]:
        with self._reading() as store:
            yield StateView(store)

    def height(self) -> int:
        with self._reading() as store:
            return store.height

    def blocks(self, from_height: int = 1, follow: bool = False) -> Iterator[BlockRecord]:
        h = max(1, from_height)
        while not self._closed.is_set():
            try:
                with self._reading() as store:
                    record = store.block(h)
            except RuntimeError:  # closed meanwhile
                return
            if record is not None:
                yield record
                h += 1
            elif not follow:
                return
            else:
                self._closed.wait(self.poll * 4)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self.store.close()
