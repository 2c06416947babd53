"""`medledger consortium genesis`: the founding ceremony, from the founders' join requests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, fail, user_errors


def _powers(items: list[str]) -> dict[str, int]:
    """`org=N` options into a map."""
    found: dict[str, int] = {}
    for item in items:
        org, sep, value = item.partition("=")
        if not sep or not (value.strip().isascii() and value.strip().isdigit()):
            fail(f"--power {item!r}: expected org=N")
        if org in found:
            fail(f"--power: {org} given twice")
        found[org] = int(value)
    return found


def _params(items: list[str]) -> dict[str, int]:
    """`name=N` options into a map (their bounds are the contracts' to check)."""
    found: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not (value.strip().isascii() and value.strip().isdigit()):
            fail(f"--param {item!r}: expected name=N (a whole number)")
        if name in found:
            fail(f"--param: {name} given twice")
        found[name] = int(value)
    return found


def register(app: typer.Typer) -> None:
    consortium = typer.Typer(help="Founding a consortium across machines.", no_args_is_help=True)
    app.add_typer(consortium, name="consortium")

    @consortium.command("genesis")
    def genesis(
        chain_id: Annotated[str, typer.Option(help="The consortium's chain id.")],
        request: Annotated[
            list[Path],
            typer.Option(help="A founder's join-request.json (repeat, one per founder)."),
        ],
        out: Annotated[Path, typer.Option(help="The founding file to write.")],
        engine: Annotated[str, typer.Option(help="cometbft (founders on their own machines).")] = (
            "cometbft"
        ),
        power: Annotated[
            list[str] | None,
            typer.Option(help="org=N, a founder's validator power (default 10; repeat)."),
        ] = None,
        block_time: Annotated[
            str, typer.Option(help="Interval between CometBFT blocks, e.g. 1s or 250ms.")
        ] = "1s",
        param: Annotated[
            list[str] | None,
            typer.Option(
                help="name=N, a parameter the consortium starts with (repeat); refused, "
                "naming it, unless a vote could set it."
            ),
        ] = None,
    ) -> None:
        """Build the genesis from the founders' public join requests; print its hash.

        No private key is read. Hand the file to every founder, and its hash by another
        channel; each runs `medledger join --home H --genesis FILE --genesis-hash HASH`."""
        from medledger.cli.init import parse_duration_ms
        from medledger.provisioning.founding import found, load_requests, write_founding

        with user_errors():
            requests = load_requests(request)
            founding = found(
                requests,
                chain_id=chain_id,
                engine=engine,
                powers=_powers(power or []),
                block_time_ms=parse_duration_ms(block_time),
                genesis_time_ms=int(time.time() * 1000),
                params=_params(param or []),
            )
            write_founding(out, founding)
        orgs = ", ".join(r.org for r in requests)
        console.print(f"genesis of {chain_id} for {orgs} written to {out}")
        console.print(f"genesis hash {founding['genesis_hash']}")
        console.print(
            "Next, each founder on its own machine (the first listed makes the pseudonym key):\n"
            f"  medledger join --home H --genesis {out} --genesis-hash {founding['genesis_hash']}"
        )
