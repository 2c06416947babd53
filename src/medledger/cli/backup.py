"""`medledger backup status`: where this hospital's encrypted vault replicas stand."""

from __future__ import annotations

import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medledger.cli._common import HomeOption, console, fail, user_errors


def register(app: typer.Typer) -> None:
    backup = typer.Typer(
        help="The hospital's encrypted vault replicas at its peers.", no_args_is_help=True
    )
    app.add_typer(backup, name="backup")

    @backup.command("status")
    def status(home: HomeOption) -> None:
        """Per replica peer: changes not yet acknowledged, how old the oldest is, and the
        bytes it holds of this hospital's (the running node's replicator sends them)."""
        from medledger.node.reader import open_node
        from medledger.node.replicas import backup_key_path, backup_status, replica_peers
        from medledger.vault import Vault

        with user_errors(), open_node(home) as node:
            config = node.config
            peers = replica_peers(node.engine, config.org)
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

    @backup.command("restore")
    def restore(
        home: HomeOption,
        complete: Annotated[
            bool,
            typer.Option(
                "--complete", help="Put the vault in place only if nothing at all is missing."
            ),
        ] = False,
    ) -> None:
        """Rebuild this hospital's vault from its replica peers, when the vault is lost but
        the keys (keys/vault.kek, keys/backup.key) are not.

        Every copy is checked (hash, AES-GCM tag); a bad one is taken from another peer and
        the peer that served it is named; every restored record is checked against its
        commitment on the chain. The vault is written to a new file and moved into place
        only once done; an existing vault is never overwritten. After a full loss of the
        home (keys too), `medledger recover run` rebuilds the keys first."""
        from medledger.exchange.client import ExchangeClient
        from medledger.host.secretfile import read_hex_secret
        from medledger.node.reader import open_node
        from medledger.node.replicas import (
            backup_key_path,
            describe_gaps,
            replica_peers,
            restore_vault,
        )
        from medledger.vault.keys import load_kek

        with user_errors(), open_node(home) as node:
            config = node.config
            path = backup_key_path(config.home)
            if not path.exists():
                fail(
                    f"{path}: missing; the replicas cannot be opened without the backup key "
                    "(after a full loss, `medledger recover run` rebuilds it)"
                )
            vault_config = config.vault_config()
            kek = load_kek(vault_config.kek_path, vault_config.kek_env)
            client = ExchangeClient(node)
            try:
                peers = replica_peers(node.engine, config.org)
                report = restore_vault(
                    config.home,
                    read_hex_secret(path, what="backup key"),
                    kek,
                    client,
                    peers,
                    require_complete=complete,
                    progress=lambda line: console.print(escape(line)),
                )
            finally:
                client.close()
        console.print(
            f"restored {report.items} items, {report.records} record versions "
            f"({report.checked} checked against the chain) into {report.path} in "
            f"{report.seconds:.1f} s ({report.rate:.0f} records/s)"
        )
        if report.erased_left_out:
            console.print(f"{report.erased_left_out} items of erased patients left out")
        if report.pending:
            console.print(f"provisional (not on the chain yet): {', '.join(report.pending)}")
        gaps = describe_gaps(report)
        if gaps != "complete":
            fail(gaps)
