"""`medledger ingest` and `medledger erase`: a hospital's records in and out of its vault."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from medledger.cli._common import HomeOption, console, fail, user_errors


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file())
        elif p.exists():
            files.append(p)
        else:
            fail(f"{p}: not found")
    return files


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        home: HomeOption,
        files: Annotated[
            list[Path], typer.Argument(help="FHIR JSON/NDJSON or HL7 v2 files, or folders.")
        ],
    ) -> None:
        """Validate, encrypt into the vault and register on the chain; a file is all or nothing."""
        from medledger.ingest import Ingestor
        from medledger.node import Node
        from medledger.vault import Vault

        paths = _expand(files)
        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            ingestor = Ingestor(node, vault)
            results = []
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task("ingesting", total=len(paths))
                for path in paths:
                    progress.update(task, description=f"ingesting {path.name}")
                    results.append(ingestor.ingest_path(path))
                    progress.advance(task)
        accepted = sum(r.accepted for r in results)
        rejected = [rej for r in results for rej in r.rejections]
        patients = set().union(*(r.pids for r in results)) if results else set()
        console.print(
            f"accepted {accepted} resources for {len(patients)} patients from {len(paths)} files; "
            f"rejected {len(rejected)}"
        )
        if rejected:
            table = Table("file", "where", "reason")
            for rej in rejected:
                table.add_row(rej.source, rej.where or "-", rej.reason)
            console.print(table)
            raise typer.Exit(1)

    @app.command("erase")
    def erase(
        home: HomeOption,
        patient: Annotated[str, typer.Option(help="The patient's INS (or pid, 64 hex).")],
    ) -> None:
        """Crypto-shred a patient: destroy their keys, purge ciphertexts, attest on the chain."""
        from medledger.node import Node
        from medledger.patients import resolve_pid
        from medledger.vault import Vault

        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            pid = resolve_pid(
                node.config.pseudonym_key(),
                patient,
                set(vault.patients()).__contains__,
                lambda p: bool(node.engine.query("records/of_patient", {"pid": p})),
            )
            receipt = vault.erase(pid)
            console.print(
                f"erased patient {pid[:16]}…: keys destroyed, {receipt.records_shredded} record "
                f"versions and {receipt.copies_shredded} copies unreadable from now on"
            )
            committed = node.wallet.send(
                "records.shredded",
                {
                    "pid": pid,
                    "digest": receipt.digest,
                    "records": receipt.records_shredded,
                    "copies": receipt.copies_shredded,
                },
            )
            report = vault.purge_pending()
        console.print(
            f"attested on the chain in block {committed.height}; "
            f"{report.rows_deleted} ciphertext rows purged"
        )
