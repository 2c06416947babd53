"""CometBFT's kvstore, in-process and as a socket app, and the Python floor, versus medledger:
same 4-validator network, same machine, in turn.

Apps: `kvstore` (in CometBFT's process), `socket_kvstore` (`abci-cli kvstore` of the same
CometBFT module, an external app behind the same socket ABCI client as medledger's), `pyfloor`
(bench/pyfloor_app.py: the least a signed ledger must do per tx, in Python, behind medledger's
own ABCI server: Ed25519 and nonce at CheckTx, a key/value write per tx, one SQLite transaction
per block), and `medledger`; kvstore and floor txs are padded to medledger's tx size. For
each app: four validators on loopback with the configuration `medledger init --engine
cometbft` writes (testnet.prepare: block time 1 s unless `block_time_ms`, the target interval:
timeout_commit is `testnet.timeout_commit_ms` of it, 600 ms; `block_time_ms=1400` gives
session 10's 1 s timeout_commit), then

1. latency (medledger only, unless `latency_all`): an open-loop offered load of `rate` tx/s
   for `latency_s` seconds; a tx's commit latency runs from handing it to its node
   (broadcast_tx_sync) to the moment node 0's RPC first reports the height of the block that
   contains it (polled every 20 ms); with the mean block interval the txs saw
   (`block_interval_mean_s`) and where they waited (`trace`, `latency_trace`);
2. saturation: `streams` client streams (spread over the four nodes) submit as fast as their
   node accepts, pausing while its mempool holds more than `mempool_high` txs, for
   `saturation_s` seconds after `warmup_s`; committed tx/s = txs in the blocks committed in
   that window / the window's length in block time. It also reports the CPU the four apps,
   the four CometBFTs and this load generator used during the window and during `IDLE_S`
   seconds with no load before it (cores, and ms per committed tx; Linux /proc), and with
   `profile_s` CPU profiles of node 0 (CometBFT's pprof, py-spy for medledger's app).

Each stream is one signer submitting in order, one tx per request: a signer's nonces must
reach CheckTx in order, and CometBFT's socket ABCI client batches CheckTx requests to the app
between flushes, so throughput needs many requests in flight. medledger txs are real signed
`identity.register` txs by `streams` member organisations added to the genesis (four
validating hospitals plus non-validating members), so CheckTx verifies an Ed25519 signature
and every block writes SQLite. Run:

    .venv/bin/medledger bench cometbft                        # the four apps, block time 1 s
    .venv/bin/medledger bench cometbft --set rounds=3 --set profile_s=10
    .venv/bin/medledger bench cometbft --set block_time_ms=500

Knobs are `run`'s arguments (docs/benchmarks.md, "CometBFT network").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import datetime
import functools
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from medledger.consensus.cometbft import processes, testnet

CHAIN = "medledger-bench"
HOSPITALS = 4
# Pause a node's streams while its mempool holds more than this: every tx left in a mempool is
# re-checked after each block, so an unbounded backlog would measure rechecks, not throughput.
MEMPOOL_HIGH = 2000
IDLE_S = 4  # seconds of no load before a saturation phase, to measure idle CPU
# How often each Python app logs its ABCI CPU by method and the server's rest (node 0's lines
# are `abci_cpu_node0`): a saturation phase holds a few such lines.
ABCI_STATS_S = 10


# --------------------------------------------------------------------------- networks


@dataclass
class Network:
    app: str
    dir: Path
    urls: list[str]
    streams: int
    make_txs: Callable[[int, int], list[bytes]]  # (stream, count) -> txs in submission order

    def url(self, stream: int) -> str:
        return self.urls[stream % len(self.urls)]


def _bare_testnet(directory: Path, block_time_ms: int, recheck: int, abci_unix: int) -> list[str]:
    """Four validators' CometBFT homes and genesis, no medledger consortium: the peers' net."""
    orgs = [f"hospital-{i + 1}" for i in range(HOSPITALS)]
    keys = testnet.prepare(directory, orgs, block_time_ms, CHAIN)
    validators = [(o, keys[o], 10) for o in orgs]
    testnet.write_genesis(directory, CHAIN, int(time.time() * 1000), validators)
    _tune(directory, recheck, abci_unix)
    return orgs


def _kvstore_network(
    directory: Path,
    block_time_ms: int,
    streams: int,
    tx_bytes: int,
    socket: bool = False,
    recheck: int = -1,
    abci_unix: int = 0,
) -> Network:
    """CometBFT's kvstore: in-process (`--proxy_app=kvstore`), or as an external socket app
    (`abci-cli kvstore` of the same CometBFT module, one process per node) talking to
    CometBFT through the same socket ABCI client medledger's apps do. Txs are `key=vvv...`
    padded to `tx_bytes`, medledger's tx size, so both carry the same bytes per tx."""
    orgs = _bare_testnet(directory, block_time_ms, recheck, abci_unix)
    if socket:
        processes.start_apps(directory, orgs, app_command=_abci_cli_kvstore)
        processes.start_cometbfts(directory, orgs)
    else:
        processes.start_cometbfts(directory, orgs, extra_args=["--proxy_app=kvstore"])
    counters = [itertools.count() for _ in range(streams)]

    def make_txs(stream: int, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            key = f"s{stream}-{next(counters[stream])}=".encode()
            out.append(key + b"v" * max(1, tx_bytes - len(key)))
        return out

    name = "socket_kvstore" if socket else "kvstore"
    return Network(name, directory, _urls(directory), streams, make_txs)


def abci_cli_binary() -> str:
    """`abci-cli` of the pinned CometBFT (`make cometbft` builds it into .tools/bin)."""
    found = Path(testnet.cometbft_binary()).with_name("abci-cli")
    if not os.access(found, os.X_OK):
        raise RuntimeError(f"{found} not found: run `make cometbft`")
    return str(found)


def _abci_cli_kvstore(consortium_dir: Path, org: str) -> list[str]:
    """The socket kvstore for one node; its database lives under the hospital's home (so the
    process is recognised as this hospital's app, stopped with it and removed with it)."""
    home = testnet.hospital_home(consortium_dir, org)
    abci = testnet.node_addresses(testnet.cometbft_home(consortium_dir, org), org).abci
    return [abci_cli_binary(), "kvstore", "--address", abci, "--persist", str(home / "kvstore")]


PYFLOOR_APP = Path(__file__).resolve().with_name("pyfloor_app.py")


def _pyfloor_network(
    directory: Path,
    block_time_ms: int,
    streams: int,
    tx_bytes: int,
    recheck: int = -1,
    abci_unix: int = 0,
    bare: int = 0,
    hold_ms: int = -1,
) -> Network:
    """The Python floor (bench/pyfloor_app.py): the least a signed ledger must do per tx,
    behind medledger's own ABCI socket server, one process per node. Its txs are signed by
    `streams` member keys (as medledger's), padded to `tx_bytes`, medledger's tx size; `bare`
    1 answers CometBFT through the floor's plain protobuf server instead of medledger's;
    `hold_ms` >= 0 sets its server's consensus-first hold as medledger's (default 1 s)."""
    import nacl.signing

    orgs = _bare_testnet(directory, block_time_ms, recheck, abci_unix)
    signers = [
        nacl.signing.SigningKey(hashlib.sha256(f"bench-signer-{i}".encode()).digest())
        for i in range(streams)
    ]
    (directory / "floor-signers.txt").write_text(
        "".join(bytes(k.verify_key).hex() + "\n" for k in signers)
    )
    command = functools.partial(_pyfloor_command, bare=bool(bare), hold_ms=hold_ms)
    processes.start_apps(directory, orgs, app_command=command)
    processes.start_cometbfts(directory, orgs)
    nonces = [0] * streams
    encode_tx = _load_pyfloor().encode_tx

    def make_txs(stream: int, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            nonces[stream] += 1
            key = f"p{nonces[stream]}".encode()
            out.append(encode_tx(signers[stream], CHAIN, nonces[stream], key, tx_bytes))
        return out

    name = "pyfloor_bare" if bare else "pyfloor"
    return Network(name, directory, _urls(directory), streams, make_txs)


def _load_pyfloor() -> Any:
    """bench/pyfloor_app.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pyfloor_app", PYFLOOR_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _pyfloor_command(
    consortium_dir: Path, org: str, bare: bool = False, hold_ms: int = -1
) -> list[str]:
    """The floor app for one node, its SQLite file under the hospital's home."""
    home = testnet.hospital_home(consortium_dir, org)
    abci = testnet.node_addresses(testnet.cometbft_home(consortium_dir, org), org).abci
    return [sys.executable, str(PYFLOOR_APP), "--address", abci, "--chain", CHAIN] + [
        "--db",
        str(home / "floor.sqlite"),
        "--signers",
        str(consortium_dir / "floor-signers.txt"),
        *(["--bare"] if bare else []),
        *(["--hold-s", str(hold_ms / 1000)] if hold_ms >= 0 else []),
        "--stats-interval",
        str(ABCI_STATS_S),
    ]


def _tune(directory: Path, recheck: int, abci_unix: int = 0) -> None:
    """`recheck` 0/1 overrides mempool.recheck in every node's config (-1: keep medledger's),
    to measure what rechecking costs side by side; `abci_unix` 1 puts the app's ABCI socket
    on a unix socket in CometBFT's home instead of loopback TCP; and node 0 gets a pprof
    endpoint."""
    orgs = testnet.list_hospitals(directory)
    for org in orgs:
        path = testnet.cometbft_home(directory, org) / "config" / "config.toml"
        settings: dict[str, Any] = {}
        if recheck >= 0:
            settings["mempool"] = {"recheck": bool(recheck)}
        if abci_unix:
            settings[""] = {"proxy_app": f"unix://{path.parent.parent / 'abci.sock'}"}
        if settings:
            path.write_text(testnet.set_config(path.read_text(), settings))
    _enable_pprof(directory, orgs[0])


def _enable_pprof(directory: Path, org: str) -> None:
    """Give node `org`'s CometBFT a pprof endpoint (rpc.pprof_laddr) on a free port."""
    from medledger.host.ports import free_ports

    path = testnet.cometbft_home(directory, org) / "config" / "config.toml"
    used: set[int] = set()
    for addr in testnet.consortium_addresses(directory).values():
        for a in (addr.p2p, addr.rpc_url, addr.abci):
            if a.rsplit(":", 1)[-1].isdigit():  # not a unix socket
                used.add(int(a.rsplit(":", 1)[1]))
    (port,) = free_ports(1, used)
    settings = {"rpc": {"pprof_laddr": f"127.0.0.1:{port}"}}
    path.write_text(testnet.set_config(path.read_text(), settings))


def _pprof_url(directory: Path, org: str) -> str:
    path = testnet.cometbft_home(directory, org) / "config" / "config.toml"
    return "http://" + str(tomllib.loads(path.read_text())["rpc"]["pprof_laddr"])


def _medledger_network(
    directory: Path,
    block_time_ms: int,
    streams: int,
    recheck: int = -1,
    hold_ms: int = -1,
    abci_unix: int = 0,
    replica_only: bool = False,
    probe: int = 0,
) -> Network:
    """Four validating hospitals, plus `streams` non-validating member organisations.

    Each hospital runs its whole node (`medledger node run`: ledger replica, API, exchange,
    agents, audit journal); with `replica_only`, the ledger replica alone
    (`medledger.node.run_app`), which tells what the node's other threads cost per tx.

    A signer's txs must reach CheckTx in nonce order, so each signer is one sequential
    stream; concurrency (which CometBFT's socket ABCI client needs: it flushes CheckTx
    requests to the app every 20 ms) comes from many signers, as from many hospitals' users.
    """
    from medledger.ledger.genesis import Genesis, GenesisMember
    from medledger.ledger.keys import SigningKey
    from medledger.ledger.tx import sign_tx
    from medledger.provisioning import create_consortium

    create_consortium(
        directory,
        HOSPITALS,
        engine="cometbft",
        chain_id=CHAIN,
        block_time_ms=block_time_ms,
        genesis_time_ms=int(time.time() * 1000),
    )
    keys = [
        SigningKey(hashlib.sha256(f"bench-signer-{i}".encode()).digest()) for i in range(streams)
    ]
    genesis = Genesis.load(directory / "genesis.json")
    extra = [GenesisMember(f"signer-{i}", f"Signer {i}", k.public_key) for i, k in enumerate(keys)]
    genesis = Genesis(
        chain_id=genesis.chain_id,
        time_ms=genesis.time_ms,
        members=[*genesis.members, *extra],
        engine=genesis.engine,
        solo_key=genesis.solo_key,
        params=genesis.params,
        contracts=genesis.contracts,
    )
    genesis.save(directory / "genesis.json")
    _tune(directory, recheck, abci_unix)
    env = {"MEDLEDGER_ABCI_STATS_S": str(ABCI_STATS_S)}
    if hold_ms >= 0:
        env["MEDLEDGER_PROPOSAL_HOLD_S"] = str(hold_ms / 1000)
    command = _replica_command if replica_only else None
    if probe:
        command = functools.partial(_probed_command, directory)
    processes.up(directory, app_command=command, env=env)
    nonces = [0] * streams

    def make_txs(stream: int, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            nonces[stream] += 1
            n = nonces[stream]
            body = {"practitioner": f"p{n}", "key": os.urandom(32), "roles": ["nurse"]}
            out.append(sign_tx(keys[stream], CHAIN, "identity.register", body, n))
        return out

    name = "medledger_replica" if replica_only else "medledger"
    return Network(name, directory, _urls(directory), streams, make_txs)


def _replica_command(consortium_dir: Path, org: str) -> list[str]:
    """The hospital's ledger replica serving ABCI, and nothing else."""
    home = str(testnet.hospital_home(consortium_dir, org))
    return [sys.executable, "-m", "medledger.node.run_app", "--home", home]


def _probed_command(directory: Path, consortium_dir: Path, org: str) -> list[str]:
    """Node 0's whole node with its CheckTx split into parts (bench/live_probe.py); the
    other hospitals run as usual."""
    command = processes.default_app_command(consortium_dir, org)
    if org != testnet.list_hospitals(directory)[0]:
        return command
    probe = str(Path(__file__).resolve().parent / "live_probe.py")
    return [command[0], probe, *command[3:]]


def _urls(directory: Path) -> list[str]:
    return [a.rpc_url for a in testnet.consortium_addresses(directory).values()]


# --------------------------------------------------------------------------- rpc


class _Conn:
    """One keep-alive HTTP/1.1 connection posting JSON-RPC: lighter than a general client, so
    the load generator leaves the CPU to the nodes it measures."""

    def __init__(self, url: str) -> None:
        host, _, port = url.split("://", 1)[1].rpartition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: bytes) -> Any:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST / HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        await self.reader.readline()  # status line
        length = -1
        chunked = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.readexactly(length)
        return orjson.loads(body)

    async def broadcast(self, tx: bytes) -> tuple[int, str]:
        """(CheckTx code, log); code -1 when the mempool refused it (full, cache, ...)."""
        answer = await self.post(
            orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "broadcast_tx_sync",
                    "params": {"tx": base64.b64encode(tx).decode()},
                }
            )
        )
        if "result" in answer:
            return int(answer["result"]["code"]), str(answer["result"]["log"])
        return -1, str(answer.get("error", {}).get("data", ""))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _call(client: httpx.AsyncClient, url: str, method: str, **params: Any) -> Any:
    r = await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return r.json()["result"]


