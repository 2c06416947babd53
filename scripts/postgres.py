"""Run the tests' throw-away PostgreSQL server by hand, e.g. to try the postgres vault backend.

    .venv/bin/python scripts/postgres.py

Prints the DSN, serves until Ctrl-C (or SIGTERM), then stops the server and
deletes its data folder (build/pg-<random>/). Same code as the test fixture
(tests/postgres_server.py).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres_server import PostgresServer, PostgresUnavailable  # noqa: E402


def main() -> int:
    """Start, print the DSN, wait for a signal, stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(server.dsn(), flush=True)
        print(f"data in {server.data_dir}; Ctrl-C to stop and delete it", file=sys.stderr)
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
