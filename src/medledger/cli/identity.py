"""`medledger practitioner add|revoke|roles|list`: a hospital's practitioners on the chain."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from medledger.cli._common import HomeOption, console, fail, send, short, user_errors
from medledger.contracts import queries
from medledger.contracts.identity import Register, Revoke, UpdateRoles
from medledger.node.wallet import TxRejected


def _roles(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def register(app: typer.Typer) -> None:
    prac = typer.Typer(
        help="Register and revoke your hospital's practitioners.", no_args_is_help=True
    )
    app.add_typer(prac, name="practitioner")

    @prac.command("add")
    def add(
        home: HomeOption,
        practitioner: Annotated[str, typer.Option("--id", help="Local id, e.g. dr-martin.")],
        roles: Annotated[
            str,
            typer.Option(help="Comma-separated: physician,nurse,emergency,dpo,admin,researcher."),
        ],
    ) -> None:
        """Create the practitioner's signing key (mode 0600) and register it with its roles.

        The key file is written (and synced) before the registration is sent: a registration
        whose answer is lost still has its key. Run again after "pending", the command sends
        the same registration with the same key, or says it is already done."""
        from medledger.ledger.keys import SigningKey
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            path = node.config.practitioner_key_path(practitioner)
            known = {p["id"]: p for p in queries.practitioners(node.engine, node.config.org)}
            # retired by the hospital's rebinding (its lost machine had the key): registered
            # again with a key made here
            again = practitioner in known and bool(known[practitioner].get("retired"))
            if path.exists():
                key = SigningKey.from_file(path)
                if again and bytes(known[practitioner]["key"]) == key.public_key:
                    fail(f"{path}: this key was retired with the lost machine; move it away")
                if practitioner in known and not again:
                    if bytes(known[practitioner]["key"]) != key.public_key:
                        fail(f"{path}: {practitioner!r} is registered with another key")
                    console.print(f"{practitioner} is already registered; key {path}")
                    return
                created = False  # an earlier run wrote it: the same key, the same act
            else:
                if practitioner in known and not again:
                    fail(f"--id: {node.config.org} already has a practitioner {practitioner!r}")
                key = SigningKey.generate()
                key.save(path)
                created = True
            msg = Register(practitioner=practitioner, key=key.public_key, roles=_roles(roles))
            try:
                committed = send(node, node.wallet, msg)
            except TxRejected:
                if created:
                    path.unlink()  # refused: nothing on the chain knows this key
                raise
        console.print(
            f"registered {practitioner} ({roles}) at {node.config.org}, "
            f"block {committed.height}; key {path}"
        )

    @prac.command("roles")
    def set_roles(
        home: HomeOption,
        practitioner: Annotated[str, typer.Option("--id")],
        roles: Annotated[str, typer.Option(help="The new comma-separated roles.")],
    ) -> None:
        """Replace a practitioner's roles."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, UpdateRoles(practitioner, _roles(roles)))
        console.print(f"{practitioner} now has roles {roles} (block {c.height})")

    @prac.command("revoke")
    def revoke(
        home: HomeOption,
        practitioner: Annotated[str, typer.Option("--id")],
        reason: Annotated[str, typer.Option(help="Why (kept on the chain).")] = "",
    ) -> None:
        """Revoke a practitioner: their key can no longer act for the hospital."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Revoke(practitioner, reason))
        console.print(f"revoked {practitioner} (block {c.height})")

    @prac.command("list")
    def list_(
        home: HomeOption,
        all_hospitals: Annotated[bool, typer.Option("--all", help="Every hospital's.")] = False,
    ) -> None:
        """Practitioners registered on the chain."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            rows = queries.practitioners(node.engine, None if all_hospitals else node.config.org)
        table = Table("hospital", "id", "roles", "status", "key")
        for p in rows:
            status = (
                "active"
                if p["active"]
                else "[red]retired (rebinding)[/]"
                if p.get("retired")
                else "[red]revoked[/]"
            )
            table.add_row(p["org"], p["id"], ",".join(p["roles"]), status, short(p["key"]))
        console.print(table)
