"""Start and stop each hospital's two processes: its app (ledger replica + ABCI) and CometBFT.

    DIR/run/<org>.app.pid  DIR/run/<org>.cometbft.pid    pid files
    DIR/logs/<org>.app.log DIR/logs/<org>.cometbft.log   logs (appended across restarts)

`up(..., supervise=True)` (what `medledger net up` does) starts instead one supervisor per
hospital (`supervisor.py`, `DIR/run/<org>.supervisor.pid`), which starts the pair and restarts
what dies; `down` stops the supervisors first.

The app starts first (CometBFT exits if it cannot reach its app), and is ready when its ABCI
port accepts connections; CometBFT is ready when its RPC answers (after its handshake and any
replay). Stopping goes the other way, SIGTERM then SIGKILL after a timeout, to the process
group, so nothing is left behind. A pid is only signalled if its command line still names this
hospital's home, so a stale pid file can never hit an unrelated process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from medledger.consensus.cometbft import testnet

AppCommand = Callable[[Path, str], list[str]]

_children: dict[int, subprocess.Popen[bytes]] = {}  # our own children, to reap them

ORPHAN_GRACE_S = 5.0  # seconds a CometBFT whose app is gone gets to exit after SIGTERM


class ProcessError(RuntimeError):
    """A process did not start or stop as expected; the message points at its log."""


@dataclass(frozen=True)
class ProcInfo:
    org: str
    role: str  # "app" or "cometbft"
    pid: int | None
    running: bool


# --------------------------------------------------------------------------- commands


def default_app_command(consortium_dir: Path, org: str) -> list[str]:
    """`medledger node run --home H`: the hospital's whole node (ledger, exchange, API)."""
    home = str(testnet.hospital_home(consortium_dir, org))
    return [sys.executable, "-m", "medledger.cli", "node", "run", "--home", home]


def supervisor_command(consortium_dir: Path, org: str, timeout: float) -> list[str]:
    home = str(testnet.hospital_home(consortium_dir, org))
    module = "medledger.consensus.cometbft.supervisor"
    return [sys.executable, "-m", module, home, "--timeout", str(timeout)]


def cometbft_command(consortium_dir: Path, org: str) -> list[str]:
    home = testnet.cometbft_home(consortium_dir, org)
    return [testnet.cometbft_binary(), "start", "--home", str(home)]


# --------------------------------------------------------------------------- pids


def _pid_path(consortium_dir: Path, org: str, role: str) -> Path:
    return consortium_dir / "run" / f"{org}.{role}.pid"


def log_path(consortium_dir: Path, org: str, role: str) -> Path:
    return consortium_dir / "logs" / f"{org}.{role}.log"


def _marker(consortium_dir: Path, org: str, role: str) -> str:
    if role == "cometbft":
        return str(testnet.cometbft_home(consortium_dir, org))
    return str(testnet.hospital_home(consortium_dir, org))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(consortium_dir: Path, org: str, role: str) -> int | None:
    """The pid of a running process of this hospital and role, else None (and no pid file)."""
    path = _pid_path(consortium_dir, org, role)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    marker = _marker(consortium_dir, org, role)
    if _alive(pid) and marker in _cmdline(pid):
        return pid
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def processes(consortium_dir: Path) -> list[ProcInfo]:
    out = []
    for org in testnet.list_hospitals(consortium_dir):
        for role in ("app", "cometbft"):
            pid = read_pid(consortium_dir, org, role)
            out.append(ProcInfo(org, role, pid, pid is not None))
    return out


# --------------------------------------------------------------------------- start


