"""`medledger init`: create a consortium and one home per hospital."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, fail, user_errors


def parse_duration_ms(text: str) -> int:
    """'1s', '250ms', '1.5s' or a plain number of milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if not m:
        raise ValueError(f"--block-time: {text!r} is not a duration like 1s or 250ms")
    value = float(m.group(1))
    ms = value * 1000 if m.group(2) == "s" else value
    if ms < 10:
        raise ValueError("--block-time: at least 10ms")
    return int(ms)


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        directory: Annotated[Path, typer.Argument(help="Folder for the new consortium.")],
        hospitals: Annotated[int, typer.Option(help="Number of founding hospitals.")] = 3,
        engine: Annotated[str, typer.Option(help="solo (in-process) or cometbft.")] = "solo",
        chain_id: Annotated[str, typer.Option(help="The consortium's chain id.")] = "",
        block_time: Annotated[
            str, typer.Option(help="Interval between CometBFT blocks, e.g. 1s or 250ms.")
        ] = "1s",
        host: Annotated[
            list[str] | None,
            typer.Option(help="Hospital i's address (once per hospital; default 127.0.0.1)."),
        ] = None,
    ) -> None:
        """Create a consortium: keys (mode 0600), genesis, one home per hospital."""
        from medledger.provisioning import create_consortium

        with user_errors():
            homes = create_consortium(
                directory,
                hospitals,
                engine=engine,
                chain_id=chain_id or f"medledger-{engine}",
                block_time_ms=parse_duration_ms(block_time),
                genesis_time_ms=int(time.time() * 1000),
                hosts=host or None,
            )
        if not homes:
            fail("no hospital created")
        console.print(f"Consortium created in [bold]{directory}[/] ({engine} engine):")
        for home in homes:
            console.print(f"  {home.name:<16} home {home}")
        console.print(f"Next: medledger practitioner add --home {homes[0]} ...")
