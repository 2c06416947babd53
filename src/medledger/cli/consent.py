"""`medledger consent grant|revoke|contest|confirm|list|export|import|bind-key|cancel`: consents.

`cancel` stops, within its 72 h, an erasure request or a key rebinding a hospital filed in the
patient's name (the patient's key, or a DPO of a custodian since before it).

A consent is signed by the patient's own key (`--patient-key FILE`) or, on the patient's
behalf, by a hospital that holds their care records (a custodian), with the evidence
(`--evidence FILE`: the signed form; only its SHA-256 goes on the chain) and the practitioner
who took the request: `--practitioner ID` (the organisation key signs and names them) or
`--as ID` (that practitioner's own key signs). Either is checked on the chain before anything
is signed: active, with a role allowed to take a patient's request. `--patient` is the
patient's pid (64 hex characters) or INS.

The helpers it shares with the other care commands (times, hashes, signers, options) live in
`cli/_common.py`.
"""

from __future__ import annotations

import json
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
    hex32,
    iso,
    now_ms,
    pid_arg,
    send,
    send_for_patient,
    signer,
    taken_by,
    user_errors,
    when_ms,
)
from medledger.contracts import queries
from medledger.contracts.consent import Confirm, Contest, Grant, Revoke
from medledger.contracts.erasure import Cancel
from medledger.contracts.patients import Bind, CancelBind


