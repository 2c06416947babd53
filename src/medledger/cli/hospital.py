"""`medledger hospital add`: a home for a hospital joining an existing consortium."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, user_errors


def register(app: typer.Typer) -> None:
    hospital = typer.Typer(help="Hospitals joining the consortium.", no_args_is_help=True)
    app.add_typer(hospital, name="hospital")

    @hospital.command("add")
    def add(
        directory: Annotated[Path, typer.Argument(help="The consortium's folder (from init).")],
        org: Annotated[str, typer.Option(help="The new hospital's id, e.g. chu-nantes.")],
        name: Annotated[str, typer.Option(help="Its name.")],
        power: Annotated[int, typer.Option(help="Validator power to propose (CometBFT).")] = 10,
    ) -> None:
        """Make the joining hospital's home and print the vote that admits it."""
        from medledger.provisioning import add_hospital

        with user_errors():
            joining = add_hospital(directory, org, name)
        console.print(f"home for {name} ({org}) made in {joining.home}")
        validator = (
            f" --validator-key {joining.validator_key.hex()} --power {power}"
            if joining.validator_key
            else ""
        )
        console.print(
            "Next, a member proposes it and the others vote:\n"
            f"  medledger member propose admit --home <a member's home> --org {org} "
            f'--name "{name}" --key {joining.key.hex()} --box-key {joining.box_key.hex()}'
            f"{validator}"
        )
