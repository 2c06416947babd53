"""`medledger join --home H --from https://member:port`: a hospital joining from its own machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import HomeOption, console, fail, user_errors


def register(app: typer.Typer) -> None:
    @app.command("join")
    def join(
        home: HomeOption,
        from_url: Annotated[
            str, typer.Option("--from", help="A member's gateway, https://host:port.")
        ],
        genesis_hash: Annotated[
            str | None,
            typer.Option(help="The genesis hash the members gave you (hex); checked, not trusted."),
        ] = None,
        listen_all: Annotated[
            bool,
            typer.Option(
                "--listen-all",
                help="Listen on every interface (behind a NAT); the request's addresses stay "
                "those the others dial.",
            ),
        ] = False,
    ) -> None:
        """Configure a keygen'd home from a member: genesis, peers, CometBFT; fetch the
        pseudonym key once the members have admitted this hospital."""
        from medledger.provisioning.join import JoinError, configure_from, fetch_pseudonym_key

        with user_errors():
            config = configure_from(
                home, from_url, genesis_hash=genesis_hash, listen_all=listen_all
            )
        digest = config.genesis().hash().hex()
        if genesis_hash is None:
            console.print(
                f"genesis hash {digest}: compare it with the one the members gave you "
                "(or pass --genesis-hash to have it checked)"
            )
        else:
            console.print(f"genesis hash {digest} checked")
        console.print(f"{config.org}: configured in {config.home} from {from_url}")
        if not (Path(config.home) / "keys" / "pseudonym.key").exists():
            try:
                fetch_pseudonym_key(config, from_url)
            except (JoinError, OSError, ValueError) as exc:
                fail(
                    f"{exc}\nThe configuration is written; once the members have admitted "
                    f"{config.org}, run this command again."
                )
            console.print("pseudonym key received (sealed to this hospital's box key)")
        cmt = config.home / config.cometbft.home
        console.print(
            "Next, start the node; it block-syncs the chain from its peers, and validates once "
            "the members vote it power:\n"
            f"  medledger node run --home {config.home}\n"
            f"  cometbft start --home {cmt}"
        )
