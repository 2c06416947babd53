"""`medledger policy set|remove|param|show`: the consortium's Cedar policies and parameters.

Changes are governance proposals: the command proposes (and votes for) the change; it takes
effect when two thirds of the members approve (`medledger member vote N`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medledger.cli._common import HomeOption, console, send, user_errors
from medledger.contracts import queries
from medledger.contracts.governance import Propose


def _propose(home: Path, action: str, args: dict[str, object], note: str) -> None:
    from medledger.cli.governance import _report
    from medledger.node import Node

    with user_errors(), Node.open(home) as node:
        c = send(node, node.wallet, Propose(action, dict(args), note))
        _report(node, c)
        for e in c.result.events:
            if e.type.startswith("policy."):
                console.print(f"{e.type}: {', '.join(f'{k}={v}' for k, v in e.attrs)}")


def register(app: typer.Typer) -> None:
    policy = typer.Typer(
        help="Consortium access policies (Cedar) and parameters.", no_args_is_help=True
    )
    app.add_typer(policy, name="policy")

    @policy.command("set")
    def set_(
        home: HomeOption,
        policy_id: Annotated[str, typer.Option("--id", help="The policy document's id.")],
        file: Annotated[Path, typer.Option(help="Cedar policy text (see `policy show --schema`).")],
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose adding or replacing a policy document (checked before the vote)."""
        with user_errors():
            text = file.read_text()
        _propose(home, "set_policy", {"id": policy_id, "text": text}, note)

    @policy.command("remove")
    def remove(
        home: HomeOption,
        policy_id: Annotated[str, typer.Option("--id")],
        note: Annotated[str, typer.Option()] = "",
    ) -> None:
        """Propose removing a policy document."""
        _propose(home, "remove_policy", {"id": policy_id}, note)

    @policy.command("param")
    def param(
        home: HomeOption,
        name: Annotated[str, typer.Option(help="e.g. emergency_max_ms, emergency_threshold.")],
        value: Annotated[int, typer.Option()],
        note: Annotated[str, typer.Option()] = "",
    ) -> None:
        """Propose changing a care-contract parameter."""
        _propose(home, "set_policy_param", {"name": name, "value": value}, note)

    @policy.command("show")
    def show(
        home: HomeOption,
        schema: Annotated[bool, typer.Option("--schema", help="Print the Cedar schema.")] = False,
    ) -> None:
        """The policies in force and the parameters."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            docs = queries.policy_list(node.engine)
            params = queries.policy_params(node.engine)
            text = queries.policy_schema(node.engine) if schema else ""
        if schema:
            console.print(text, highlight=False)
            return
        for d in docs:
            console.print(f"[bold]policy {d['id']}[/] (sha256 {d['hash'].hex()[:16]})")
            console.print(d["text"].rstrip(), highlight=False, markup=False)
        if not docs:
            console.print("no policy: contracts alone decide")
        table = Table("parameter", "value")
        for name, value in sorted(params.items()):
            table.add_row(name, str(value))
        console.print(table)
