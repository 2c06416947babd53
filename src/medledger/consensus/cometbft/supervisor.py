"""Keep one hospital's processes running: restart what dies, with backoff and a bound.

    python -m medledger.consensus.cometbft.supervisor DIR/hospitals/<org>

`medledger net up` starts one per hospital (pid file `DIR/run/<org>.supervisor.pid`, log
`DIR/logs/<org>.supervisor.log`). It starts the hospital's app (`medledger node run`: its
replica serving ABCI, its API, gateway and sync agent) and then its CometBFT, and looks at
both every `POLL_S`:

- the app gone: its CometBFT is stopped too (it would not survive the new app's handshake,
  and may hang in its own shutdown: `processes.stop_orphaned_cometbfts`), then both start
  again, app first;
- CometBFT gone: it starts again; the app keeps running and answers 503 meanwhile
  (`node.health`), then serves again by itself.

Each restart waits its backoff (`RestartPolicy`: 1 s, doubling up to 30 s while the process
keeps dying within a minute of its start) and at most `max_per_minute` restarts of a process
happen in any 60 s: past that bound the supervisor logs it and waits for the window. A
SIGTERM ends the supervisor alone (its processes run in their own sessions);
`medledger net down` stops the supervisors first, then the processes. On a hospital's own
machine the systemd units in `deploy/` play this part instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from medledger.consensus.cometbft import processes

log = logging.getLogger("medledger.supervisor")

POLL_S = 0.5
WINDOW_S = 60.0


@dataclass
class RestartPolicy:
    """When the next restart of one process may happen."""

    initial_s: float = 1.0
    max_backoff_s: float = 30.0
    max_per_minute: int = 5
    stable_s: float = 60.0  # a process that ran this long resets the backoff
    restarts: deque[float] = field(default_factory=deque)
    failures: int = 0  # consecutive deaths within `stable_s` of a start

    def died(self, started_at: float, now: float) -> None:
        self.failures = 1 if now - started_at >= self.stable_s else self.failures + 1

    def backoff(self) -> float:
        return float(min(self.max_backoff_s, self.initial_s * 2 ** max(0, self.failures - 1)))

    def window_wait(self, now: float) -> float:
        """Seconds until a restart is within the bound (0: now)."""
        while self.restarts and now - self.restarts[0] >= WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) < self.max_per_minute:
            return 0.0
        return WINDOW_S - (now - self.restarts[0])

    def record(self, now: float) -> None:
        self.restarts.append(now)


class Supervisor:
    """Starts one hospital's app and CometBFT and restarts them when they die."""

    def __init__(
        self,
        consortium_dir: Path,
        org: str,
        *,
        timeout: float = 60.0,
        policy: dict[str, RestartPolicy] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.dir = consortium_dir
        self.org = org
        self.timeout = timeout
        self.policy = policy or {"app": RestartPolicy(), "cometbft": RestartPolicy()}
        self.stop = stop or threading.Event()
        self.started_at: dict[str, float] = {}

    def run(self) -> None:
        log.info("%s: supervising app and CometBFT", self.org)
        while not self.stop.is_set():
            app = processes.read_pid(self.dir, self.org, "app")
            cometbft = processes.read_pid(self.dir, self.org, "cometbft")
            if app is None:
                if processes.stop_orphaned_cometbfts(self.dir, [self.org]):
                    log.warning("%s: stopped CometBFT, whose app is gone", self.org)
                self.started_at.pop("cometbft", None)  # it starts with its app, no backoff
                self._start("app") and self._start("cometbft")
            elif cometbft is None:
                self._start("cometbft")
            self.stop.wait(POLL_S)
        log.info("%s: supervisor stopped", self.org)

    def _start(self, role: str) -> bool:
        """(Re)start one process once its backoff and the bound allow; True when it runs."""
        policy = self.policy[role]
        if role in self.started_at:  # not the first start: a restart
            now = time.monotonic()
            policy.died(self.started_at.pop(role), now)
            wait = policy.window_wait(now)
            if wait > 0:
                log.error(
                    "%s %s: %d restarts in the last %.0f s (the bound): next attempt in %.0f s",
                    self.org, role, len(policy.restarts), WINDOW_S, wait,
                )  # fmt: skip
            wait = max(wait, policy.backoff())
            log.warning("%s %s is gone: restarting in %.1f s", self.org, role, wait)
            if self.stop.wait(wait):
                return False
            policy.record(time.monotonic())
        self.started_at[role] = time.monotonic()
        try:
            if role == "app":
                processes.start_apps(self.dir, [self.org], timeout=self.timeout)
            else:
                processes.start_cometbfts(self.dir, [self.org], timeout=self.timeout)
        except processes.ProcessError as exc:
            log.error("%s", exc)
            return False
        log.info(
            "%s %s running (pid %s)", self.org, role, processes.read_pid(self.dir, self.org, role)
        )
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path, help="the hospital's home, DIR/hospitals/<org>")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for each start")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per readiness poll
    home = args.home.resolve()
    Supervisor(home.parent.parent, home.name, timeout=args.timeout).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
