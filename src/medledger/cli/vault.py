"""`medledger ingest`, `medledger erase` and `medledger vault reinstate`: a hospital's records
in and out of its vault."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from medledger.cli._common import HomeOption, console, fail, user_errors
from medledger.contracts import queries

if TYPE_CHECKING:
    from medledger.node.ingest import UnitResult


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


def _file_line(result: UnitResult) -> str:
    """One file's outcome: what was stored new, as a new version, or already there."""
    if result.rejections and not result.accepted:
        return f"[red]✗[/] {escape(result.source)}: rejected"
    new = result.accepted - result.updated - result.unchanged
    line = (
        f"[green]✓[/] {escape(result.source)}: {new} stored, {result.updated} updated, "
        f"{result.unchanged} unchanged"
    )
    if result.warnings:
        line += f", [yellow]{len(result.warnings)} warnings[/]"
    if result.rejections:
        line += f", [red]{len(result.rejections)} rejected[/]"
    return line


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        home: HomeOption,
        files: Annotated[
            list[Path], typer.Argument(help="FHIR JSON/NDJSON or HL7 v2 files, or folders.")
        ],
        workers: Annotated[int, typer.Option(help="Processes validating ahead (1: none).")] = 2,
        max_mb: Annotated[
            int | None,
            typer.Option(help="Largest file taken, in MiB (default: ingest.max_bytes, 20 MiB)."),
        ] = None,
        sender: Annotated[
            str,
            typer.Option(
                help="Whose ids the files use when they do not say (no meta.source, no "
                "absolute fullUrl), e.g. the sending system's FHIR base: the same id from the "
                "same sender is the same resource."
            ),
        ] = "",
    ) -> None:
        """Validate, encrypt into the vault and register on the chain; a file is all or nothing.

        A resource sent again is stored once: unchanged, or as a new version."""
        from medledger.node import Node, heap
        from medledger.node.ingest import Ingestor
        from medledger.node.registrations import reconcile
        from medledger.vault import Vault

        paths = _expand(files)
        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            settled = reconcile(node.engine, vault)  # what an earlier crash left undecided
            if settled.settled:
                console.print(f"earlier ingestions: {settled.summary()}")
            ingestor = Ingestor(node, vault, max_bytes=max_mb * 1024 * 1024 if max_mb else None)
            heap.settle()  # as a node does: no full collections of the libraries loaded
            results = []
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task("ingesting", total=len(paths))
                inputs = ingestor.read_files(paths)  # a file too large is refused unread
                for result in ingestor.ingest_many(inputs, workers=workers, sender=sender):
                    progress.update(task, description=f"ingested {result.source}")
                    progress.console.print(_file_line(result))
                    results.append(result)
                    progress.advance(task)
        accepted = sum(r.accepted for r in results)
        rejected = [rej for r in results for rej in r.rejections]
        patients = set().union(*(r.pids for r in results)) if results else set()
        console.print(
            f"accepted {accepted} resources for {len(patients)} patients from {len(paths)} files; "
            f"rejected {len(rejected)}"
        )
        warnings = [w for r in results for w in r.warnings]
        if warnings:
            table = Table("file", "where", "warning", title="kept as sent")
            for w in warnings:
                table.add_row(escape(w.source), escape(w.where or "-"), escape(w.reason))
            console.print(table)
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
        evidence: Annotated[
            Path | None,
            typer.Option(help="The patient's signed request, to file it on their behalf."),
        ] = None,
        practitioner: Annotated[
            str,
            typer.Option(
                help="Who took the patient's request (with --evidence): a practitioner here."
            ),
        ] = "",
    ) -> None:
        """Carry out a patient's erasure here: crypto-shred and attest, or say why not."""
        import hashlib

        from medledger.node import Node
        from medledger.node.patients import resolve_pid
        from medledger.node.shredding import carry_out
        from medledger.vault import Vault

        evidence_hash = hashlib.sha256(evidence.read_bytes()).digest() if evidence else b""
        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            pid = resolve_pid(node.config.pseudonym_key(), patient)
            if (
                evidence_hash
                and queries.erasure_status(node.engine, pid) is None
                and queries.erasure_pending(node.engine, pid) is None
            ):
                from medledger.cli._common import taken_by

                taken_by(node, practitioner, "")  # checked before anything is signed
            outcome = carry_out(node, vault, pid, evidence_hash, practitioner)
        if outcome.status == "refused":
            fail(f"erasure request {outcome.request}: refused here: {outcome.reason}")
        if outcome.shred is None:
            console.print(f"erasure request {outcome.request}: {outcome.reason}")
            return
        r = outcome.shred
        console.print(
            f"erasure request {outcome.request}: patient {pid[:16]}… crypto-shredded here: keys "
            f"destroyed, {r.records} record versions and {r.copies} copies unreadable, "
            f"{r.purged_rows} ciphertext rows purged; attested on the chain (block {r.height})"
            + (f"; {outcome.reason}" if outcome.reason else "")
        )

    vault_app = typer.Typer(help="The hospital's vault, for its DPO.", no_args_is_help=True)
    app.add_typer(vault_app, name="vault")

    @vault_app.command("reinstate")
    def reinstate(
        home: HomeOption,
        patient: Annotated[str, typer.Option(help="The patient's INS (or pid, 64 hex).")],
        custodian: Annotated[
            str, typer.Option(help="The hospital whose records' copies may come back.")
        ],
        force: Annotated[
            bool,
            typer.Option("--force", help="Even if the chain shows nothing new (needs --reason)."),
        ] = False,
        reason: Annotated[
            str | None,
            typer.Option(help="Why, with --force (kept in the home's reinstatements.jsonl)."),
        ] = None,
    ) -> None:
        """Accept copies of a custodian's records of a patient again, after that custodian
        shredded them and this node's sync agent erased the copies held here.

        Until then the vault refuses every new copy of them. Allowed when the chain shows
        records of the patient that the custodian registered after its shredding (it holds
        new care records); otherwise only with --force and a --reason, which stay in this
        hospital's home (never on the chain). Refused, even forced, while the patient's
        erasure request stands. Nothing erased becomes readable again: only new copies are
        accepted, fetched by the sync agent when it has a basis for them.
        """
        from medledger.node import Node
        from medledger.node.patients import resolve_pid
        from medledger.node.shredding import reinstate_copies
        from medledger.vault import Vault

        if force != (reason is not None):
            fail("--force and --reason go together: say why the copies may come back")
        with (
            user_errors(),
            Node.open(home) as node,
            Vault.open(node.config.vault_config()) as vault,
        ):
            pid = resolve_pid(node.config.pseudonym_key(), patient)
            outcome = reinstate_copies(node, vault, pid, custodian, reason)
        if outcome.status == "refused":
            fail(
                f"copies of {custodian}'s records of patient {pid[:16]}…: refused: {outcome.reason}"
            )
        if outcome.status == "nothing-to-do":
            console.print(f"nothing to reinstate: {outcome.reason}")
            return
        console.print(
            f"copies of {custodian}'s records of patient {pid[:16]}… are accepted here again "
            f"({outcome.reason}); the copies erased before stay unreadable"
        )