async def _height(client: httpx.AsyncClient, url: str) -> int:
    return int((await _call(client, url, "status"))["sync_info"]["latest_block_height"])


async def _block_metas(
    client: httpx.AsyncClient, url: str, lo: int, hi: int
) -> list[dict[str, Any]]:
    metas: list[dict[str, Any]] = []
    h = hi
    while h >= lo:
        low = max(lo, h - 19)
        result = await _call(client, url, "blockchain", minHeight=str(low), maxHeight=str(h))
        metas.extend(result["block_metas"])
        h = low - 1
    return sorted(metas, key=lambda m: int(m["header"]["height"]))


def _block_time_s(meta: dict[str, Any]) -> float:
    text = meta["header"]["time"]  # RFC 3339 with nanoseconds
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    return seconds + float(f"0.{frac or '0'}")


# --------------------------------------------------------------------------- cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(net: Network) -> dict[str, float]:
    """CPU seconds so far of the apps, the CometBFTs and this load generator."""
    totals = {"apps": 0.0, "cometbft": 0.0, "load_generator": 0.0}
    for org in testnet.list_hospitals(net.dir):
        for role, key in (("app", "apps"), ("cometbft", "cometbft")):
            pid = processes.read_pid(net.dir, org, role)
            if pid is not None:
                totals[key] += _cpu_seconds(pid)
    totals["load_generator"] = _cpu_seconds(os.getpid())
    return totals


