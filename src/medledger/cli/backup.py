"""`medledger backup status`: where this hospital's encrypted vault replicas stand."""

from __future__ import annotations

import datetime

import typer
from rich.table import Table

from medledger.cli._common import HomeOption, console, user_errors


def register(app: typer.Typer) -> None:
    backup = typer.Typer(
        help="The hospital's encrypted vault replicas at its peers.", no_args_is_help=True
    )
    app.add_typer(backup, name="backup")

    @backup.command("status")
    def status(home: HomeOption) -> None:
        """Per replica peer: changes not yet acknowledged, how old the oldest is, and the
        bytes it holds of this hospital's (the running node's replicator sends them)."""
        from medledger.ledger.store import StateView, Store
        from medledger.node import Node
        from medledger.node.config import load_config
        from medledger.node.core import LedgerBusy
        from medledger.node.replicas import backup_key_path, backup_status, replica_peers
        from medledger.vault import Vault

        with user_errors():
            config = load_config(home)
            try:
                with Node.open(home) as node:
                    peers = replica_peers(node.engine, config.org)
            except LedgerBusy:  # the solo node runs: read its committed state beside it
                store = Store(config.ledger_db)
                try:
                    peers = replica_peers(StateView(store), config.org)
                finally:
                    store.close()
            with Vault.open(config.vault_config()) as vault:
                lags = backup_status(vault, peers)
            has_key = backup_key_path(config.home).exists()
        table = Table(title=f"{config.org}: vault replicas")
        for column in ("peer", "changes behind", "seconds behind", "held", "last ack"):
            table.add_column(column)
        for lag in lags:
            last = (
                "never (full copy pending)"
                if lag.last_ack is None
                else datetime.datetime.fromtimestamp(lag.last_ack, datetime.UTC).isoformat(
                    timespec="seconds"
                )
            )
            table.add_row(
                lag.peer,
                str(lag.changes),
                f"{lag.seconds:.1f}",
                f"{lag.held_bytes / 1e6:.1f} MB",
                last,
            )
        console.print(table)
        if not peers:
            console.print("no replica peer: the consortium's backup_replicas is 0 or alone")
        if not has_key:
            console.print("[yellow]no keys/backup.key yet: the node makes it when it runs[/]")
