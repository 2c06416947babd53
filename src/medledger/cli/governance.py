"""`medledger member propose|vote|list`: consortium membership, decided at two thirds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from medledger.cli._common import HomeOption, console, hex32, send, user_errors
from medledger.contracts import queries
from medledger.contracts.governance import Propose, Vote

if TYPE_CHECKING:
    from medledger.consensus.engine import Committed
    from medledger.node import Node


def _report(node: Node, committed: Committed) -> None:
    for event in committed.result.events:
        if event.type == "proposal.created":
            console.print(f"proposal {event.get('id')} created ({event.get('action')})")
        elif event.type == "proposal.voted":
            verdict = "for" if event.get("approve") == "1" else "against"
            console.print(f"{event.get('org')} voted {verdict} proposal {event.get('id')}")
        elif event.type == "proposal.executed":
            console.print(f"[green]proposal {event.get('id')} reached 2/3 and was executed[/]")
        elif event.type == "contract.activated":
            console.print(f"contract {event.get('name')} version {event.get('version')} active")
        elif event.type == "proposal.rejected":
            console.print(f"[red]proposal {event.get('id')} was rejected[/]")
        elif event.type == "member.admitted":
            console.print(f"{event.get('org')} is now a member")
        elif event.type == "member.removed":
            console.print(f"{event.get('org')} is no longer a member")


def register(app: typer.Typer) -> None:
    member = typer.Typer(help="Consortium membership: propose, vote, list.", no_args_is_help=True)
    app.add_typer(member, name="member")
    propose = typer.Typer(help="Propose a change to the consortium.", no_args_is_help=True)
    member.add_typer(propose, name="propose")

    @propose.command("admit")
    def admit(
        home: HomeOption,
        org: Annotated[str, typer.Option(help="The new hospital's id.")],
        name: Annotated[str, typer.Option(help="Its name.")],
        key: Annotated[str, typer.Option(help="Its organisation public key, hex.")],
        validator_key: Annotated[str, typer.Option(help="Its consensus key, hex.")] = "",
        box_key: Annotated[str, typer.Option(help="Its X25519 key for sealed metadata keys.")] = "",
        power: Annotated[int, typer.Option(help="Validator voting power.")] = 0,
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose admitting a hospital (as a validator when --validator-key and --power)."""
        from medledger.node import Node

        with user_errors():
            args: dict[str, object] = {"org": org, "name": name, "key": hex32(key, "--key")}
            if box_key:
                args["box_key"] = hex32(box_key, "--box-key")
            if validator_key:
                args["validator_key"] = hex32(validator_key, "--validator-key")
                args["power"] = power
            with Node.open(home) as node:
                c = send(node, node.wallet, Propose("admit_member", args, note))
                _report(node, c)

    @propose.command("remove")
    def remove(
        home: HomeOption,
        org: Annotated[str, typer.Option(help="The member to remove.")],
        note: Annotated[str, typer.Option()] = "",
    ) -> None:
        """Propose removing a member hospital."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Propose("remove_member", {"org": org}, note))
            _report(node, c)

    @propose.command("activate")
    def activate(
        home: HomeOption,
        contract: Annotated[str, typer.Option(help="The contract, e.g. consent.")],
        version: Annotated[int, typer.Option(help="The version to make active.")],
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose activating a contract version (every node must run software that has it
        before the vote reaches 2/3: see docs/deploy.md, Upgrades)."""
        from medledger.node import Node

        args = {"name": contract, "version": version}
        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Propose("activate_contract", args, note))
            _report(node, c)

    @propose.command("power")
    def power(
        home: HomeOption,
        org: Annotated[str, typer.Option()],
        power: Annotated[int, typer.Option(help="New voting power (0 stops it validating).")],
    ) -> None:
        """Propose changing a member's validator power."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Propose("set_power", {"org": org, "power": power}))
            _report(node, c)

    @member.command("vote")
    def vote(
        home: HomeOption,
        proposal: Annotated[int, typer.Argument(help="Proposal number.")],
        reject: Annotated[bool, typer.Option("--reject", help="Vote against.")] = False,
    ) -> None:
        """Vote on an open proposal (for, unless --reject)."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Vote(proposal=proposal, approve=not reject))
            _report(node, c)

    @member.command("list")
    def list_(home: HomeOption) -> None:
        """Members, and proposals still open."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            members = queries.members(node.engine)
            proposals = queries.proposals(node.engine, "open")
        table = Table("hospital", "name", "validator power", "key")
        for m in members:
            table.add_row(m["org"], m["name"], str(m["power"]), m["key"].hex()[:16])
        console.print(table)
        if proposals:
            pt = Table("proposal", "action", "args", "by", "votes for/against")
            for p in proposals:
                yes = sum(1 for v in p["votes"].values() if v)
                no = len(p["votes"]) - yes
                args = ", ".join(
                    f"{k}={v.hex()[:12] if isinstance(v, bytes) else v}"
                    for k, v in sorted(p["args"].items())
                )
                pt.add_row(str(p["id"]), p["action"], args, p["proposer"], f"{yes}/{no}")
            console.print(pt)
        else:
            console.print("no open proposal")