# --------------------------------------------------------------------------- profiles


PROFILE_TOP = 25  # lines of each profile's summary kept in the JSON


def _profile(net: Network, seconds: int) -> dict[str, Any]:
    """CPU profiles for `seconds`, taken side by side: node 0's CometBFT through the pprof
    endpoint (`go tool pprof -top` summary), and every node's app with py-spy when installed
    (`pip install py-spy`; self and inclusive time per function, the four apps' samples
    together in `app_top`). The raw files stay in $TMPDIR/medledger-bench-profiles/ for
    `go tool pprof` / speedscope."""
    out_dir = Path(tempfile.gettempdir()) / "medledger-bench-profiles"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%H%M%S")
    orgs = testnet.list_hospitals(net.dir)
    org = orgs[0]
    result: dict[str, Any] = {"seconds": seconds, "node": org}
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    spying: list[tuple[Path, subprocess.Popen[bytes]]] = []
    python_app = net.app in PYTHON_APPS
    for each in orgs if python_app and os.access(spy, os.X_OK) else []:
        app_pid = processes.read_pid(net.dir, each, "app")
        if app_pid is None:
            continue
        collapsed = out_dir / f"{net.app}-{stamp}-app-{each}.txt"
        process = subprocess.Popen(
            [spy, "record", "-p", str(app_pid), "-d", str(seconds), "-r", "200"]
            + ["--nonblocking", "-f", "raw", "-o", str(collapsed)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spying.append((collapsed, process))
    pb = out_dir / f"{net.app}-{stamp}-cometbft.pb.gz"
    answer = httpx.get(
        f"{_pprof_url(net.dir, org)}/debug/pprof/profile",
        params={"seconds": seconds},
        timeout=seconds + 30,
    )
    pb.write_bytes(answer.content)
    result["cometbft_profile"] = str(pb)
    go = shutil.which("go")
    if go is not None:
        top = subprocess.run(
            [go, "tool", "pprof", "-top", f"-nodecount={PROFILE_TOP}"]
            + [testnet.cometbft_binary(), str(pb)],
            capture_output=True,
            text=True,
            check=False,
        )
        result["cometbft_top"] = top.stdout.splitlines()[: PROFILE_TOP + 6]
    if spying:
        done: list[Path] = []
        for collapsed, process in spying:
            try:
                process.wait(timeout=seconds + 30)
                done.append(collapsed)
            except subprocess.TimeoutExpired:  # a machine so loaded py-spy cannot keep up
                process.kill()
                process.wait()
                result["app_profile_error"] = f"py-spy did not finish within {seconds + 30} s"
        if done:
            result["app_profile"] = str(done[0])
            result["app_profiles"] = [str(path) for path in done]
            result["app_top"] = _collapsed_top(*done)
            result["app_steps"] = _collapsed_steps(*done)
    return result


# What a Python app's sample was doing, by ABCI method (the first found from the stack's root)
# and, within CheckTx, by part; the same rules for medledger and the floor (bench/pyfloor_app.py)
# so that their tables compare line by line.
_METHODS = (
    ("commit", "Commit"),
    ("finalize_block", "FinalizeBlock"),
    ("_process_proposal", "ProcessProposal"),
    ("_prepare_proposal", "PrepareProposal"),
    ("simulate_block", "Prepare/ProcessProposal"),  # the bare server does not tell them apart
    ("check_tx", "CheckTx"),
)


_WAITS = ("selectors.py", "threading.py", "queue.py")  # a leaf here: the thread is waiting


def _sample_step(frames: list[tuple[str, str]]) -> str:
    """The table line of one stack, given as (function, file) from its root; "waiting" for a
    thread blocked in a select, a condition or a queue (py-spy samples those too)."""
    if frames[-1][1].endswith(_WAITS) or frames[-1][0].endswith("sleep"):
        return "waiting"
    names = [name.rsplit(".", 1)[-1] for name, _ in frames]
    files = " ".join(path for _, path in frames)
    method = next((label for key, label in _METHODS if key in names), None)
    if method == "CheckTx":
        if "nacl/" in files:
            return "CheckTx: Ed25519 verify"
        if "decode_tx" in names:
            return "CheckTx: strict decoding"
        if "/contracts/" in files or "parse_message" in names:
            return "CheckTx: the handler"
        return "CheckTx: the app's own (tx id, nonce, bookkeeping)"
    if method is not None:
        return method
    if "_write_out" in names or "write" in names[-1:]:
        return "socket write"
    if "abci_server.py" in files or "pyfloor_app.py" in files or "asyncio/" in files:
        return "the server: framing, CheckTx parse and answer, dispatch, event loop"
    return "other threads"


def _collapsed_steps(*paths: Path) -> dict[str, float]:
    """Share of the busy samples (%) per `_sample_step` line, from py-spy's collapsed stacks;
    `waiting` is the share of all samples that were waits, left out of the others."""
    counts: dict[str, int] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [(f.split(" (")[0], f.split(" (")[-1].split(":")[0]) for f in stack.split(";")]
            step = _sample_step(frames)
            counts[step] = counts.get(step, 0) + int(count)
    waiting = counts.pop("waiting", 0)
    busy = sum(counts.values())
    if not busy:
        return {}
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    shares = {step: round(100 * n / busy, 1) for step, n in ranked}
    return {**shares, "waiting": round(100 * waiting / (busy + waiting), 1)}


def _collapsed_top(*paths: Path) -> dict[str, list[str]]:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks (of
    one process or several together)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    lines: list[str] = []
    for path in paths:
        try:
            lines += path.read_text().splitlines()
        except OSError:
            continue
    if not lines:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0] + ")"
            for f in stack.split(";")
        ]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n

    def top(counts: dict[str, int]) -> list[str]:
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:PROFILE_TOP]
        return [f"{100 * n / max(1, total):5.1f}% {name}" for name, n in ranked]

    return {"self": top(own), "inclusive": top(inclusive), "samples": [str(total)]}


