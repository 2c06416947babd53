"""Hospitals on separate hosts, simulated by Linux network namespaces joined by a bridge.

    ml-h1 .. ml-h5     one namespace per hospital, each with its own address 10.231.0.1N/24
    ml-br0             the bridge joining them (no address of its own)

Every process of hospital N (its node: replica, gateway, API; and its CometBFT) runs inside
`ml-hN` through `ip netns exec`, so it sees only its own loopback and its address on the
bridge: an address that silently assumed 127.0.0.1 for another hospital fails here. Nothing
is shared between the hospitals but the files the test hands them (as a person hands a genesis
hash and a join request).

`Netns.cleanup()` removes every namespace, bridge and process it made, and is also run first
to clear what a killed run left. Used by tests/netns/test_netns.py and by a person:

    sudo scripts/netns-consortium.sh up DIR   # four hospitals running, one per namespace
    sudo scripts/netns-consortium.sh down     # everything removed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "ml-h"
BRIDGE = "ml-br0"
SUBNET = "10.231.0"
HOSTS = 5
ORGS = ["chu-lyon", "aphp-paris", "chu-bordeaux", "chu-lille"]  # on ml-h1 .. ml-h4
NAMES = ["CHU de Lyon", "AP-HP Paris", "CHU de Bordeaux", "CHU de Lille"]
NEW, NEW_NAME = "chu-nantes", "CHU de Nantes"  # joins from ml-h5


def address(n: int) -> str:
    """Hospital n's address (n from 1)."""
    return f"{SUBNET}.{10 + n}"


def namespace(n: int) -> str:
    return f"{PREFIX}{n}"


