"""`medledger join --home H --from https://member:port | --genesis FILE`: a hospital joining a
running consortium from its own machine, or a founder configured from the founding file."""

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
            str | None, typer.Option("--from", help="A member's gateway, https://host:port.")
        ] = None,
        genesis: Annotated[
            Path | None,
            typer.Option(
                "--genesis", help="The founding file of `medledger consortium genesis` (founders)."
            ),
        ] = None,
        genesis_hash: Annotated[
            str | None,
            typer.Option(help="The genesis hash the members gave you (hex); checked, not trusted."),
        ] = None,
        sandbox: Annotated[
            Path | None,
            typer.Option(
                "--sandbox",
                help="A solo consortium: its sandbox folder on this machine (the ledger's).",
            ),
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
        """Configure a keygen'd home: genesis, peers, CometBFT (or, on a solo sandbox, its
        folder's ledger); then get the pseudonym key (a joiner: once the members have
        admitted it; a founder: from the first founder)."""
        from medledger.provisioning.founding import load_founding
        from medledger.provisioning.join import (
            JoinError,
            NotSynced,
            configure_from,
            configure_from_file,
            fetch_bootstrap,
            fetch_pseudonym_key,
            founders_pseudonym_key,
            p2p_warning,
            params_warning,
        )

        if (from_url is None) == (genesis is None):
            fail(
                "give either --from URL (joining a running consortium) "
                "or --genesis FILE (a founder)"
            )
        with user_errors():
            if genesis is not None:
                config = configure_from_file(
                    home, genesis, genesis_hash=genesis_hash, listen_all=listen_all
                )
            else:
                assert from_url is not None
                config = configure_from(
                    home,
                    from_url,
                    genesis_hash=genesis_hash,
                    listen_all=listen_all,
                    sandbox=sandbox,
                )
        digest = config.genesis().hash().hex()
        if genesis_hash is None:
            console.print(
                f"genesis hash {digest}: compare it with the one the members gave you "
                "(or pass --genesis-hash to have it checked)"
            )
        else:
            console.print(f"genesis hash {digest} checked")
        console.print(f"{config.org}: configured in {config.home} from {from_url or genesis}")
        ignored = params_warning(config)
        if ignored:
            console.print(f"warning: {ignored}")
        try:  # the members' records, to check the node id they peer with (best effort)
            answer = load_founding(genesis) if genesis else fetch_bootstrap(from_url or "")
            warning = p2p_warning(config, answer)
        except (JoinError, OSError, ValueError) as exc:
            warning = f"could not check the node id the members peer with: {exc}"
        if warning:
            console.print(f"warning: {warning}")
        cmt = config.home / config.cometbft.home
        start = f"  medledger node run --home {config.home}"
        if config.engine == "cometbft":
            start += f"\n  cometbft start --home {cmt}"
        if not (Path(config.home) / "keys" / "pseudonym.key").exists():
            if genesis is not None:
                try:
                    console.print(founders_pseudonym_key(config))
                except (JoinError, OSError, ValueError) as exc:
                    console.print(
                        f"pseudonym key: not yet ({exc}).\nThe configuration is written: start "
                        f"the node, and once the first founder's node runs, run this command "
                        f"again to fetch the key (ingestion needs it).\n{start}"
                    )
                    return
            else:
                try:
                    fetch_pseudonym_key(config, from_url or "")
                except NotSynced as exc:
                    console.print(
                        f"pseudonym key: not yet ({exc}).\nThe configuration is written: start "
                        f"the node; once it has caught up, run this command again to fetch the "
                        f"key from a member pinned to its TLS key on the synced chain "
                        f"(ingestion needs it).\n{start}"
                    )
                    return
                except (JoinError, OSError, ValueError) as exc:
                    fail(
                        f"{exc}\nThe configuration is written; once the members have admitted "
                        f"{config.org}, run this command again."
                    )
                console.print("pseudonym key received (sealed to this hospital's box key)")
        console.print(
            "Next, start the node; it block-syncs the chain from its peers, and validates once "
            f"the members vote it power (a founder validates from genesis):\n{start}"
        )
