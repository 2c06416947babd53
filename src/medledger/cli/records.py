"""`medledger records`: the shared index as this hospital can read it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from medledger.cli._common import HomeOption, console, user_errors
from medledger.contracts import queries


def register(app: typer.Typer) -> None:
    records = typer.Typer(help="Read the shared records index.", no_args_is_help=True)
    app.add_typer(records, name="records")

    @records.command("list")
    def list_(
        home: HomeOption,
        patient: Annotated[str, typer.Option(help="The patient's INS (or pid).")],
    ) -> None:
        """A patient's index entries on the chain, with the metadata this hospital can open."""
        from medledger.node import Node
        from medledger.node.indexing import MetadataError, open_meta
        from medledger.node.patients import resolve_pid
        from medledger.vault import Vault
        from medledger.vault.errors import VaultError

        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            pid = resolve_pid(node.config.pseudonym_key(), patient)
            entries = queries.records_of_patient(node.engine, pid)
            try:
                key: bytes | None = vault.metadata_key(pid)
            except VaultError:
                key = None
        table = Table("custodian", "rid", "v", "type", "category", "code", "date", "title")
        for e in entries:
            meta: dict[str, str] = {}
            if e["shredded"]:
                meta = {"title": "[red]erased (crypto-shredded)[/]"}
            elif key is not None and e["custodian"] == node.config.org:
                try:
                    meta = open_meta(key, e["rid"], e["version"], e["meta_ct"])
                except MetadataError:
                    meta = {"title": "[red]metadata does not open[/]"}
            else:
                meta = {"title": "[dim]sealed (no metadata key for this custodian)[/]"}
            table.add_row(
                e["custodian"],
                e["rid"][:13],
                str(e["version"]),
                meta.get("type", ""),
                meta.get("category", ""),
                meta.get("code", ""),
                meta.get("date", ""),
                meta.get("title", ""),
            )
        console.print(f"patient {pid[:16]}…: {len(entries)} entries")
        console.print(table)

    @records.command("pending")
    def pending(
        home: HomeOption,
        settle: Annotated[
            bool,
            typer.Option(
                "--settle",
                help="Settle what has an outcome now (units older than the lease, 120 s).",
            ),
        ] = False,
    ) -> None:
        """Ingested records whose chain registration is not settled yet (after a crash or a
        timeout); the running node settles them once a minute."""
        import time

        from medledger.node import Node
        from medledger.node.registrations import reconcile
        from medledger.vault import Vault

        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            if settle:
                report = reconcile(node.engine, vault)
                console.print(f"settled: {report.summary()}")
            units = vault.provisional()
        table = Table("unit", "records", "registration", "age")
        now = time.time()
        for u in units:
            state = "signed, outcome unknown" if u.claim is not None else "never signed"
            table.add_row(u.unit[:12], str(len(u.records)), state, f"{now - u.updated_at:.0f}s")
        console.print(f"{len(units)} provisional units")
        if units:
            console.print(table)