def register(app: typer.Typer) -> None:
    consent = typer.Typer(
        help="Patients' consents: grant, revoke, list, FHIR.", no_args_is_help=True
    )
    app.add_typer(consent, name="consent")

    @consent.command("grant")
    def grant(
        home: HomeOption,
        patient: PatientOption,
        grantee: Annotated[
            str, typer.Option(help="org:<org>, practitioner:<org>/<id> or study:<study>.")
        ],
        categories: Annotated[str, typer.Option(help="Comma-separated categories, or '*'.")],
        purpose: Annotated[str, typer.Option(help="treatment, emergency or research.")],
        start: Annotated[str, typer.Option(help="From (date, date-time or ms; now).")] = "",
        end: Annotated[str, typer.Option(help="Until (date, date-time or ms; none).")] = "",
        custodian: Annotated[str, typer.Option(help="Only records held by this hospital.")] = "*",
        evidence_file: EvidenceOption = None,
        evidence_hash: EvidenceHashOption = "",
        patient_key: PatientKeyOption = None,
        as_: AsOption = "",
        practitioner: TakenByOption = "",
    ) -> None:
        """Record a consent, signed by the patient or on their behalf with evidence."""
        from medledger.node import Node

        with user_errors():
            msg = Grant(
                pid=pid_arg(patient, home),
                grantee=grantee,
                categories=csv(categories),
                purpose=purpose,
                start_ms=when_ms(start, "--start") if start else now_ms(),
                end_ms=when_ms(end, "--end") if end else 0,
                custodian=custodian,
                evidence_hash=evidence(evidence_file, evidence_hash),
            )
            with Node.open(home) as node:
                # A start left to "now" does not make a re-run after "pending" another act.
                volatile = () if start else ("start_ms",)
                c = send_for_patient(node, msg, practitioner, as_, patient_key, volatile=volatile)
        e = event(c, "consent.granted")
        console.print(
            f"consent {e.get('id')} granted to {grantee} for {purpose} "
            f"(signed by the {e.get('by')}, block {c.height})"
        )

    @consent.command("revoke")
    def revoke(
        home: HomeOption,
        consent_id: Annotated[int, typer.Option("--id", help="The consent's number.")],
        reason: Annotated[
            str,
            typer.Option(help="patient-request, entered-in-error, superseded or other (a code)."),
        ] = "",
        evidence_file: EvidenceOption = None,
        evidence_hash: EvidenceHashOption = "",
        patient_key: PatientKeyOption = None,
        as_: AsOption = "",
        practitioner: TakenByOption = "",
    ) -> None:
        """Revoke a consent (the patient, the recording hospital, or with evidence)."""
        from medledger.node import Node

        with user_errors():
            msg = Revoke(
                id=consent_id, reason=reason, evidence_hash=evidence(evidence_file, evidence_hash)
            )
            with Node.open(home) as node:
                # The recording hospital withdraws its own record without evidence.
                c = send_for_patient(node, msg, practitioner, as_, patient_key)
        console.print(f"consent {consent_id} revoked (block {c.height})")

    @consent.command("contest")
    def contest(
        home: HomeOption,
        consent_id: Annotated[int, typer.Option("--id", help="The consent's number.")],
        reason: Annotated[
            str,
            typer.Option(help="no-care-relationship, evidence-doubtful, patient-denies or other."),
        ],
        as_: Annotated[str, typer.Option("--as", help="Your hospital's DPO who contests it.")],
        note: Annotated[
            Path | None, typer.Option(help="The DPO's written note; its SHA-256 goes on the chain.")
        ] = None,
        note_hash: Annotated[str, typer.Option(help="Or the note's SHA-256, hex.")] = "",
    ) -> None:
        """Contest a consent a hospital granted in the patient's name (a DPO of a custodian
        since before it): the consent is suspended until the patient's own key confirms it."""
        from medledger.node import Node

        with user_errors():
            msg = Contest(id=consent_id, reason=reason, evidence_hash=evidence(note, note_hash))
            if not msg.evidence_hash:
                fail("--note: the DPO's written note (its SHA-256) is needed")
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        console.print(f"consent {consent_id} contested: suspended (block {c.height})")

    @consent.command("confirm")
    def confirm(
        home: HomeOption,
        consent_id: Annotated[int, typer.Option("--id", help="The consent's number.")],
        patient_key: Annotated[
            Path, typer.Option("--patient-key", help="The patient's own key file (hex seed).")
        ],
    ) -> None:
        """Confirm, with the patient's own key, a consent a hospital recorded on their behalf."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, signer(node, "", patient_key), Confirm(id=consent_id))
        console.print(f"consent {consent_id} confirmed by the patient (block {c.height})")

    @consent.command("list")
    def list_(home: HomeOption, patient: PatientOption) -> None:
        """A patient's consents, oldest first."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            rows = queries.consent_list(node.engine, pid_arg(patient, home))
        if not rows:
            console.print("no consent")
            return
        for c in rows:
            status = "active" if c["status"] == "active" else f"[red]{c['status']}[/]"
            scope = "" if c["custodian"] == "*" else f", records of {c['custodian']}"
            console.print(
                f"{c['id']:>4}  {c['grantee']}  {c['purpose']}: {','.join(c['categories'])}"
                f"{scope}  {iso(c['start_ms'])} .. {iso(c['end_ms'])}  {status}",
                highlight=False,
            )

    @consent.command("export")
    def export(
        home: HomeOption,
        consent_id: Annotated[int, typer.Option("--id")],
        version: Annotated[str, typer.Option("--fhir", help="R4 or R5.")] = "R4",
    ) -> None:
        """Print a consent as a FHIR Consent resource (JSON)."""
        from medledger.interop.fhir_consent import to_fhir
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            record = queries.consent_get(node.engine, consent_id)
            if record is None:
                fail(f"no consent {consent_id}")
            typer.echo(json.dumps(to_fhir(record, version), indent=2))

    @consent.command("import")
    def import_(
        home: HomeOption,
        path: Annotated[Path, typer.Argument(help="A FHIR Consent (R4 or R5), JSON.")],
        evidence_file: EvidenceOption = None,
        evidence_hash: EvidenceHashOption = "",
        as_: AsOption = "",
        practitioner: TakenByOption = "",
    ) -> None:
        """Grant the consent a FHIR Consent resource describes, on the patient's behalf."""
        from medledger.interop.fhir_consent import from_fhir
        from medledger.node import Node

        with user_errors():
            msg = Grant(**from_fhir(json.loads(path.read_text())))
            given = evidence(evidence_file, evidence_hash)
            if given:
                msg.evidence_hash = given
            if not msg.evidence_hash:
                fail("--evidence: the hash of the signed consent is needed on the patient's behalf")
            with Node.open(home) as node:
                msg.taken_by = taken_by(node, practitioner, as_)
                c = send(node, signer(node, as_), msg)
        console.print(
            f"consent {event(c, 'consent.granted').get('id')} imported (block {c.height})"
        )

    @consent.command("cancel")
    def cancel(
        home: HomeOption,
        patient: PatientOption,
        what: Annotated[
            str, typer.Option(help="erasure (a pending request) or key (a pending rebinding).")
        ],
        patient_key: PatientKeyOption = None,
        as_: AsOption = "",
    ) -> None:
        """Stop, within its 72 h, an erasure request or a key rebinding a hospital filed in the
        patient's name: with the patient's own key, or as a DPO of a custodian since before."""
        from medledger.node import Node

        with user_errors():
            if what not in ("erasure", "key"):
                fail("--what: erasure or key")
            if not as_ and patient_key is None:
                fail("--as DPO or --patient-key: who cancels it")
            with Node.open(home) as node:
                pid = pid_arg(patient, home)
                if what == "key":
                    c = send(node, signer(node, as_, patient_key), CancelBind(pid=pid))
                    console.print(f"key rebinding cancelled (block {c.height})")
                    return
                pending = queries.erasure_pending(node.engine, pid)
                if pending is None:
                    fail("no erasure request of this patient is pending")
                msg = Cancel(request=int(pending["id"]))
                c = send(node, signer(node, as_, patient_key), msg)
        console.print(f"erasure request {pending['id']} cancelled (block {c.height})")

    @consent.command("bind-key")
    def bind_key(
        home: HomeOption,
        patient: PatientOption,
        key: Annotated[str, typer.Option(help="The patient's Ed25519 public key, hex.")],
        evidence_file: EvidenceOption = None,
        evidence_hash: EvidenceHashOption = "",
        as_: AsOption = "",
    ) -> None:
        """Attest that this key is the patient's, so they can sign their own consents."""
        from medledger.node import Node

        with user_errors():
            msg = Bind(
                pid=pid_arg(patient, home),
                key=hex32(key, "--key"),
                evidence_hash=evidence(evidence_file, evidence_hash),
            )
            if not msg.evidence_hash:
                fail("--evidence: how the patient's identity was checked (its SHA-256)")
            with Node.open(home) as node:
                c = send(node, signer(node, as_), msg)
        pending = [e for e in c.result.events if e.type == "patient.rebind_pending"]
        if pending:  # replacing a bound key waits (contracts/patients.py)
            effective = iso(int(pending[0].get("effective_ms") or 0))
            console.print(
                f"key rebinding pending (block {c.height}): it replaces the patient's key at "
                f"{effective} unless their current key or an earlier custodian's DPO cancels it"
            )
            return
        console.print(f"key bound to the patient (block {c.height})")
