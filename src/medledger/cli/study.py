"""`medledger study register|enrol|withdraw|release|show`: research studies (dynamic consent).

A release posts the dataset's hash, its counts and its members' study tokens (computed here
from the pids: SHA-256 of study and pid), which the chain checks against enrolments.
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
    PatientKeyOption,
    PatientOption,
    TakenByOption,
    console,
    csv,
    event,
    evidence,
    fail,
    file_hash,
    pid_arg,
    send,
    send_for_patient,
    signer,
    user_errors,
    when_ms,
)
from medledger.contracts import queries
from medledger.contracts.research import Enrol, Register, Release, Withdraw

StudyOption = Annotated[str, typer.Option("--id", help="The study's id.")]


def register(app: typer.Typer) -> None:
    study = typer.Typer(
        help="Research studies: register, enrol, withdraw, release.", no_args_is_help=True
    )
    app.add_typer(study, name="study")

    @study.command("register")
    def register_(
        home: HomeOption,
        study_id: StudyOption,
        protocol: Annotated[Path, typer.Option(help="The protocol document (only its hash).")],
        ethics: Annotated[str, typer.Option(help="The ethics approval reference.")],
        categories: Annotated[str, typer.Option(help="Comma-separated data categories.")],
        min_cohort: Annotated[int, typer.Option(help="Smallest cohort a release may have.")],
        title: Annotated[
            str, typer.Option(help="Kept by your hospital; only its salted hash is posted.")
        ] = "",
        end: Annotated[str, typer.Option(help="End of the study (date or ms).")] = "",
        as_: AsOption = "",
    ) -> None:
        """Register a study sponsored by your hospital."""
        from medledger.node import Node
        from medledger.node.notes import NoteStore, study_title

        with user_errors():
            msg = Register(
                study=study_id,
                protocol_hash=file_hash(protocol),
                ethics_ref=ethics,
                categories=csv(categories),
                min_cohort=min_cohort,
                title_hash=study_title(NoteStore(home), study_id, title) if title else b"",
                end_ms=when_ms(end, "--end") if end else 0,
            )
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        console.print(f"study {study_id} registered (block {c.height})")

    def _patient_choice(kind: type[Enrol | Withdraw], done: str, doc: str) -> None:
        """Register `study enrol` or `study withdraw`: the same options, the same signing."""

        def command(
            home: HomeOption,
            study_id: StudyOption,
            patient: PatientOption,
            evidence_file: EvidenceOption = None,
            evidence_hash: EvidenceHashOption = "",
            patient_key: PatientKeyOption = None,
            as_: AsOption = "",
            practitioner: TakenByOption = "",
        ) -> None:
            from medledger.node import Node

            with user_errors():
                msg = kind(
                    study=study_id,
                    pid=pid_arg(patient, home),
                    evidence_hash=evidence(evidence_file, evidence_hash),
                )
                with Node.open(home) as node:
                    c = send_for_patient(node, msg, practitioner, as_, patient_key)
            console.print(f"{done} {study_id} (block {c.height})")

        command.__doc__ = doc
        study.command(kind.__name__.lower())(command)

    _patient_choice(
        Enrol,
        "enrolled in",
        "Enrol a patient (their key, or a custodian on their behalf: evidence, practitioner).",
    )
    _patient_choice(
        Withdraw, "withdrawn from", "Withdraw a patient: no later release may include them."
    )

    @study.command("release")
    def release(
        home: HomeOption,
        study_id: StudyOption,
        dataset: Annotated[Path, typer.Option(help="The pseudonymised dataset (only its hash).")],
        patients: Annotated[
            Path, typer.Option(help="A file with the included pids, one per line.")
        ],
        records: Annotated[int, typer.Option(help="Number of records in the dataset.")] = 0,
        as_: AsOption = "",
    ) -> None:
        """Post a dataset release: hash, counts and members (checked against enrolments)."""
        from medledger.contracts.research import member_token
        from medledger.node import Node

        with user_errors():
            pids = [
                pid_arg(line.strip(), home)
                for line in patients.read_text().splitlines()
                if line.strip()
            ]
            if not pids:
                fail(f"{patients}: no pid")
            msg = Release(
                study=study_id,
                dataset_hash=file_hash(dataset),
                members=[member_token(study_id, p) for p in pids],
                counts={"patients": len(pids), "records": records},
            )
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        e = event(c, "study.released")
        console.print(
            f"release {e.get('release')} of {study_id}: {len(pids)} patients (block {c.height})"
        )

    @study.command("show")
    def show(home: HomeOption, study_id: StudyOption) -> None:
        """A study and its releases."""
        from medledger.node import Node
        from medledger.node.notes import NoteStore, title_of_study

        with user_errors(), Node.open(home) as node:
            record = queries.study(node.engine, study_id)
            releases = queries.study_releases(node.engine, study_id)
        if record is None:
            fail(f"no study {study_id!r}")
        title = title_of_study(NoteStore(home), record)
        console.print(
            f"study {record['id']}{f' «{title}»' if title else ''} ({record['status']}), "
            f"sponsor {record['sponsor']}, ethics "
            f"{record['ethics_ref']}; categories {', '.join(record['categories'])}; "
            f"min cohort {record['min_cohort']}; enrolled {record['enrolled']}"
        )
        for r in releases:
            console.print(
                f"  release {r['seq']} by {r['custodian']}: {r['members']} patients, "
                f"dataset {r['dataset_hash'].hex()[:16]}, "
                f"members root {r['members_root'].hex()[:16]}"
            )
