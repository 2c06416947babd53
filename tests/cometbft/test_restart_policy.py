"""When the supervisor restarts a process that died: backoff, and a bound per minute."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from medledger.consensus.cometbft.supervisor import RestartPolicy


def test_the_backoff_doubles_while_a_process_keeps_dying_and_resets_after_a_stable_run() -> None:
    policy = RestartPolicy(initial_s=1.0, max_backoff_s=30.0, stable_s=60.0)
    delays = []
    for start in range(7):  # dies 2 s after each start
        policy.died(started_at=start * 10.0, now=start * 10.0 + 2)
        delays.append(policy.backoff())
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    policy.died(started_at=100.0, now=100.0 + 3600)  # ran an hour: a fresh failure
    assert policy.backoff() == 1


def test_past_the_bound_a_restart_waits_for_the_oldest_to_leave_the_minute() -> None:
    policy = RestartPolicy(max_per_minute=5)
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        assert policy.window_wait(t) == 0
        policy.record(t)
    assert policy.window_wait(10.0) == 50.0  # the restart at t=0 leaves the window at t=60
    assert policy.window_wait(60.0) == 0 and len(policy.restarts) == 4


def test_a_process_that_keeps_dying_hits_the_bound_and_the_log_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from medledger.consensus.cometbft import processes, supervisor

    attempts: list[float] = []

    def crashing_app(*args: object, **kwargs: object) -> None:
        attempts.append(time.monotonic())
        raise processes.ProcessError("chu-lyon app exited during start-up")

    monkeypatch.setattr(processes, "read_pid", lambda *a: None)  # nothing ever runs
    monkeypatch.setattr(processes, "stop_orphaned_cometbfts", lambda *a, **k: [])
    monkeypatch.setattr(processes, "start_apps", crashing_app)
    monkeypatch.setattr(supervisor, "POLL_S", 0.01)
    fast = RestartPolicy(initial_s=0.01, max_backoff_s=0.02, max_per_minute=3)
    stop = threading.Event()
    sup = supervisor.Supervisor(
        tmp_path, "chu-lyon", policy={"app": fast, "cometbft": RestartPolicy()}, stop=stop
    )
    thread = threading.Thread(target=sup.run)
    with caplog.at_level(logging.INFO, logger="medledger.supervisor"):
        thread.start()
        deadline = time.monotonic() + 30
        while "(the bound)" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert "chu-lyon app: 3 restarts in the last 60 s (the bound)" in caplog.text
    assert len(attempts) == 4  # the first start and 3 restarts, then it waits for the window