def _spawn(
    consortium_dir: Path, org: str, role: str, argv: list[str], env: dict[str, str] | None
) -> int:
    (consortium_dir / "run").mkdir(parents=True, exist_ok=True)
    logfile = log_path(consortium_dir, org, role)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    with open(logfile, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(consortium_dir),
            env=full_env,
            start_new_session=True,  # its own process group: stopped as a whole, and immune
        )  # to the Ctrl-C of the terminal that ran `net up`
    _children[proc.pid] = proc
    pid_path = _pid_path(consortium_dir, org, role)
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    os.replace(tmp, pid_path)
    return proc.pid


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def accepts_connections(address: str) -> bool:
    """True when something accepts connections at `tcp://HOST:PORT` or `unix://PATH`."""
    try:
        if address.startswith("unix://"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(address[len("unix://") :])
            return True
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _rpc_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/status", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(
    consortium_dir: Path, org: str, role: str, pid: int, ready: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ProcessError(
                f"{org} {role} exited during start-up; end of "
                f"{log_path(consortium_dir, org, role)}:\n"
                f"{_tail(log_path(consortium_dir, org, role))}"
            )
        if ready():
            return
        time.sleep(0.1)
    raise ProcessError(
        f"{org} {role} not ready after {timeout:.0f}s; see {log_path(consortium_dir, org, role)}"
    )


def start_apps(
    consortium_dir: Path,
    orgs: list[str],
    app_command: AppCommand | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Start (if not running) the app processes; return when each serves ABCI."""
    command = app_command or default_app_command
    started: dict[str, int] = {}
    for org in orgs:
        if read_pid(consortium_dir, org, "app") is None:
            started[org] = _spawn(consortium_dir, org, "app", command(consortium_dir, org), env)
    for org, pid in started.items():
        abci = testnet.node_addresses(testnet.cometbft_home(consortium_dir, org), org).abci
        ready = functools.partial(accepts_connections, abci)
        _wait(consortium_dir, org, "app", pid, ready, timeout)


def cometbft_env(
    environ: Mapping[str, str] | None = None, cpus: int | None = None
) -> dict[str, str]:
    """What a CometBFT process gets added to its environment: `GOMAXPROCS=2` on a machine of
    one CPU, unless the operator set one. With a single P the socket ABCI client's 20 ns
    flush timer starves the goroutine it waits for, and CheckTx costs it 8-70 times the
    CPU (docs/deploy.md, which also covers one-CPU cgroup limits)."""
    environ = os.environ if environ is None else environ
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return {} if "GOMAXPROCS" in environ or cpus >= 2 else {"GOMAXPROCS": "2"}


def start_cometbfts(
    consortium_dir: Path,
    orgs: list[str],
    extra_args: list[str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Start (if not running) the CometBFT processes; return when each RPC answers."""
    started: dict[str, int] = {}
    for org in orgs:
        if read_pid(consortium_dir, org, "cometbft") is None:
            argv = cometbft_command(consortium_dir, org) + list(extra_args or [])
            started[org] = _spawn(consortium_dir, org, "cometbft", argv, cometbft_env())
    for org, pid in started.items():
        url = testnet.node_addresses(testnet.cometbft_home(consortium_dir, org), org).rpc_url
        _wait(consortium_dir, org, "cometbft", pid, functools.partial(_rpc_ready, url), timeout)


def start_supervisors(
    consortium_dir: Path,
    orgs: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Start (if not running) each hospital's supervisor; return when its CometBFT answers.

    A supervisor keeps retrying what fails to start (see its log); on a timeout here it is
    left running and the error says where to look (`down` stops it)."""
    consortium_dir = consortium_dir.resolve()
    started: dict[str, int] = {}
    for org in orgs:
        if read_pid(consortium_dir, org, "supervisor") is None:
            argv = supervisor_command(consortium_dir, org, timeout)
            started[org] = _spawn(consortium_dir, org, "supervisor", argv, env)
    deadline = time.monotonic() + 2 * timeout  # the app's start, then CometBFT's
    for org, pid in started.items():
        url = testnet.node_addresses(testnet.cometbft_home(consortium_dir, org), org).rpc_url

        def ready(org: str = org, url: str = url) -> bool:
            return read_pid(consortium_dir, org, "cometbft") is not None and _rpc_ready(url)

        try:
            _wait(consortium_dir, org, "supervisor", pid, ready, deadline - time.monotonic())
        except ProcessError as exc:
            raise ProcessError(
                f"{exc}\nend of {log_path(consortium_dir, org, 'app')}:\n"
                f"{_tail(log_path(consortium_dir, org, 'app'))}"
            ) from None


def start_hospitals(
    consortium_dir: Path,
    orgs: list[str] | None = None,
    app_command: AppCommand | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Start what is not running of each hospital's pair: all apps first, then all CometBFTs."""
    consortium_dir = consortium_dir.resolve()
    orgs = orgs if orgs is not None else testnet.list_hospitals(consortium_dir)
    stop_orphaned_cometbfts(consortium_dir, orgs)
    start_apps(consortium_dir, orgs, app_command, env, timeout)
    start_cometbfts(consortium_dir, orgs, timeout=timeout)


def up(
    consortium_dir: Path,
    app_command: AppCommand | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    *,
    supervise: bool = False,
) -> list[str]:
    """Start every hospital of the consortium; return their orgs. `supervise`: through one
    supervisor per hospital, which restarts what dies (the default app command only)."""
    orgs = testnet.list_hospitals(consortium_dir.resolve())
    if not orgs:
        raise ProcessError(f"{consortium_dir}: no CometBFT homes (run `medledger init` first)")
    if supervise:
        if app_command is not None:
            raise ValueError("a supervisor runs the default app command only")
        stop_orphaned_cometbfts(consortium_dir.resolve(), orgs)
        start_supervisors(consortium_dir, orgs, env, timeout)
    else:
        start_hospitals(consortium_dir, orgs, app_command, env, timeout)
    return orgs


# --------------------------------------------------------------------------- stop


def _signal_group(pid: int, sig: int) -> None:
    if pid <= 1:
        raise ValueError(f"refusing to signal pid {pid}")
    try:
        os.killpg(pid, sig)  # the process is its group's leader (start_new_session)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_process(
    consortium_dir: Path, org: str, role: str, timeout: float = 10.0, sig: int = signal.SIGTERM
) -> bool:
    """Stop one process: `sig`, then SIGKILL after `timeout`. True if one was running."""
    pid = read_pid(consortium_dir, org, role)
    if pid is None:
        return False
    _signal_group(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    with contextlib.suppress(OSError):
        _pid_path(consortium_dir, org, role).unlink()
    return True


def stop_orphaned_cometbfts(
    consortium_dir: Path, orgs: list[str], grace: float = ORPHAN_GRACE_S
) -> list[str]:
    """Stop each CometBFT whose app is gone; return their orgs.

    Such a CometBFT usually exits by itself. When its app died in the middle of a request,
    v0.38 can instead hang in its own shutdown: a request its socket client queues after it
    stopped is never answered, so the consensus routine, and Node.Stop with it, wait forever
    (it then ignores further SIGTERMs). It serves nothing in that state, its stores are
    crash-safe, and it would not survive its app's restart handshake anyway: SIGTERM, then
    SIGKILL after `grace` seconds.
    """
    stopped = []
    for org in orgs:
        if read_pid(consortium_dir, org, "app") is None and stop_process(
            consortium_dir, org, "cometbft", timeout=grace
        ):
            stopped.append(org)
    return stopped


def kill_app(consortium_dir: Path, org: str) -> bool:
    """SIGKILL a hospital's app process (crash tests); `start_hospitals` restarts the pair."""
    return stop_process(consortium_dir.resolve(), org, "app", timeout=0, sig=signal.SIGKILL)


def stop_hospital(consortium_dir: Path, org: str, timeout: float = 10.0) -> None:
    """CometBFT first (so it stops calling its app), then the app."""
    consortium_dir = consortium_dir.resolve()
    stop_process(consortium_dir, org, "cometbft", timeout)
    stop_process(consortium_dir, org, "app", timeout)


def down(consortium_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop every hospital's processes; return the ones that were running."""
    consortium_dir = consortium_dir.resolve()
    stopped = []
    orgs = testnet.list_hospitals(consortium_dir)
    for org in orgs:  # first, so that nothing is restarted while it is stopped
        stop_process(consortium_dir, org, "supervisor", timeout)
    # SIGTERM every CometBFT at once so they stop together, rather than one by one while the
    # others time out on their missing peers.
    for org in orgs:
        pid = read_pid(consortium_dir, org, "cometbft")
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
    for org in orgs:
        was = stop_process(consortium_dir, org, "cometbft", timeout)
        was = stop_process(consortium_dir, org, "app", timeout) or was
        if was:
            stopped.append(org)
    return stopped
