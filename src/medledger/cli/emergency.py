"""`medledger emergency open|review|list`: break-the-glass, and its review by the DPO.

Neither the reason code nor the written justification goes on the chain (both say something
about the patient's health): they are kept in the hospital's home (`medledger.node.notes`) and only
their salted hash is posted. `list` shows the reason to the hospital that kept it, that is, to
the DPO who reviews its practitioners' openings; other hospitals see that one was given.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medledger.cli._common import (
    HomeOption,
    PatientOption,
    console,
    event,
    iso,
    pid_arg,
    send,
    signer,
    user_errors,
)
from medledger.contracts import queries
from medledger.contracts.emergency import Open, Review


def register(app: typer.Typer) -> None:
    emergency = typer.Typer(help="Break-the-glass access and its review.", no_args_is_help=True)
    app.add_typer(emergency, name="emergency")

    @emergency.command("open")
    def open_(
        home: HomeOption,
        as_: Annotated[str, typer.Option("--as", help="The practitioner (emergency role).")],
        patient: PatientOption,
        reason: Annotated[
            str,
            typer.Option(
                help="life-threatening, unconscious, unable-to-consent, urgent-care or other."
            ),
        ],
        note: Annotated[str, typer.Option(help="Written justification (only its hash).")] = "",
        hours: Annotated[int, typer.Option(help="Duration (default: the policy's, 24 h).")] = 0,
    ) -> None:
        """Open time-limited access to a patient's records without consent."""
        from medledger.node import Node

        with user_errors():
            from medledger.node.notes import NoteStore, emergency_justification

            msg = Open(
                pid=pid_arg(patient, home),
                reason_hash=emergency_justification(NoteStore(home), reason, note),
                duration_ms=hours * 3600 * 1000,
            )
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        e = event(c, "emergency.opened")
        console.print(
            f"[bold yellow]emergency access {e.get('id')} open[/] until "
            f"{iso(int(e.get('expires', '0')))} UTC; the patient and the custodians' DPOs are "
            "notified"
        )
        if event(c, "emergency.overuse"):
            console.print("[red]flagged: above the consortium's threshold of openings[/]")

    @emergency.command("review")
    def review(
        home: HomeOption,
        as_: Annotated[str, typer.Option("--as", help="The reviewing DPO.")],
        opening: Annotated[int, typer.Option("--id", help="The emergency access's number.")],
        verdict: Annotated[str, typer.Option(help="approved or flagged (ends the access).")],
        note: Annotated[str, typer.Option(help="Review notes (kept here; only a hash).")] = "",
    ) -> None:
        """Review an emergency access of your hospital's practitioner."""
        from medledger.node import Node
        from medledger.node.notes import NoteStore

        with user_errors():
            # Kept here like the justification; a plain hash of a short note could be guessed.
            notes = NoteStore(home)
            kept = notes.keep("emergency-review", id=str(opening), note=note) if note else b""
            msg = Review(id=opening, verdict=verdict, note_hash=kept)
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        console.print(f"emergency access {opening} {verdict} (block {c.height})")

    @emergency.command("list")
    def list_(
        home: HomeOption,
        unreviewed: Annotated[bool, typer.Option(help="Only those awaiting review.")] = False,
    ) -> None:
        """Emergency accesses by your practitioners or to your records, newest first."""
        from medledger.node import Node
        from medledger.node.notes import NoteStore

        with user_errors(), Node.open(home) as node:
            rows = queries.emergency_list(node.engine, org=node.config.org, unreviewed=unreviewed)
        notes = NoteStore(home)
        table = Table("id", "practitioner", "pid", "reason", "opened", "expires", "review")
        for o in rows:
            verdict = o["review"]["verdict"] if o["review"] else "[yellow]pending[/]"
            kept = notes.get(bytes(o["reason_hash"]))
            table.add_row(
                str(o["id"]),
                f"{o['org']}/{o['practitioner']}",
                o["pid"][:12],
                escape(f"{kept['reason']}: {kept['note']}")
                if kept
                else f"[dim]kept by {o['org']}[/]",
                iso(o["opened"]),
                iso(o["expires"]),
                verdict,
            )
        console.print(table)
