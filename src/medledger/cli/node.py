"""`medledger node run --home H` and `medledger sandbox run DIR`: run hospitals' nodes.

A node is one hospital's long-running process: its ledger engine, its vault, its exchange
gateway (mutual TLS), its sync agent and its event stream. On CometBFT the node owns its
ledger replica and serves ABCI to its own CometBFT process (started by `medledger net up`,
which runs this command for each hospital); on the solo engine it produces the blocks.

The solo engine's ledger is one file shared by the sandbox's hospitals and only one process
writes it: `medledger sandbox run DIR` runs every hospital in that process; or each hospital
runs its own `medledger node run`, the first one producing the blocks and serving the ledger
to the others (consensus/solo_shared.py). Both block until Ctrl-C or SIGTERM, then stop in
order (gateway and agent, then the engine, then the ledger and the vault).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medledger.cli._common import HomeOption, console, fail, user_errors
from medledger.node import heap

if TYPE_CHECKING:
    from medledger.cli._runtime import HospitalRuntime
    from medledger.node import Node
    from medledger.vault import Vault

log = logging.getLogger("medledger.node")

NoSync = Annotated[
    bool, typer.Option("--no-sync", help="Serve the gateway but do not follow blocks.")
]


def _stop_event() -> threading.Event:
    """Set on SIGTERM or SIGINT, so that the process stops cleanly either way."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
    return stop


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per request between gateways would drown the node's own log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _start(node: Node, vault: Vault, sync: bool, **options: Any) -> HospitalRuntime:
    from medledger.cli._runtime import HospitalRuntime

    return HospitalRuntime(node, vault, **options).start(sync=sync)


def run_cometbft_node(home: Path, sync: bool, stop: threading.Event) -> None:
    """The hospital's replica serving ABCI first (CometBFT waits for it), then the exchange.

    The ledger comes first: if the gateway cannot start (its port is taken, its certificates
    are missing), the replica keeps serving CometBFT and the failure is logged, since a
    validator that stops voting would weaken the whole network.
    """
    from medledger.node import Node
    from medledger.node.config import load_config
    from medledger.node.run_app import engine_for_home, open_application
    from medledger.vault import Vault

    config = load_config(home)
    app = open_application(home)
    engine = engine_for_home(home, app).start()
    log.info("%s: replica serving ABCI on %s", config.org, engine.abci_address)
    runtime: HospitalRuntime | None = None
    vault: Vault | None = None
    try:
        node = Node(config, app, engine)
        try:
            vault = Vault.open(config.vault_config())
            runtime = _start(node, vault, sync)
            log.info(
                "%s: gateway on %s, API on %s", config.org, runtime.exchange.url, runtime.api_url
            )
        except Exception:
            log.exception("%s: the exchange did not start; the replica keeps running", config.org)
        heap.settle()
        stop.wait()
    finally:
        if runtime is not None:
            runtime.stop()
        engine.close()
        engine.close_app()
        if vault is not None:
            vault.close()
        log.info("%s: stopped", config.org)


def run_solo_node(home: Path, sync: bool, stop: threading.Event) -> None:
    from medledger.node import Node
    from medledger.vault import Vault

    with Node.open(home, serve=True) as node, Vault.open(node.config.vault_config()) as vault:
        runtime = _start(node, vault, sync)
        role = (
            "producing the solo ledger's blocks"
            if node.app is not None
            else "submitting through the process that produces the blocks"
        )
        console.print(
            f"{node.config.org}: gateway {runtime.exchange.url}, API {runtime.api_url}, "
            f"{role}; Ctrl-C to stop"
        )
        heap.settle()
        try:
            stop.wait()
        finally:
            runtime.stop()


def run_sandbox(directory: Path, sync: bool, stop: threading.Event) -> None:
    """Every hospital of a solo consortium in this process, sharing one engine and ledger."""
    from medledger.node.config import ConfigError, hospital_homes, load_config

    homes = hospital_homes(directory)
    if not homes:
        raise ConfigError(f"{directory}: no hospitals")
    first = load_config(homes[0])
    if first.engine != "solo":
        raise ConfigError(
            f"{directory} uses the {first.engine} engine: start it with `medledger net up`"
        )
    from medledger.cli._runtime import Sandbox
    from medledger.cli.demo import demo_token
    from medledger.contracts import queries

    with Sandbox(homes, interval=0.2, sync=sync) as sandbox:
        for r in sandbox.runtimes:
            console.print(f"  {r.org:<16} API {r.api_url}  gateway {r.exchange.url}")
            home = r.node.config.home
            for p in queries.practitioners(r.node.engine, r.org):
                if p["active"] and set(p["roles"]) & {"physician", "nurse", "emergency"}:
                    token = demo_token(home, r.org, f"Practitioner/{p['id']}", "user/*.cruds")
                    console.print(f"    sign-in token of {p['id']} (12 h): {token}", soft_wrap=True)
        console.print(
            f"{len(sandbox.runtimes)} hospitals running on the solo engine; Ctrl-C to stop. "
            "While it runs it holds the solo ledger and produces its blocks: other `medledger` "
            "commands (and a `medledger node run` of a hospital it does not run) submit "
            "through it; `medledger token` makes more sign-in tokens."
        )
        heap.settle()
        stop.wait()


def register(app: typer.Typer) -> None:
    node_app = typer.Typer(help="Run one hospital's node.", no_args_is_help=True)
    app.add_typer(node_app, name="node")

    @node_app.command("run")
    def run(
        home: HomeOption,
        no_sync: NoSync = False,
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    ) -> None:
        """Run the hospital's node: ledger engine, vault, mTLS gateway, sync agent, events."""
        from medledger.node.config import load_config

        _logging(log_level)
        stop = _stop_event()
        with user_errors():
            config = load_config(home)
            if config.engine == "cometbft":
                run_cometbft_node(home.resolve(), not no_sync, stop)
            elif config.engine == "solo":
                from medledger.node import LedgerBusy

                try:
                    run_solo_node(home, not no_sync, stop)
                except LedgerBusy:
                    fail(
                        f"{config.ledger_db}: the solo ledger is held by a one-shot command "
                        "that serves no other process; run this again once it ends"
                    )
            else:
                fail(f"{home / 'config.json'}: unknown engine {config.engine!r}")

    sandbox_app = typer.Typer(help="A solo sandbox network on this machine.", no_args_is_help=True)
    app.add_typer(sandbox_app, name="sandbox")

    @sandbox_app.command("run")
    def sandbox_run(
        directory: Annotated[Path, typer.Argument(help="The consortium folder (solo engine).")],
        no_sync: NoSync = False,
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "WARNING",
    ) -> None:
        """Run every hospital of a solo consortium in one process until Ctrl-C."""
        _logging(log_level)
        stop = _stop_event()
        with user_errors():
            run_sandbox(directory, not no_sync, stop)