# --------------------------------------------------------------------------- phases


@dataclass
class TxTrace:
    """One latency-phase tx (wall clock, s): sent, CheckTx answered at its node (index),
    the height of its block, and when node 0's RPC first showed that height."""

    sent: float
    checked: float
    node: int
    height: int
    seen: float


@dataclass
class Counts:
    accepted: int = 0
    rejected: int = 0
    refused: int = 0  # mempool full or other RPC-level refusal
    codes: dict[str, int] = field(default_factory=dict)

    def add(self, code: int, log: str) -> None:
        if code == 0:
            self.accepted += 1
            return
        if code < 0:
            self.refused += 1
        else:
            self.rejected += 1
        key = f"{code}: {log[:60]}"
        self.codes[key] = self.codes.get(key, 0) + 1


async def _saturate(
    net: Network,
    seconds: float,
    warmup: float,
    max_rate: int,
    mempool_high: int,
    profile_s: int = 0,
) -> dict[str, Any]:
    counts = Counts()
    stop = asyncio.Event()
    # A stream waits for its node's mempool to drain on an event, not by polling: 64 streams
    # polling every 20 ms took the load generator's CPU per tx up with the time an app's
    # mempool spends full, i.e. more for a slower app, on the cores the apps share.
    accepting = {url: asyncio.Event() for url in net.urls}
    for event in accepting.values():
        event.set()
    per_stream = int(max_rate * (seconds + warmup) / net.streams) + 1
    backlog = [net.make_txs(i, per_stream) for i in range(net.streams)]
    async with httpx.AsyncClient(timeout=30) as client:
        start_height = await _height(client, net.urls[0])

        async def monitor() -> None:
            while not stop.is_set():
                for url in net.urls:
                    total = int((await _call(client, url, "num_unconfirmed_txs"))["total"])
                    if total > mempool_high:
                        accepting[url].clear()
                    else:
                        accepting[url].set()
                await asyncio.sleep(0.05)

        async def stream(i: int) -> None:
            conn = _Conn(net.url(i))
            try:
                for tx in backlog[i]:
                    await accepting[net.url(i)].wait()
                    if stop.is_set():
                        return
                    counts.add(*await conn.broadcast(tx))
            finally:
                conn.close()

        # CometBFT's CPU with no load (heartbeat blocks, gossip, timers): a per-second cost,
        # which weighs more per tx at a lower rate.
        idle0, i0 = _cpu_snapshot(net), time.monotonic()
        await asyncio.sleep(IDLE_S)
        idle1, i1 = _cpu_snapshot(net), time.monotonic()
        idle = {k: round(max(0.0, idle1[k] - idle0[k]) / (i1 - i0), 3) for k in idle0}
        tasks = [asyncio.create_task(stream(i)) for i in range(net.streams)]
        watcher = asyncio.create_task(monitor())
        await asyncio.sleep(warmup)
        h0 = await _height(client, net.urls[0])
        cpu0, t0 = _cpu_snapshot(net), time.monotonic()
        profiling = (
            asyncio.create_task(asyncio.to_thread(_profile, net, min(profile_s, int(seconds))))
            if profile_s > 0
            else None
        )
        await asyncio.sleep(seconds)
        h1 = await _height(client, net.urls[0])
        cpu1, t1 = _cpu_snapshot(net), time.monotonic()
        profile = await profiling if profiling is not None else None
        exhausted = all(t.done() for t in tasks)
        stop.set()
        try:
            await watcher
        finally:
            for event in accepting.values():  # wake the waiting streams: they see `stop`
                event.set()
            await asyncio.gather(*tasks)
        metas = await _block_metas(client, net.urls[0], h0, h1)
    committed = sum(int(m["num_txs"]) for m in metas[1:])  # blocks after h0, up to h1
    span = _block_time_s(metas[-1]) - _block_time_s(metas[0])
    # CPU over the wall-clock window, txs over the block-time window: both ≈ saturation_s, so
    # ms per tx is close, not exact (and meaningless if a node restarted meanwhile).
    cores = {k: round(max(0.0, cpu1[k] - cpu0[k]) / (t1 - t0), 2) for k in cpu0}
    per_tx = committed / span if span > 0 and committed else 0.0
    return {
        # Where the machine's CPU went during the window, in cores; and per committed tx.
        "cpu_cores": cores,
        "idle_cpu_cores": idle,
        "cpu_ms_per_tx": {k: round(1000 * v / per_tx, 3) for k, v in cores.items()}
        if per_tx
        else {},
        "committed_tx_per_s": round(committed / span, 1) if span > 0 else 0.0,
        "committed_in_window": committed,
        "window_s": round(span, 2),
        "blocks_in_window": len(metas) - 1,
        "mean_txs_per_block": round(committed / max(1, len(metas) - 1), 1),
        "submitted_accepted": counts.accepted,
        "checktx_rejected": counts.rejected,
        "mempool_refused": counts.refused,
        "refusals": counts.codes,
        "load_exhausted_early": exhausted,
        "start_height": start_height,
        **({"profile": profile} if profile is not None else {}),
    }


