"""The `medledger` command.

Each module of this package that defines `register(app)` adds its commands; modules import
their heavy dependencies inside the command functions so that `medledger --help` stays fast.
What the commands share (console, options, times, signers) is `_common`; the running node's
exchange and API are wired in `_runtime`; the demo's story is `_scenario`.

The top layer: may import every package; nothing imports it.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="medledger",
    help="A permissioned ledger network for hospitals to share patient records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):  # _common, __main__: not command groups
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    app()
