"""A real four-hospital CometBFT network on loopback, and a load generator for it.

The network is module-scoped (start-up and genesis cost seconds, and the tests restore it to
four running nodes), always stopped at the end; logs stay in pytest's tmp folder.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medledger.consensus.cometbft import processes, testnet
from medledger.consensus.cometbft.client import RpcEngine
from medledger.consensus.cometbft.rpc import CometRpc, RpcError, RpcUnavailable
from medledger.contracts import queries
from medledger.ledger import codec
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import sign_tx
from medledger.node.config import load_config
from medledger.provisioning import create_consortium

BLOCK_TIME_MS = 200
CHAIN = "medledger-cmt-test"


requires_cometbft = pytest.mark.usefixtures("cometbft_binary")  # fails if it is not built


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(RpcUnavailable, RpcError, OSError):
            if predicate():
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class CmtNet:
    """Handles on a running consortium: RPC clients, replicas, keys, signing."""

    dir: Path
    orgs: list[str]
    keys: dict[str, SigningKey] = field(default_factory=dict)
    nonces: dict[bytes, int] = field(default_factory=dict)
    _rpcs: dict[str, CometRpc] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def home(self, org: str) -> Path:
        return testnet.hospital_home(self.dir, org)

    def rpc(self, org: str) -> CometRpc:
        if org not in self._rpcs:
            url = testnet.node_addresses(testnet.cometbft_home(self.dir, org), org).rpc_url
            self._rpcs[org] = CometRpc(url, timeout=5)
        return self._rpcs[org]

    def engine(self, org: str) -> RpcEngine:
        return RpcEngine.for_home(load_config(self.home(org)))

    def key(self, org: str) -> SigningKey:
        if org not in self.keys:
            key = load_config(self.home(org)).org_key()
            with self.engine(org) as engine:  # the node itself signs too (its key escrow)
                self.nonces.setdefault(key.public_key, queries.nonce(engine, key.public_key))
            self.keys[org] = key
        return self.keys[org]

    def wait_escrowed(self, timeout: float = 90) -> None:
        """Until every node has deposited its key escrow, the one tx a node signs by itself
        at start: the test's own txs then take the next nonces without racing it."""

        def escrowed(org: str) -> bool:
            with self.engine(org) as engine:
                return bool(queries.escrow_status(engine, org)["current"])

        wait_until(lambda: all(escrowed(o) for o in self.orgs), timeout, "key escrows")

    def tx(self, org: str, kind: str, body: dict[str, Any], nonce: int | None = None) -> bytes:
        key = self.key(org)
        with self._lock:
            n = nonce if nonce is not None else self.nonces.get(key.public_key, 0) + 1
            self.nonces[key.public_key] = max(n, self.nonces.get(key.public_key, 0))
        return sign_tx(key, CHAIN, kind, body, n)

    def register_tx(self, org: str, name: str) -> bytes:
        body = {"practitioner": name, "key": SigningKey.generate().public_key, "roles": ["nurse"]}
        return self.tx(org, "identity.register", body)

    def running(self) -> list[str]:
        return [o for o in self.orgs if processes.read_pid(self.dir, o, "cometbft") is not None]

    def height(self, org: str) -> int:
        return self.rpc(org).height()

    def app_height(self, org: str) -> int:
        with self.engine(org) as e:
            return e.height()

    def records(self, org: str, upto: int) -> list[tuple[bytes, list[bytes]]]:
        """(app hash, tx ids) of each height 1..upto, from the hospital's own replica."""
        out = []
        engine = self.engine(org)
        try:
            for h in range(1, upto + 1):
                record = engine.block(h)
                assert record is not None, f"{org} has no record at height {h}"
                out.append((record.header.app_hash, [codec.sha256(t) for t in record.txs]))
        finally:
            engine.close()
        return out

    def wait_heights(self, orgs: list[str], height: int, timeout: float = 60) -> None:
        wait_until(
            lambda: all(self.height(o) >= height for o in orgs),
            timeout,
            f"{orgs} to reach height {height}",
        )

    def assert_same_state(self, orgs: list[str] | None = None, timeout: float = 60) -> int:
        """All (running) nodes have identical records up to a common height; returns it."""
        orgs = orgs or self.running()
        target = max(self.height(o) for o in orgs)
        self.wait_heights(orgs, target, timeout)
        wait_until(lambda: all(self.app_height(o) >= target for o in orgs), timeout, "apps")
        first = self.records(orgs[0], target)
        for org in orgs[1:]:
            assert self.records(org, target) == first, f"{org} differs from {orgs[0]}"
        return target

    def close(self) -> None:
        for r in self._rpcs.values():
            r.close()
        self._rpcs.clear()


class Load:
    """Signed txs at a steady rate, each hospital submitting to its own node."""

    def __init__(self, net: CmtNet, rate: float = 60.0, orgs: list[str] | None = None) -> None:
        self.net = net
        self.rate = rate
        self.orgs = orgs or list(net.orgs)
        self.accepted: dict[str, list[bytes]] = {o: [] for o in self.orgs}
        self.rejected: list[tuple[str, int, str]] = []
        self.unreachable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._count = 0

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        down_until: dict[str, float] = {}
        while not self._stop.is_set():
            org = self.orgs[self._count % len(self.orgs)]
            self._count += 1
            if down_until.get(org, 0) > time.monotonic():
                continue
            tx = self.net.register_tx(org, f"load-{org}-{self._count}")
            try:
                result = self.net.rpc(org).broadcast_tx_sync(tx)
            except (RpcUnavailable, RpcError):
                self.unreachable += 1
                down_until[org] = time.monotonic() + 0.5
                continue
            if result["code"] == 0:
                self.accepted[org].append(codec.sha256(tx))
            else:
                self.rejected.append((org, result["code"], result["log"]))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def all_accepted(self, orgs: list[str] | None = None) -> set[bytes]:
        return {t for o in (orgs or self.orgs) for t in self.accepted[o]}


@pytest.fixture(scope="module")
def cmt_net(tmp_path_factory: pytest.TempPathFactory, cometbft_binary: Path) -> Iterator[CmtNet]:
    directory = tmp_path_factory.mktemp("cmtnet")
    homes = create_consortium(
        directory,
        4,
        engine="cometbft",
        chain_id=CHAIN,
        block_time_ms=BLOCK_TIME_MS,
        genesis_time_ms=int(time.time() * 1000),
    )
    net = CmtNet(directory, [h.name for h in homes])
    try:
        processes.up(directory, timeout=60)
        net.wait_heights(net.orgs, 2, timeout=60)
        net.wait_escrowed()
        yield net
    finally:
        net.close()
        processes.down(directory, timeout=10)
        leftovers = [p for p in processes.processes(directory) if p.running]
        assert not leftovers, f"processes left behind: {leftovers}"