async def _latency(net: Network, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    per_stream = [net.make_txs(i, total // net.streams + 1) for i in range(net.streams)]
    sent: dict[bytes, float] = {}
    committed: dict[bytes, float] = {}
    # The trace of each tx (wall clock, to meet node 0's log): sent, CheckTx answered at its
    # node, the node, the height that holds it; and when node 0's RPC first showed each height.
    wall: dict[bytes, tuple[float, float, int]] = {}
    height_of: dict[bytes, int] = {}
    seen_wall: dict[int, float] = {}
    counts = Counts()
    done_sending = asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as client:
        last = await _height(client, net.urls[0])

        async def watch() -> None:
            nonlocal last
            deadline = None
            while True:
                if done_sending.is_set():
                    if deadline is None:
                        deadline = time.monotonic() + 30
                    if len(committed) >= len(sent) or time.monotonic() > deadline:
                        return
                h = await _height(client, net.urls[0])
                seen, seen_at = time.monotonic(), time.time()
                for height in range(last + 1, h + 1):
                    seen_wall[height] = seen_at
                    block = await _call(client, net.urls[0], "block", height=str(height))
                    for tx in block["block"]["data"]["txs"] or []:
                        tid = hashlib.sha256(base64.b64decode(tx)).digest()
                        if tid in sent:
                            committed[tid] = seen
                            height_of[tid] = height
                last = max(last, h)
                await asyncio.sleep(0.02)

        t0 = time.monotonic() + 0.2

        async def stream(i: int) -> None:
            conn = _Conn(net.url(i))
            try:
                for k, tx in enumerate(per_stream[i]):
                    due = t0 + (k * net.streams + i) / rate
                    if due - t0 >= seconds:
                        return
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tid = hashlib.sha256(tx).digest()
                    sent[tid], sent_at = time.monotonic(), time.time()
                    code, log = await conn.broadcast(tx)
                    wall[tid] = (sent_at, time.time(), i % len(net.urls))
                    counts.add(code, log)
                    if code != 0:
                        sent.pop(tid, None)
            finally:
                conn.close()

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(stream(i) for i in range(net.streams)))
        elapsed = time.monotonic() - t0
        done_sending.set()
        await watcher
    lat = sorted(committed[t] - sent[t] for t in committed)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else float("nan")

    trace = _trace(
        net,
        [TxTrace(*wall[t], height=height_of[t], seen=seen_wall[height_of[t]]) for t in committed],
    )
    return {
        "offered_tx_per_s": rate,
        "achieved_offered_tx_per_s": round((counts.accepted + counts.rejected) / elapsed, 1),
        "accepted": counts.accepted,
        "checktx_rejected": counts.rejected,
        "mempool_refused": counts.refused,
        "refusals": counts.codes,
        "committed": len(lat),
        "lost": len(sent) - len(lat),
        "p50_s": pct(0.50),
        "p95_s": pct(0.95),
        "p99_s": pct(0.99),
        "mean_s": round(statistics.fmean(lat), 3) if lat else float("nan"),
        # The interval the txs saw (node 0's decisions), beside the latency it explains.
        "block_interval_mean_s": trace.get("block_interval_mean_s"),
        "trace": trace,
    }


# CometBFT log lines the trace reads (consensus and state at info, as testnet configures):
# `I[2026-11-30|16:27:03.123] message   module=... height=H ...`, local time.
_EVENTS = {
    "proposed": "received proposal",  # height from `Proposal{H/R ...}`, then `proposer=ADDR`
    "deciding": "finalizing commit of block",  # +2/3 precommits: the next height's clock starts
    "executed": "executed block",  # FinalizeBlock answered
    "committed": "committed state",  # Commit answered (after the mempool connection's flush)
}
_LOG_HEIGHT = re.compile(r"height=(\d+)|Proposal\{(\d+)/")
_LOG_PROPOSER = re.compile(r" proposer=([0-9A-F]+)")


@dataclass
class NodeLog:
    """When one CometBFT saw each height's events (wall clock, s) and who proposed it."""

    times: dict[str, dict[int, float]]
    proposers: dict[int, str]

    @classmethod
    def parse(cls, text: str) -> NodeLog:
        times: dict[str, dict[int, float]] = {name: {} for name in _EVENTS}
        proposers: dict[int, str] = {}
        for line in text.splitlines():
            name = next((n for n, needle in _EVENTS.items() if needle in line), None)
            match = _LOG_HEIGHT.search(line) if name and line.startswith("I[") else None
            if name is None or match is None:
                continue
            height = int(match.group(1) or match.group(2))
            stamp = datetime.datetime.strptime(line[2:25], "%Y-%m-%d|%H:%M:%S.%f").timestamp()
            times[name].setdefault(height, stamp)
            proposer = _LOG_PROPOSER.search(line) if name == "proposed" else None
            if proposer is not None:
                proposers.setdefault(height, proposer.group(1))
        return cls(times, proposers)

    @classmethod
    def read(cls, directory: Path, org: str) -> NodeLog:
        path = processes.log_path(directory, org, "cometbft")
        try:
            return cls.parse(path.read_text(errors="replace"))
        except OSError:
            return cls({name: {} for name in _EVENTS}, {})


def _p50_p95(values: list[float]) -> list[float]:
    ranked = sorted(values)
    return [round(ranked[len(ranked) // 2], 3), round(ranked[int(0.95 * len(ranked))], 3)]


def latency_trace(
    txs: list[TxTrace], logs: list[NodeLog], addresses: list[str], timeout_commit_s: float
) -> dict[str, Any]:
    """Where the latency phase's txs waited, from each tx's trace and the nodes' logs (node 0
    the observer), for all txs and for the slowest 5 %, as [p50, p95] in seconds:

    - `check`: sent to CheckTx answered at the tx's node;
    - `mempool`: answered to node 0 receiving the proposal that holds it; `missed`: how many
      proposals node 0 received meanwhile without it, `missed_by`: how long before the first
      of those it was answered, `missed_own_proposer`: how many of those its own node made;
    - `consensus`: that proposal to node 0's "finalizing commit"; `seen`: that to node 0's
      RPC showing the height to the load generator;
    - `missed_reap`: how many heights' reaps it missed, counted at the proposer's own reap
      (its decision of the height before, plus timeout_commit: when CometBFT starts the
      round and takes the mempool), not at node 0's receipt of the proposal, which comes
      `reap_to_proposal_s` later; `missed_reap_by`: how long before the first such reap it
      was answered (a tx answered after the reap could not be in that block, whatever `missed`
      says: that one counts it); `missed_in_proposers_lock`: how many of those were answered
      before that proposer's Commit of the height before ended (CometBFT holds its mempool
      lock from FinalizeBlock's answer to Commit's: a gossiped tx's CheckTx waits for it);

    and per height: `proposal_interval_s`; `block_interval_mean_s` (node 0's decisions,
    over the heights holding the txs); `prepare_s`, node 0's own proposals from the height's
    start (the previous decision plus timeout_commit, when the proposer reaps its mempool)
    to receiving its proposal; `reap_to_proposal_s`, the same for every proposer (its own
    log's decision); `commit_to_reap_s`, the proposer's Commit of the height before answered
    to its reap (negative: the round started late, after the Commit);
    `executed_to_committed_s`, every node's FinalizeBlock answer to its Commit answer, the
    span CometBFT holds its mempool lock (flushing the mempool connection, then Commit)."""
    node0 = logs[0]
    proposed, deciding = node0.times["proposed"], node0.times["deciding"]
    # When each height's proposer reaped its mempool: its own decision of the height before.
    reaped: dict[int, float] = {}
    unlocked: dict[int, float] = {}  # when its Commit of the height before ended (mempool lock)
    for h, proposer in node0.proposers.items():
        if proposer in addresses and addresses.index(proposer) < len(logs):
            own = logs[addresses.index(proposer)].times
            if h - 1 in own["deciding"]:
                reaped[h] = own["deciding"][h - 1] + timeout_commit_s
            if h - 1 in own["committed"]:
                unlocked[h] = own["committed"][h - 1]
    rows: list[dict[str, Any]] = []
    for tx in txs:
        if tx.height not in proposed or tx.height not in deciding:
            continue
        skipped = sorted(h for h, t in proposed.items() if tx.checked < t and h < tx.height)
        first = skipped[0] if skipped else None
        reaps = sorted(h for h, t in reaped.items() if tx.checked < t and h < tx.height)
        rows.append(
            {
                "latency": tx.seen - tx.sent,
                "check": tx.checked - tx.sent,
                "mempool": proposed[tx.height] - tx.checked,
                "missed": len(skipped),
                "missed_by": None if first is None else proposed[first] - tx.checked,
                "own": first is not None and node0.proposers.get(first) == addresses[tx.node],
                "missed_reap": len(reaps),
                "missed_reap_by": reaped[reaps[0]] - tx.checked if reaps else None,
                # answered while that proposer's mempool was still locked by its Commit
                "missed_in_lock": bool(reaps) and tx.checked < unlocked.get(reaps[0], 0.0),
                "consensus": deciding[tx.height] - proposed[tx.height],
                "seen": tx.seen - deciding[tx.height],
            }
        )
    if not rows:
        return {}
    rows.sort(key=lambda r: r["latency"])

    def describe(part: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"txs": len(part)}
        for key in ("latency", "check", "mempool", "consensus", "seen"):
            out[key] = _p50_p95([r[key] for r in part])
        missed: dict[str, int] = {}
        for r in part:
            missed[str(r["missed"])] = missed.get(str(r["missed"]), 0) + 1
        out["missed"] = dict(sorted(missed.items()))
        ahead = [r["missed_by"] for r in part if r["missed_by"] is not None]
        if ahead:
            out["missed_by"] = _p50_p95(ahead)
            out["missed_own_proposer"] = sum(1 for r in part if r["own"])
        out["missed_reap"] = sum(1 for r in part if r["missed_reap"])
        before = [r["missed_reap_by"] for r in part if r["missed_reap_by"] is not None]
        if before:
            out["missed_reap_by"] = _p50_p95(before)
            out["missed_in_proposers_lock"] = sum(1 for r in part if r["missed_in_lock"])
        return out

    heights = sorted(proposed)
    gaps = [proposed[b] - proposed[a] for a, b in zip(heights, heights[1:], strict=False)]
    preparing = [
        proposed[h] - deciding[h - 1] - timeout_commit_s
        for h in heights
        if h - 1 in deciding and node0.proposers.get(h) == addresses[0]
    ]
    held = [tx.height for tx in txs if tx.height in deciding]
    span = [h for h in sorted(deciding) if held and min(held) - 1 <= h <= max(held)]
    holding = [
        log.times["committed"][h] - t
        for log in logs
        for h, t in log.times["executed"].items()
        if h in log.times["committed"]
    ]
    return {
        "all": describe(rows),
        "slowest_5pct": describe(rows[int(0.95 * len(rows)) :]),
        "proposal_interval_s": _p50_p95(gaps) if gaps else [],
        "block_interval_mean_s": (
            round((deciding[span[-1]] - deciding[span[0]]) / (len(span) - 1), 3)
            if len(span) > 1
            else None
        ),
        "prepare_s": _p50_p95(preparing) if preparing else [],
        # the proposer's slack: its reap less the end of its Commit of the height before
        "commit_to_reap_s": (
            _p50_p95([t - unlocked[h] for h, t in reaped.items() if h in unlocked])
            if unlocked
            else []
        ),
        "reap_to_proposal_s": (
            _p50_p95([proposed[h] - t for h, t in reaped.items() if h in proposed])
            if reaped
            else []
        ),
        "executed_to_committed_s": _p50_p95(holding) if holding else [],
    }


def _validator_address(directory: Path, org: str) -> str:
    path = testnet.cometbft_home(directory, org) / "config" / "priv_validator_key.json"
    try:
        return str(orjson.loads(path.read_bytes())["address"]).upper()
    except (OSError, KeyError, ValueError):
        return ""


def _trace(net: Network, txs: list[TxTrace]) -> dict[str, Any]:
    orgs = testnet.list_hospitals(net.dir)
    timeout_s = testnet.timeout_commit_of(testnet.cometbft_home(net.dir, orgs[0])) / 1000
    return latency_trace(
        txs,
        [NodeLog.read(net.dir, org) for org in orgs],
        [_validator_address(net.dir, org) for org in orgs],
        timeout_s,
    )


APPS = ("kvstore", "socket_kvstore", "pyfloor", "pyfloor_bare", "medledger", "medledger_replica")
PYTHON_APPS = ("medledger", "medledger_replica", "pyfloor", "pyfloor_bare")
RATIOS = [  # committed tx/s of the first over the second, when both ran
    ("medledger", "kvstore"),
    ("medledger", "socket_kvstore"),
    ("medledger", "pyfloor"),
    ("pyfloor", "kvstore"),
    ("pyfloor", "socket_kvstore"),
    ("pyfloor_bare", "pyfloor"),
    ("medledger", "medledger_replica"),
]


def _bench_app(
    app: str,
    block_time_ms: int,
    saturation_s: int,
    warmup_s: int,
    rate: int,
    latency_s: int,
    streams: int,
    max_rate: int,
    mempool_high: int,
    tx_bytes: int,
    profile_s: int,
    recheck: int,
    hold_ms: int,
    abci_unix: int = 0,
    probe: int = 0,
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"bench-{app}-"))
    result: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        if app in ("medledger", "medledger_replica"):
            replica = app == "medledger_replica"
            net = _medledger_network(
                directory, block_time_ms, streams, recheck, hold_ms, abci_unix, replica, probe
            )
        elif app in ("pyfloor", "pyfloor_bare"):
            bare = int(app == "pyfloor_bare")
            net = _pyfloor_network(
                directory, block_time_ms, streams, tx_bytes, recheck, abci_unix, bare, hold_ms
            )
        else:
            socket = app == "socket_kvstore"
            net = _kvstore_network(
                directory, block_time_ms, streams, tx_bytes, socket, recheck, abci_unix
            )
        time.sleep(2)  # a few empty blocks: every node connected and in consensus
        if latency_s > 0:  # first, on a fresh chain and an empty mempool
            result["latency"] = asyncio.run(_latency(net, rate, latency_s))
            time.sleep(2)
        if saturation_s > 0:
            result["saturation"] = asyncio.run(
                _saturate(net, saturation_s, warmup_s, max_rate, mempool_high, profile_s)
            )
        if app in PYTHON_APPS:
            result["abci_cpu_node0"] = _abci_stats(directory)
        if probe and app == "medledger":
            result["probe_node0"] = _abci_stats(directory, "PROBE ")
        return result
    finally:
        processes.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _abci_stats(directory: Path, marker: str = "ABCI ") -> list[str]:
    """Node 0's own per-minute account of its ABCI CPU (calls, total, µs per call by kind),
    as its app logged it during the run (AbciServer's `ABCI last 60s` line); with `marker`
    "PROBE ", bench/live_probe.py's lines (`probe`)."""
    org = testnet.list_hospitals(directory)[0]
    try:
        text = processes.log_path(directory, org, "app").read_text(errors="replace")
    except OSError:
        return []
    return [line.split(marker, 1)[1] for line in text.splitlines() if f"{marker}last" in line]


def medledger_tx_bytes() -> int:
    """The size of the txs the medledger network carries (a signed identity.register)."""
    from medledger.ledger.keys import SigningKey
    from medledger.ledger.tx import sign_tx

    key = SigningKey(hashlib.sha256(b"bench-size").digest())
    body = {"practitioner": "p1000", "key": os.urandom(32), "roles": ["nurse"]}
    return len(sign_tx(key, CHAIN, "identity.register", body, 1000))


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one app: throughput, CPU per tx by process kind, p95."""
    sat = [r["saturation"] for r in rounds if "saturation" in r]
    kinds = ("cometbft", "apps", "load_generator")
    out: dict[str, Any] = {
        "committed_tx_per_s": _median([s["committed_tx_per_s"] for s in sat]),
        "cpu_ms_per_tx": {
            kind: _median([s["cpu_ms_per_tx"][kind] for s in sat if s["cpu_ms_per_tx"]])
            for kind in ("cometbft", "apps", "load_generator")
        },
        "cpu_cores": {kind: _median([s["cpu_cores"][kind] for s in sat]) for kind in kinds},
        "idle_cpu_cores": {
            kind: _median([s["idle_cpu_cores"][kind] for s in sat]) for kind in kinds
        },
    }
    lat = [r["latency"] for r in rounds if "latency" in r]
    if lat:
        out["p95_commit_latency_s"] = _median([x["p95_s"] for x in lat])
        intervals = [x["block_interval_mean_s"] for x in lat if x.get("block_interval_mean_s")]
        out["block_interval_mean_s"] = _median(intervals)
        out["lost"] = sum(x["lost"] for x in lat)
    return out


def run(
    block_time_ms: int = 1000,
    saturation_s: int = 20,
    warmup_s: int = 4,
    rate: int = 500,
    latency_s: int = 20,
    kvstore: int = 1,
    socket_kvstore: int = 1,
    pyfloor: int = 1,
    pyfloor_bare: int = 0,
    medledger: int = 1,
    medledger_replica: int = 0,
    streams: int = 64,
    max_rate: int = 3000,
    mempool_high: int = MEMPOOL_HIGH,
    tx_bytes: int = 0,
    latency_all: int = 0,
    rounds: int = 1,
    profile_s: int = 0,
    recheck: int = -1,
    hold_ms: int = -1,
    abci_unix: int = 0,
    probe: int = 0,
) -> dict[str, Any]:
    """Run the comparison; returns figures as a JSON-able dict (see module docstring).

    `tx_bytes` pads kvstore txs (0: medledger's tx size); the latency phase runs for
    medledger only unless `latency_all`; `rounds` repeats the apps in turn (A B C A B C ...)
    and `summary` gives medians; `profile_s` > 0 profiles node 0 during each saturation;
    `recheck` 0/1 overrides mempool.recheck (-1: medledger's configuration, off); `hold_ms`
    sets medledger's (and the floor's) consensus-first hold (-1: its default, 1 s; 0: off);
    `abci_unix` 1 runs every socket app (socket kvstore, floor, medledger) over a unix socket
    instead of loopback TCP. `pyfloor_bare` 1 adds the floor behind its plain protobuf server
    instead of medledger's `AbciServer` (what our server saves); `medledger_replica` 1 adds
    medledger with each node's ledger replica alone, no API, exchange, agents or journal (what
    the node's other threads cost). `probe` 1 runs medledger's node 0 under bench/live_probe.py
    (its CheckTx's live CPU split into parts: `probe_node0`).
    """
    tx_bytes = tx_bytes or medledger_tx_bytes()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "cometbft": testnet.COMETBFT_VERSION,
        "validators": HOSPITALS,
        "block_time_ms": block_time_ms,
        "timeout_commit_ms": testnet.timeout_commit_ms(block_time_ms),
        "client_streams": streams,
        "mempool_high": mempool_high,
        "tx_bytes": tx_bytes,
        "recheck": "config" if recheck < 0 else bool(recheck),
        "hold_ms": "default" if hold_ms < 0 else hold_ms,
        "abci": "unix" if abci_unix else "config",
    }
    on = {
        "kvstore": kvstore,
        "socket_kvstore": socket_kvstore,
        "pyfloor": pyfloor,
        "pyfloor_bare": pyfloor_bare,
        "medledger": medledger,
        "medledger_replica": medledger_replica,
    }
    apps = [a for a in APPS if on[a]]
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in apps}
    for n in range(rounds):
        for app in apps:
            print(f"bench: {app} (round {n + 1} of {rounds}) ...", file=sys.stderr, flush=True)
            # pre-signed tx budget (signing takes the load generator's time before the window)
            budget = {"medledger": 1, "medledger_replica": 1, "pyfloor": 2, "pyfloor_bare": 2}
            limit = budget.get(app, 4) * max_rate
            results[app].append(
                _bench_app(
                    app,
                    block_time_ms,
                    saturation_s,
                    warmup_s,
                    rate,
                    latency_s if app == "medledger" or latency_all else 0,
                    streams,
                    limit,
                    mempool_high,
                    tx_bytes,
                    profile_s,
                    recheck,
                    hold_ms,
                    abci_unix,
                    probe,
                )
            )
    for app in apps:
        out[app] = results[app][0] if rounds == 1 else {"rounds": results[app]}
    out["summary"] = {app: _summary(results[app]) for app in apps}
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    tps = {app: s["committed_tx_per_s"] for app, s in out["summary"].items()}
    for app, other in RATIOS:
        if app in tps and tps.get(other):
            out[f"{app}_vs_{other}"] = round(tps[app] / tps[other], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (
        ("block_time_ms", 1000),
        ("saturation_s", 20),
        ("warmup_s", 4),
        ("rate", 500),
        ("latency_s", 20),
        ("kvstore", 1),
        ("socket_kvstore", 1),
        ("pyfloor", 1),
        ("pyfloor_bare", 0),
        ("medledger", 1),
        ("medledger_replica", 0),
        ("streams", 64),
        ("max_rate", 3000),
        ("mempool_high", MEMPOOL_HIGH),
        ("tx_bytes", 0),
        ("latency_all", 0),
        ("rounds", 1),
        ("profile_s", 0),
        ("recheck", -1),
        ("hold_ms", -1),
        ("abci_unix", 0),
        ("probe", 0),
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args()
    print(json.dumps(run(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
