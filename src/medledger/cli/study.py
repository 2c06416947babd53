"""`medledger study register|enrol|withdraw|release|show|crate|query`: research studies.

A release posts the dataset's hash, its counts and its members' study tokens (computed here
from the pids: SHA-256 of study and pid), which the chain checks against enrolments.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from medledger.contracts.research import Enrol, Release, Withdraw

if TYPE_CHECKING:
    from medledger.node import Node

StudyOption = Annotated[str, typer.Option("--id", help="The study's id.")]
CrateOption = Annotated[
    Path | None, typer.Option("--crate", help="Also write an RO-Crate into this new directory.")
]


def _milli(value: str, option: str) -> int:
    """A decimal with at most three decimals, times 1000 (the chain's fixed point)."""
    from decimal import Decimal, InvalidOperation

    try:
        milli = Decimal(value) * 1000
    except InvalidOperation:
        fail(f"{option}: {value!r} is not a number")
    if milli != milli.to_integral_value() or milli < 0:
        fail(f"{option}: a number >= 0 with at most 3 decimals")
    return int(milli)


def _crate_dir_free(crate: Path | None) -> None:
    """Refuse a crate directory that holds something before anything is signed."""
    if crate is not None and crate.exists() and any(crate.iterdir()):
        fail(f"{crate}: not empty; a crate is written into a new directory")


def _release_crate(
    node: Node, crate: Path, study_id: str, seq: int, dataset: Path, members: list[bytes]
) -> None:
    from medledger.interop.crate import release_crate

    found = [r for r in queries.study_releases(node.engine, study_id) if r["seq"] == seq]
    if not found:
        fail(f"--release: study {study_id} has no release {seq} on the chain")
    location = queries.tx_location(node.engine, bytes(found[0]["tx"]))
    assert location is not None  # the chain's own record of the release names its tx
    release_crate(
        crate,
        chain_id=node.config.chain_id,
        release=found[0],
        height=int(location["height"]),
        dataset_name=dataset.name,
        dataset=dataset.read_bytes(),
        members=members,
    )


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
        min_cohort: Annotated[
            int, typer.Option(help="Smallest cohort a release, or a query's cell, may have.")
        ],
        title: Annotated[
            str, typer.Option(help="Kept by your hospital; only its salted hash is posted.")
        ] = "",
        end: Annotated[str, typer.Option(help="End of the study (date or ms).")] = "",
        privacy_budget: Annotated[
            str, typer.Option(help="Total epsilon its queries may spend (e.g. 2.5; research v2).")
        ] = "",
        as_: AsOption = "",
    ) -> None:
        """Register a study sponsored by your hospital."""
        from medledger.cli._study_query import message
        from medledger.node import Node
        from medledger.node.notes import NoteStore, study_title

        with user_errors():
            fields = {
                "study": study_id,
                "protocol_hash": file_hash(protocol),
                "ethics_ref": ethics,
                "categories": csv(categories),
                "min_cohort": min_cohort,
                "title_hash": study_title(NoteStore(home), study_id, title) if title else b"",
                "end_ms": when_ms(end, "--end") if end else 0,
            }
            if privacy_budget:
                fields["privacy_budget_milli"] = _milli(privacy_budget, "--privacy-budget")
            msg = message("research.register", **fields)
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
        crate: CrateOption = None,
        as_: AsOption = "",
    ) -> None:
        """Post a dataset release: hash, counts and members (checked against enrolments;
        from research v4, your hospital must hold care records of every patient listed)."""
        from medledger.contracts.research import member_token
        from medledger.node import Node

        with user_errors():
            _crate_dir_free(crate)
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
                seq = int(event(c, "study.released").get("release") or 0)
                if crate is not None:
                    _release_crate(node, crate, study_id, seq, dataset, msg.members)
        console.print(f"release {seq} of {study_id}: {len(pids)} patients (block {c.height})")
        if crate is not None:
            console.print(f"crate written to {crate} (check it: medledger study crate verify)")

    crates = typer.Typer(help="RO-Crate packages of releases and query results.")
    study.add_typer(crates, name="crate", no_args_is_help=True)

    @crates.command("release")
    def crate_release(
        home: HomeOption,
        study_id: StudyOption,
        seq: Annotated[int, typer.Option("--release", help="The release's number.")],
        dataset: Annotated[Path, typer.Option(help="The released dataset.")],
        patients: Annotated[Path, typer.Option(help="Its pids, one per line (as released).")],
        crate: Annotated[Path, typer.Option("--crate", help="A new directory for the crate.")],
    ) -> None:
        """Package a release already on the chain (its dataset and members) as an RO-Crate."""
        from medledger.contracts.research import member_token
        from medledger.node import Node

        with user_errors():
            _crate_dir_free(crate)
            pids = [pid_arg(x.strip(), home) for x in patients.read_text().split() if x.strip()]
            with Node.open(home) as node:
                _release_crate(
                    node, crate, study_id, seq, dataset, [member_token(study_id, p) for p in pids]
                )
        console.print(f"crate of release {seq} of {study_id} written to {crate}")

    @crates.command("verify")
    def crate_verify(
        home: HomeOption,
        crate: Annotated[Path, typer.Argument(help="The crate's directory.")],
    ) -> None:
        """Check a crate against the chain (every tx, hash, result, contributor) and its files."""
        from medledger.interop import crate as crates_
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            differences = crates_.verify(crate, node.engine, node.config.chain_id)
            loaded = crates_.load(crate)
        if differences:
            for line in differences:
                console.print(f"[red]differs:[/] {line}", highlight=False)
            fail(f"{crate}: {len(differences)} difference(s) with the chain")
        console.print(
            f"{crate}: {loaded.kind} of study {loaded.study} agrees with the chain "
            f"({len(loaded.acts())} txs, {len(loaded.files())} files checked)"
        )

    from medledger.cli._study_query import register_queries

    register_queries(study)

    @study.command("show")
    def show(home: HomeOption, study_id: StudyOption) -> None:
        """A study: its releases, its queries and the privacy budget they spent."""
        from medledger.node import Node
        from medledger.node.notes import NoteStore, title_of_study

        with user_errors(), Node.open(home) as node:
            record = queries.study(node.engine, study_id)
            releases = queries.study_releases(node.engine, study_id)
            versions = queries.contract_versions(node.engine)
            v2 = record is not None and versions.get("research", 1) >= 2
            asked = queries.study_queries(node.engine, study_id) if v2 else []
            budget = queries.study_budget(node.engine, study_id) if v2 else None
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
        if budget is not None and budget["total_milli"]:
            console.print(
                f"  privacy budget: epsilon {budget['spent_milli'] / 1000:g} spent of "
                f"{budget['total_milli'] / 1000:g}"
            )
        for q in asked:
            console.print(f"  query {q['id']}: {q['status']} (medledger study query result)")
