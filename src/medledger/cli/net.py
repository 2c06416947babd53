"""`medledger net up|down|status DIR`: run a CometBFT consortium's processes on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, fail, user_errors

DirArg = Annotated[Path, typer.Argument(help="The consortium folder made by `medledger init`.")]


def _check_cometbft(directory: Path) -> None:
    meta = directory / "consortium.json"
    if not meta.exists():
        fail(f"{meta}: not found (run `medledger init {directory} --engine cometbft`)")
    engine = json.loads(meta.read_text()).get("engine")
    if engine != "cometbft":
        fail(
            f"{directory} uses the {engine} engine, which runs inside `medledger node run`; "
            "`net` manages CometBFT consortia (`medledger init --engine cometbft`)"
        )


def _check_genesis(directory: Path) -> None:
    """What a new replica's InitChain would refuse of the genesis, said here, before any
    process starts (node.core.ledger_genesis; each app process checks it again)."""
    from medledger.node.config import hospital_homes, load_config
    from medledger.node.core import ledger_genesis

    for home in hospital_homes(directory):
        ledger_genesis(load_config(home))


def register(app: typer.Typer) -> None:
    net = typer.Typer(
        help="Start, stop and inspect a CometBFT consortium's processes.", no_args_is_help=True
    )
    app.add_typer(net, name="net")

    @net.command("up")
    def up(
        directory: DirArg,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for each process.")] = 60.0,
        supervise: Annotated[
            bool,
            typer.Option(
                "--supervise/--no-supervise",
                help="Run each hospital under a supervisor that restarts what dies.",
            ),
        ] = True,
    ) -> None:
        """Start every hospital's app and CometBFT (what is not already running).

        Each hospital runs under a supervisor (logs/<org>.supervisor.log) that restarts its
        app or CometBFT when it dies, with backoff and at most 5 restarts a minute."""
        from medledger.consensus.cometbft import processes

        _check_cometbft(directory)
        with user_errors():
            _check_genesis(directory)
            try:
                orgs = processes.up(directory, timeout=timeout, supervise=supervise)
            except processes.ProcessError as exc:
                fail(str(exc))
        how = ", each under a supervisor" if supervise else ""
        console.print(f"{len(orgs)} hospitals up{how}; logs in {directory / 'logs'}")
        console.print(f"Next: medledger net status {directory}")

    @net.command("down")
    def down(
        directory: DirArg,
        timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 10.0,
    ) -> None:
        """Stop every hospital's processes (SIGTERM, then SIGKILL after the timeout)."""
        from medledger.consensus.cometbft import processes

        _check_cometbft(directory)
        with user_errors():
            stopped = processes.down(directory, timeout=timeout)
        console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")

    @net.command("status")
    def status(
        directory: DirArg,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Height, app hash, peers and validator role of each hospital's node."""
        from dataclasses import asdict

        from rich.table import Table

        from medledger.consensus.cometbft.status import network_status

        _check_cometbft(directory)
        with user_errors():
            nodes = network_status(directory)
        if as_json:
            print(json.dumps([asdict(n) for n in nodes], indent=2))
            return
        table = Table(title=f"CometBFT consortium {directory}")
        for column in ("hospital", "height", "app hash", "peers", "validator", "processes"):
            table.add_column(column)
        for n in nodes:
            procs = {
                (True, True): "up",
                (False, False): "down",
                (True, False): "app only",
                (False, True): "cometbft only",
            }[(n.app_running, n.cometbft_running)] + (", supervised" if n.supervised else "")
            if n.error:
                why = "not running" if not n.cometbft_running else n.error
                table.add_row(n.org, "-", f"[red]{why}[/]", "-", "-", procs)
                continue
            height = f"{n.height}{' (catching up)' if n.catching_up else ''}"
            validator = f"yes ({n.power})" if n.validator else "no"
            table.add_row(n.org, height, n.app_hash[:16], str(n.peers), validator, procs)
        console.print(table)