def why_not() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = subprocess.run(
        ["ip", "netns", "add", f"{PREFIX}probe"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"`ip netns add` refused: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"{PREFIX}probe"], check=False)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


@dataclass
class Netns:
    """The namespaces, the bridge and the processes started in them."""

    hosts: int = HOSTS
    logs: Path = Path("/tmp/medledger-netns")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def create(self) -> Netns:
        self.cleanup()
        self.logs.mkdir(parents=True, exist_ok=True)
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("link", "set", BRIDGE, "up")
        for n in range(1, self.hosts + 1):
            ns, veth = namespace(n), f"{PREFIX}{n}-v"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", BRIDGE)
            _ip("link", "set", veth, "up")
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("addr", "add", f"{address(n)}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
        return self

    def run(self, n: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in hospital n's namespace, to completion (its output captured)."""
        return subprocess.run(
            ["ip", "netns", "exec", namespace(n), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, n: int, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """A long-running process in hospital n's namespace; its log in `logs/name.log`."""
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace(n), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if proc in self.procs:
            self.procs.remove(proc)

    def cleanup(self) -> None:
        """Stop what this run started, then whatever still runs in our namespaces (a killed
        run's leftovers: only processes inside `ml-h*`, which nothing else uses), and remove
        the namespaces and the bridge."""
        for proc in list(self.procs):
            self.stop(proc, timeout=5)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        ours = [
            line.split()[0]
            for line in listed.stdout.splitlines()
            if line.split() and line.split()[0].startswith(PREFIX)
        ]
        for ns in ours:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def wait(predicate: object, timeout: float, what: str, every: float = 0.5) -> None:
    """Poll `predicate()` until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Consortium:
    """The hospitals' homes, and how to act as each of them inside its namespace."""

    def __init__(self, net: Netns, directory: Path, new_home: Path | None = None) -> None:
        self.net = net
        self.directory = directory
        self.new_home = new_home or directory.parent / NEW  # the joiner's own machine
        self.n = {org: i + 1 for i, org in enumerate([*ORGS, NEW])}
        self.running: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.genesis_hash = ""

    @classmethod
    def create(cls, net: Netns, directory: Path, new_home: Path | None = None) -> Consortium:
        """Four founding hospitals on CometBFT, hospital i at address(i), founded as on four
        machines: each makes its keys in its own home from its own namespace (`hospital
        keygen`), the genesis is made from the four public join requests (`consortium
        genesis`), and each founder configures its home from that file (`join --genesis`)."""
        c = cls(net, directory, new_home)
        for org, name in zip(ORGS, NAMES, strict=True):
            host = address(c.n[org])
            c.medledger(
                org, "hospital", "keygen", "--home", str(c.home(org)), "--org", org,
                "--name", name, "--address", f"gateway={host}:7004",
                "--address", f"api={host}:7009", "--address", f"p2p={host}:26656",
            )  # fmt: skip
        requests = [arg for org in ORGS for arg in ("--request", str(c.request(org)))]
        said = c.medledger(
            ORGS[0], "consortium", "genesis", "--chain-id", "medledger-netns",
            "--block-time", "500ms", *requests, "--out", str(c.founding),
        )  # fmt: skip
        found = re.search(r"genesis hash ([0-9a-f]{64})", said)
        assert found, said
        c.genesis_hash = found[1]
        for org in ORGS:
            said = c.join_founder(org)
            assert f"genesis hash {c.genesis_hash} checked" in said
        return c

    @property
    def founding(self) -> Path:
        """The founding file every founder is handed (`consortium genesis --out`)."""
        return self.directory / "genesis.json"

    def request(self, org: str) -> Path:
        return self.home(org) / "join-request.json"

    def join_founder(self, org: str) -> str:
        """`medledger join --genesis` as founder `org`, in its namespace; its output."""
        return self.medledger(
            org, "join", "--home", str(self.home(org)), "--genesis", str(self.founding),
            "--genesis-hash", self.genesis_hash,
        )  # fmt: skip

    def start_founders(self) -> None:
        """Start the four founders; once the chain runs, the others fetch the pseudonym key
        the first founder made (sealed to their box key) by running `join --genesis` again."""
        for org in ORGS:
            self.start(org)
        wait(lambda: self.height(ORGS[0]) >= 1, 90, "the founders' first block")
        for org in ORGS[1:]:  # as an operator would: again until the first founder answers
            wait(
                lambda org=org: f"pseudonym key received from {ORGS[0]}" in self.join_founder(org),
                90,
                f"{org} to receive the pseudonym key from {ORGS[0]}",
                every=1,
            )

    def home(self, org: str) -> Path:
        return self.new_home if org == NEW else self.directory / "hospitals" / org

    def medledger(self, org: str, *args: str) -> str:
        """`medledger ARGS` as hospital `org`, in its namespace; its output."""
        result = self.net.run(self.n[org], sys.executable, "-m", "medledger.cli", *args)
        assert result.returncode == 0, f"medledger {args[0]}: {result.stderr}{result.stdout}"
        return result.stdout + result.stderr

    def act(self, who: str, action: str, **args: Any) -> dict[str, Any]:
        """`tests/netns/act.py ACTION` as hospital `who`, in its namespace."""
        argv = [f"--{k}={v}" for k, v in args.items()]
        cmd = [sys.executable, "-m", "tests.netns.act", action, "--home", str(self.home(who))]
        result = self.net.run(self.n[who], *cmd, *argv)
        assert result.returncode == 0, f"{who} {action}: {result.stderr[-2000:]}"
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    def start(self, org: str) -> None:
        """The node (replica, gateway, API), then its CometBFT once the replica serves ABCI."""
        from medledger.consensus.cometbft.testnet import cometbft_binary

        n, home = self.n[org], self.home(org)
        log = self.net.logs / f"{org}.node.log"
        log.unlink(missing_ok=True)
        node = self.net.spawn(
            n, f"{org}.node", sys.executable, "-m", "medledger.cli", "node", "run",
            "--home", str(home),
        )  # fmt: skip
        wait(lambda: log.exists() and "serving ABCI" in log.read_text(), 60, f"{org}'s replica")
        cmt = self.net.spawn(
            n, f"{org}.cometbft", cometbft_binary(), "start", "--home", str(home / "cometbft")
        )
        self.running[org] = [cmt, node]

    def stop(self, org: str) -> None:
        for proc in self.running.pop(org, []):
            self.net.stop(proc)

    def stop_all(self) -> None:
        for org in list(self.running):
            self.stop(org)

    def height(self, org: str) -> int:
        return int(self.act(org, "height")["height"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hospitals in network namespaces (root).")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("directory", type=Path, nargs="?", default=Path("/tmp/medledger-netns"))
    args = parser.parse_args(argv)
    reason = why_not()
    if reason is not None:
        print(f"cannot: {reason}", file=sys.stderr)
        return 1
    net = Netns(logs=args.directory / "logs")
    if args.command == "down":
        net.cleanup()
        print("namespaces, bridge and their processes removed")
        return 0
    net.create()
    try:
        c = Consortium.create(net, args.directory / "net")
        c.start_founders()
    except BaseException:
        net.cleanup()
        raise
    for org in ORGS:
        config = json.loads((c.home(org) / "config.json").read_text())
        print(f"{namespace(c.n[org])}  {org:<14} gateway https://{config['exchange']['listen']}")
    print(f"founding file {c.founding}, genesis hash {c.genesis_hash}")
    print(f"logs in {net.logs}; act as a hospital with `ip netns exec ml-hN medledger ...`")
    print("stop and remove everything: scripts/netns-consortium.sh down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
