"""`medledger hospital keygen|add`: a hospital's own keys, and a sandbox home joining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, user_errors


def register(app: typer.Typer) -> None:
    hospital = typer.Typer(help="Hospitals joining the consortium.", no_args_is_help=True)
    app.add_typer(hospital, name="hospital")

    @hospital.command("keygen")
    def keygen(
        home: Annotated[Path, typer.Option(help="The new home (on the hospital's machine).")],
        org: Annotated[str, typer.Option(help="The hospital's id, e.g. chu-nantes.")],
        name: Annotated[str, typer.Option(help="Its name.")],
        address: Annotated[
            list[str] | None,
            typer.Option(
                help="kind=host:port, kind among gateway, api, p2p, rpc (repeat the option)."
            ),
        ] = None,
    ) -> None:
        """Make every key of a new hospital in its home and print its join request.

        The private keys never leave the home; hand HOME/join-request.json to a member, who
        proposes it with `medledger member propose admit --request FILE`."""
        from medledger.provisioning import keygen as make_keys
        from medledger.provisioning import parse_addresses
        from medledger.provisioning.keygen import JOIN_REQUEST

        with user_errors():
            request = make_keys(home, org, name, parse_addresses(address or []))
        console.print(request.to_json(), end="", markup=False, highlight=False)
        console.print(f"keys made in {home / 'keys'}; request written to {home / JOIN_REQUEST}")

    @hospital.command("add")
    def add(
        directory: Annotated[Path, typer.Argument(help="The consortium's folder (from init).")],
        org: Annotated[str, typer.Option(help="The new hospital's id, e.g. chu-nantes.")],
        name: Annotated[str, typer.Option(help="Its name.")],
        power: Annotated[int, typer.Option(help="Validator power to propose (CometBFT).")] = 10,
    ) -> None:
        """Make a sandbox home for a joining hospital and print the vote that admits it."""
        from medledger.node.config import load_config
        from medledger.provisioning import add_hospital

        with user_errors():
            joining = add_hospital(directory, org, name)
            engine = load_config(joining.home).engine
        console.print(f"home for {name} ({org}) made in {joining.home}")
        validator = f" --power {power}" if engine == "cometbft" and power else ""
        console.print(
            "Next, a member proposes it and the others vote:\n"
            f"  medledger member propose admit --home <a member's home> "
            f"--request {joining.request_path}{validator}"
        )
