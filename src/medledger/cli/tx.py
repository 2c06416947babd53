"""`medledger tx status`: the fate of what this home's commands signed and did not see settle."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from medledger.cli._common import HomeOption, console, user_errors


def register(app: typer.Typer) -> None:
    tx_app = typer.Typer(
        help="Signed txs whose outcome a command did not see.", no_args_is_help=True
    )
    app.add_typer(tx_app, name="tx")

    @tx_app.command("status")
    def status(
        home: HomeOption,
        tx: Annotated[
            str, typer.Argument(help="A tx id (or its first hex digits); all when left out.")
        ] = "",
        forget: Annotated[
            bool,
            typer.Option(
                "--forget-settled",
                help="Drop from the outbox what committed, was refused or can no longer commit.",
            ),
        ] = False,
    ) -> None:
        """Where each signed tx of a "pending" answer stands: committed (block), refused (why),
        pending (may still commit: run the same command again to resend it) or dropped (it can
        never commit: run the same command again to act)."""
        from medledger.ledger.tx import tx_id
        from medledger.node import Node
        from medledger.node.outbox import Outbox

        prefix = tx.lower()
        with user_errors(), Node.open(home) as node:
            outbox = Outbox(node.config.home / "outbox")
            fates = [
                (entry, fate)
                for entry, fate in outbox.fates(node.engine)
                if not prefix or any(tx_id(t).hex().startswith(prefix) for t in entry.txs)
            ]
            if forget:
                removed = outbox.forget_settled(node.engine)
        if prefix and not fates:
            console.print(
                f"no tx {prefix} in the outbox of {home}: settled and forgotten,"
                " or never signed by this home"
            )
            raise typer.Exit(1)
        table = Table("tx", "act", "state", "block", "detail")
        for entry, fate in fates:
            table.add_row(
                fate.tx_id.hex()[:16],
                entry.kind,
                fate.state,
                str(fate.height or ""),
                fate.log,
            )
        console.print(f"{len(fates)} signed acts not seen settled")
        if fates:
            console.print(table)
        if forget:
            console.print(f"forgot {removed} settled entries")
