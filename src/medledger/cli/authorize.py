"""`medledger authorize`: may this actor read this patient's record, and on what basis?

Asks the consortium's single `authorize` on this node's replica (query `authorize/check`).
Exit code 0 when allowed, 3 when denied (so scripts can branch), 1 on an error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from medledger.cli._common import (
    HomeOption,
    PatientOption,
    console,
    now_ms,
    pid_arg,
    user_errors,
    when_ms,
)
from medledger.contracts import queries

DENIED = 3


def _actor_args(actor: str, home_org: str, members: set[str]) -> dict[str, object]:
    """`<org>`, `<org>/<practitioner>`, a practitioner of this hospital, or a key in hex."""
    if len(actor) == 64 and all(c in "0123456789abcdef" for c in actor):
        return {"key": bytes.fromhex(actor)}
    if "/" in actor or actor in members:
        return {"actor": actor}
    return {"actor": f"{home_org}/{actor}"}


def register(app: typer.Typer) -> None:
    @app.command("authorize")
    def authorize(
        home: HomeOption,
        actor: Annotated[
            str,
            typer.Option(help="<org>, <org>/<practitioner>, one of your practitioners, or a key."),
        ],
        patient: PatientOption,
        purpose: Annotated[str, typer.Option(help="treatment, emergency or research.")],
        category: Annotated[str, typer.Option(help="The record's data category.")] = "labs",
        custodian: Annotated[str, typer.Option(help="Who holds it (default: this hospital).")] = "",
        resource_type: Annotated[str, typer.Option("--type", help="FHIR resource type.")] = "",
        rid: Annotated[str, typer.Option(help="The record's id (checked against the index).")] = "",
        study: Annotated[str, typer.Option(help="The study a research access is for.")] = "",
        at: Annotated[str, typer.Option(help="When (date, date-time or ms; default now).")] = "",
    ) -> None:
        """Print the decision and its basis (or why it is denied)."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            members = {m["org"] for m in queries.members(node.engine)}
            meta: dict[str, object] = {
                "custodian": custodian or node.config.org,
                "category": category,
            }
            if resource_type:
                meta["type"] = resource_type
            if rid:
                meta["rid"] = rid
            if study:
                meta["study"] = study
            args = {
                **_actor_args(actor, node.config.org, members),
                "pid": pid_arg(patient, home),
                "purpose": purpose,
                "meta": meta,
                "at_ms": when_ms(at, "--at") if at else now_ms(),
            }
            decision = queries.authorize_check(node.engine, args)
        if decision["allowed"]:
            console.print(f"[green]ALLOWED[/] basis {decision['basis']}", highlight=False)
            return
        console.print(f"[red]DENIED[/] {decision['reason']}", highlight=False)
        raise typer.Exit(DENIED)
