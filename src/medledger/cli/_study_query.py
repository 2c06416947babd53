"""`medledger study query submit|approve|run|result`: federated study queries (placeholder)."""

from __future__ import annotations

import typer


def register_queries(study: typer.Typer) -> None:
    """Add the `query` commands under `study`."""
