"""What every command shares: the console, the --home option, and turning errors into exits."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

HomeOption = Annotated[
    Path,
    typer.Option("--home", "-H", help="The hospital's home folder (made by `medledger init`)."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known failures become one clear line and a non-zero exit, never a traceback."""
    from medledger.ledger.keys import KeyFileError
    from medledger.node.config import ConfigError
    from medledger.node.wallet import TxRejected
    from medledger.vault.errors import VaultError

    try:
        yield
    except (ConfigError, KeyFileError, TxRejected, ValueError, TimeoutError) as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"{exc.filename}: not found")
    except ConnectionError as exc:
        fail(f"cannot reach the node: {exc} (is it running? `medledger net status`)")
    except VaultError as exc:
        fail(f"vault: {exc}")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


def short(data: bytes, n: int = 16) -> str:
    return data.hex()[:n]
