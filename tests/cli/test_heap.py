"""A node process hides its start-up heap from the garbage collector (medledger.node.heap)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_settle_freezes_the_start_up_heap_and_spaces_out_collections() -> None:
    # In a child process: freezing would otherwise change the collector of the test run.
    code = (
        "import gc, json; from medledger.node import heap; heap.settle(); "
        "print(json.dumps([gc.get_freeze_count(), list(gc.get_threshold())]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    frozen, thresholds = json.loads(out)
    assert frozen > 1000  # the interpreter and medledger's imports, at least
    assert tuple(thresholds) == (10_000, 20, 100)
