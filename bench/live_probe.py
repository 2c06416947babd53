"""Node 0 of `medledger bench cometbft --set probe=1`: the whole node, with CheckTx's live CPU
split into its parts (bench only; the node's own code is not changed).

Launched as `python bench/live_probe.py node run --home H`: it wraps, in this process only,
`decode_tx` and `verify_signature` as the application calls them, `Application.check_tx`,
the store's committed reads (`Store.get_raw`: those that reached SQLite) and the cyclic
collector (`gc.callbacks`), each timed with the calling thread's CPU clock; then runs the
node's CLI. Every `PROBE_S` seconds it logs one `PROBE` line into the app's log: per CheckTx
the µs of thread CPU of each part and of the whole call, the call's wall time, the collector's
runs inside CheckTx, the SQLite reads per CheckTx, and the serving thread's voluntary and
involuntary context switches per second. The clock reads themselves cost ≈ 0.3-1 µs each
(a system call): the parts' sum is a little above what they cost unprobed.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROBE_S = 10.0
log = logging.getLogger("medledger.probe")


class _Probe:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.in_check = 0  # the thread id inside CheckTx (0: none): other threads untimed
        self.gc_started = 0.0
        self.abci_tid = 0
        self.switches = (0, 0)
        self.since = time.monotonic()

    def add(self, part: str, cpu_s: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + cpu_s
        self.counts[part] = self.counts.get(part, 0) + 1

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.in_check != threading.get_ident():
                return fn(*args, **kwargs)
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(part, time.thread_time() - started)

        return wrapper

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if self.in_check != threading.get_ident():
            return
        if phase == "start":
            self.gc_started = time.thread_time()
        else:
            self.add(f"gc{info.get('generation', 0)}", time.thread_time() - self.gc_started)

    def _thread_switches(self) -> tuple[int, int]:
        if not self.abci_tid:
            return (0, 0)
        try:
            text = Path(f"/proc/self/task/{self.abci_tid}/status").read_text()
        except OSError:
            return (0, 0)
        values = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        return (
            int(values.get("voluntary_ctxt_switches", "0")),
            int(values.get("nonvoluntary_ctxt_switches", "0")),
        )

    def report(self) -> None:
        now = time.monotonic()
        checks = self.counts.get("check_tx", 0)
        switches = self._thread_switches()
        seconds = max(1e-9, now - self.since)
        voluntary = (switches[0] - self.switches[0]) / seconds
        involuntary = (switches[1] - self.switches[1]) / seconds
        if checks:
            order = sorted(self.parts, key=self.parts.__getitem__, reverse=True)
            parts = ", ".join(
                f"{p} {self.parts[p] / checks * 1e6:.1f}us ({self.counts[p] / checks:.3f}/tx)"
                for p in order
            )
            log.warning(
                "PROBE last %.0fs: %d CheckTx; per CheckTx: %s; abci thread switches/s "
                "voluntary %.0f involuntary %.0f",
                seconds,
                checks,
                parts,
                voluntary,
                involuntary,
            )
        self.parts.clear()
        self.counts.clear()
        self.switches = switches
        self.since = now


def install(report_every_s: float = PROBE_S) -> _Probe:
    """Wrap the parts; with `report_every_s` > 0, log a PROBE line that often."""
    from medledger.ledger import app as app_module
    from medledger.ledger import store as store_module

    probe = _Probe()
    app_module.decode_tx = probe.timed("decode", app_module.decode_tx)  # type: ignore[assignment]
    app_module.verify_signature = probe.timed(  # type: ignore[assignment]
        "ed25519", app_module.verify_signature
    )
    original_check = app_module.Application.check_tx

    def check_tx(self: Any, tx: bytes, recheck: bool = False) -> Any:
        if not probe.abci_tid:
            probe.abci_tid = threading.get_native_id()
        probe.in_check = threading.get_ident()
        wall = time.perf_counter()
        started = time.thread_time()
        try:
            return original_check(self, tx, recheck)
        finally:
            probe.add("check_tx", time.thread_time() - started)
            probe.add("wall", time.perf_counter() - wall)
            probe.in_check = 0

    app_module.Application.check_tx = check_tx  # type: ignore[method-assign]
    original_get = store_module.Store.get_raw

    def get_raw(self: Any, key: bytes) -> Any:
        if probe.in_check == threading.get_ident() and key not in self._cache:
            started = time.thread_time()
            try:
                return original_get(self, key)
            finally:
                probe.add("store_miss", time.thread_time() - started)
        return original_get(self, key)

    store_module.Store.get_raw = get_raw  # type: ignore[method-assign]
    gc.callbacks.append(probe.on_gc)

    def reporter() -> None:
        while True:
            time.sleep(report_every_s)
            probe.report()

    if report_every_s > 0:
        threading.Thread(target=reporter, name="probe", daemon=True).start()
    return probe


def main() -> None:
    install()
    from medledger.cli import main as cli_main

    sys.argv = ["medledger", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
