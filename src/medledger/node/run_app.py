"""A hospital's app process on CometBFT: open its ledger replica, serve ABCI, block.

    python -m medledger.node.run_app --home DIR/hospitals/<org> [--app mod:fn]

`medledger node run --home H` does the same plus the API; both use `serve_forever`. `--app`
names a factory `fn(home) -> app` (tests use a tiny fake application); by default the
hospital's `Application` is opened from its config.json (ledger db, consortium genesis).
It lives in `node` because it reads the hospital's configuration and chooses the contracts;
`consensus` below it only serves whatever app it is handed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medledger.consensus.cometbft.engine import CometEngine
from medledger.consensus.cometbft.testnet import node_addresses
from medledger.node import heap

log = logging.getLogger("medledger.app")


def open_application(home: Path) -> Any:
    """The hospital's ledger replica, as its config.json describes it (a new one's genesis
    checked first, `core.ledger_genesis`)."""
    from medledger.contracts import default_registry
    from medledger.ledger.app import Application
    from medledger.node.config import load_config
    from medledger.node.core import ledger_genesis

    config = load_config(home)
    return Application.open(config.ledger_db, ledger_genesis(config), default_registry())


def engine_for_home(home: Path, app: Any) -> CometEngine:
    """A CometEngine wired to the CometBFT home under this hospital home."""
    addr = node_addresses(home / "cometbft")
    return CometEngine(app, addr.abci, addr.rpc_url)


def serve_forever(home: Path, app: Any, stop: threading.Event | None = None) -> None:
    """Serve ABCI for `app` until SIGTERM/SIGINT (or `stop` is set), then close cleanly."""
    stop = stop or threading.Event()
    engine = engine_for_home(home, app).start()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log.info("app for %s ready (ABCI %s)", home, engine.abci_address)
    try:
        stop.wait()
    finally:
        engine.close()
        close = getattr(app, "close", None)
        if close is not None:
            with engine.lock:
                close()
        log.info("app for %s stopped", home)


def _factory(spec: str) -> Callable[[Path], Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"--app {spec!r}: expected module:function")
    fn: Callable[[Path], Any] = getattr(importlib.import_module(module), name)
    return fn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the hospital's home")
    parser.add_argument("--app", default="", help="module:function making the app (tests)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    home = args.home.resolve()
    app = _factory(args.app)(home) if args.app else open_application(home)
    heap.settle()
    serve_forever(home, app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
