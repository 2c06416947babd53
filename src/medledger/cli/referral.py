"""`medledger referral create|admit|deliver|confirm|status`: sending a patient to another hospital.

The referring hospital (A) creates the referral with the patient's consent (a consent id, or
the signed agreement as `--evidence`); the receiving hospital (B) admits, which obliges A to
deliver the named records by a deadline; A's delivery posts their registered commitments; B
confirms the commitments of what it received. `admit --as ID` signs as a practitioner of B
with a care role (physician, nurse, emergency; `referral` v3), without `--as` B's
organisation key; deliver and confirm are the organisation key's only (v2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import (
    AsOption,
    EvidenceHashOption,
    EvidenceOption,
    HomeOption,
    PatientOption,
    console,
    csv,
    event,
    evidence,
    fail,
    hex32,
    iso,
    pid_arg,
    send,
    signer,
    user_errors,
    when_ms,
)
from medledger.contracts import queries
from medledger.contracts.referral import Admit, Confirm, Create, Deliver

IdOption = Annotated[int, typer.Option("--id", help="The referral's number.")]


def register(app: typer.Typer) -> None:
    referral = typer.Typer(help="Referrals between hospitals.", no_args_is_help=True)
    app.add_typer(referral, name="referral")

    @referral.command("create")
    def create(
        home: HomeOption,
        patient: PatientOption,
        to: Annotated[str, typer.Option(help="The receiving hospital.")],
        date: Annotated[str, typer.Option(help="The procedure's date (ISO date or ms).")],
        categories: Annotated[str, typer.Option(help="Comma-separated categories B needs.")],
        letter: Annotated[
            Path | None,
            typer.Option(help="The referral letter (kept here; the chain gets a salted hash)."),
        ] = None,
        letter_hash: Annotated[
            str, typer.Option(help="Or its SHA-256, hex (salted here too).")
        ] = "",
        rids: Annotated[str, typer.Option(help="Comma-separated records to deliver.")] = "",
        consent: Annotated[int, typer.Option(help="A consent granting B treatment.")] = 0,
        evidence_file: EvidenceOption = None,
        evidence_hash: EvidenceHashOption = "",
        as_: AsOption = "",
    ) -> None:
        """Refer a patient to another hospital for a procedure on a date."""
        from medledger.node import Node
        from medledger.node.notes import NoteStore, referral_letter, referral_letter_hash

        with user_errors():
            notes = NoteStore(home)
            if letter is None and not letter_hash:
                fail("--letter (or --letter-hash): the referral letter's hash is required")
            msg = Create(
                pid=pid_arg(patient, home),
                to=to,
                date_ms=when_ms(date, "--date"),
                categories=csv(categories),
                # Salted and kept in this hospital's notes: a letter's plain hash is found
                # again by hashing the likely template letters.
                procedure_hash=referral_letter(notes, letter.read_bytes(), letter.name)
                if letter
                else referral_letter_hash(notes, hex32(letter_hash, "--letter-hash")),
                rids=csv(rids),
                consent=consent,
                evidence_hash=evidence(evidence_file, evidence_hash),
            )
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        console.print(
            f"referral {event(c, 'referral.created').get('id')} to {to} (block {c.height})"
        )

    @referral.command("admit")
    def admit(home: HomeOption, referral_id: IdOption, as_: AsOption = "") -> None:
        """Record the patient's admission: the referring hospital must now deliver (`--as`: a
        practitioner with a care role)."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, signer(node, as_), Admit(referral_id))
        e = event(c, "obligation.created")
        console.print(
            f"referral {referral_id} admitted; {e.get('from')} must deliver by "
            f"{iso(int(e.get('deadline', '0')))} UTC"
        )

    @referral.command("deliver")
    def deliver(
        home: HomeOption,
        referral_id: IdOption,
        rids: Annotated[str, typer.Option(help="Records delivered (default: those named).")] = "",
    ) -> None:
        """Post the delivery: the records' ids and their registered commitments (signed by
        the organisation key: `referral` v2 takes it from no practitioner)."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            ref = queries.referral_status(node.engine, referral_id)
            if ref is None:
                fail(f"no referral {referral_id}")
            chosen = csv(rids) or list(ref["rids"])
            if not chosen:
                fail("--rids: the referral names no record; say which were delivered")
            commitments = []
            for rid in chosen:
                entry = queries.record_entry(node.engine, rid)
                if entry is None:
                    fail(f"--rids: no record {rid}")
                commitments.append(entry["commitment"])
            msg = Deliver(id=referral_id, rids=chosen, commitments=commitments)
            c = send(node, node.wallet, msg)
        console.print(f"referral {referral_id}: {len(chosen)} records delivered (block {c.height})")

    @referral.command("confirm")
    def confirm(
        home: HomeOption,
        referral_id: IdOption,
        commitments: Annotated[
            str, typer.Option(help="Hex commitments of the resources received, in order.")
        ],
    ) -> None:
        """Confirm the received resources match the delivered commitments (signed by the
        organisation key: `referral` v2 takes it from no practitioner)."""
        from medledger.node import Node

        with user_errors():
            values = [hex32(v, "--commitments") for v in csv(commitments)]
            with Node.open(home) as node:
                c = send(node, node.wallet, Confirm(referral_id, values))
        console.print(f"referral {referral_id}: delivery confirmed (block {c.height})")

    @referral.command("status")
    def status(home: HomeOption, referral_id: IdOption) -> None:
        """A referral, its window and its delivery obligation."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            ref = queries.referral_status(node.engine, referral_id)
        if ref is None:
            fail(f"no referral {referral_id}")
        console.print(
            f"referral {ref['id']}: {ref['from']} -> {ref['to']}, {ref['status']}\n"
            f"  date {iso(ref['date_ms'])}, window {iso(ref['window'][0])} .. "
            f"{iso(ref['window'][1])}\n"
            f"  categories {', '.join(ref['categories'])}; records {', '.join(ref['rids']) or '-'}"
        )
        ob = ref["obligation"]
        if ob is not None:
            flag = " [red]OVERDUE[/]" if ob["overdue"] else ""
            console.print(
                f"  obligation {ob['status']}{flag}, deadline {iso(ob['deadline'])}"
                + (" (delivered late)" if ob["delivered"] and ob["delivered"]["late"] else "")
            )
