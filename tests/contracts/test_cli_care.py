"""The care commands as a user runs them: consent, emergency, referral, study, policy, authorize."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from medledger.cli import app
from medledger.contracts.records import META_CT_SIZES
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.node.notes import NoteStore

runner = CliRunner()
PID = hashlib.sha256(b"cli patient").hexdigest()
OTHER = hashlib.sha256(b"cli patient 2").hexdigest()


def run(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def bind_young_custody(proposer: str, voter: str) -> None:
    """Let a custodian of a minute bind a patient's first key (custody_min_age_ms is 24 h by
    default): the consortium votes it down to 0, as a test network must, its records being
    seconds old."""
    run("policy", "param", "-H", proposer, "--name", "custody_min_age_ms", "--value", "0")
    assert "executed" in run("member", "vote", "-H", voter, "1").output


def test_care_commands(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon = str(net / "hospitals" / "chu-lyon")
    paris = str(net / "hospitals" / "aphp-paris")
    run("practitioner", "add", "-H", lyon, "--id", "dr-martin", "--roles", "physician,emergency")
    run("practitioner", "add", "-H", lyon, "--id", "dpo-lyon", "--roles", "dpo")
    run("practitioner", "add", "-H", paris, "--id", "res-paris", "--roles", "researcher")
    with Node.open(Path(lyon)) as node:  # what `ingest` would register
        node.wallet.send(
            "records.register",
            {
                "entries": [
                    {
                        "rid": "r-1",
                        "pid": PID,
                        "commitment": hashlib.sha256(b"r-1").digest(),
                        "meta_ct": b"c" * META_CT_SIZES[0],
                    }
                ]
            },
        )
    form = tmp_path / "form.pdf"
    form.write_bytes(b"signed consent form")
    patient_key = tmp_path / "patient.key"
    key = SigningKey.generate()
    key.save(patient_key)

    # -- consent -----------------------------------------------------------------------------
    bind_young_custody(lyon, paris)
    out = run(
        "consent", "bind-key", "-H", lyon, "--patient", PID, "--key", key.public_key.hex(),
        "--evidence-file", str(form),
    )  # fmt: skip
    assert "key bound" in out.output
    out = run(
        "consent", "grant", "-H", lyon, "--patient", PID, "--grantee", "org:aphp-paris",
        "--categories", "labs", "--purpose", "treatment", "--patient-key", str(patient_key),
    )  # fmt: skip
    assert "consent 1 granted to org:aphp-paris" in out.output and "patient" in out.output
    bad = run(
        "consent", "grant", "-H", lyon, "--patient", PID, "--grantee", "org:aphp-paris",
        "--categories", "labs", "--purpose", "treatment", code=1,
    )  # fmt: skip
    assert "evidence_hash" in bad.output
    assert "org:aphp-paris" in run("consent", "list", "-H", paris, "--patient", PID).output
    exported = run("consent", "export", "-H", paris, "--id", "1", "--fhir", "R5").output
    resource = json.loads(exported)
    assert resource["resourceType"] == "Consent" and resource["decision"] == "permit"
    fhir_file = tmp_path / "consent.json"
    fhir_file.write_text(exported)
    # Paris never treated the patient: it cannot record a consent in their name.
    out = run("consent", "import", "-H", paris, str(fhir_file), "--evidence-file", str(form),
              "--practitioner", "res-paris", code=1)  # fmt: skip
    assert "res-paris lacks a role allowed to take a patient's request" in out.output
    out = run("consent", "import", "-H", lyon, str(fhir_file), "--evidence-file", str(form),
              code=1)  # fmt: skip
    assert "--practitioner" in out.output
    out = run("consent", "import", "-H", lyon, str(fhir_file), "--evidence-file", str(form),
              "--practitioner", "dr-martin")  # fmt: skip
    assert "consent 2 imported" in out.output

    # -- authorize ---------------------------------------------------------------------------
    out = run(
        "authorize", "-H", paris, "--actor", "aphp-paris", "--patient", PID,
        "--purpose", "treatment", "--custodian", "chu-lyon", "--rid", "r-1",
    )  # fmt: skip
    assert "ALLOWED basis consent:1" in out.output
    out = run(
        "authorize", "-H", paris, "--actor", "aphp-paris", "--patient", PID,
        "--purpose", "treatment", "--custodian", "chu-lyon", "--category", "imaging", code=3,
    )  # fmt: skip
    assert "DENIED other category" in out.output
    run("consent", "revoke", "-H", lyon, "--id", "1", "--patient-key", str(patient_key))

    # -- emergency ---------------------------------------------------------------------------
    out = run(
        "emergency", "open", "-H", lyon, "--as", "dr-martin", "--patient", OTHER,
        "--reason", "unconscious", "--note", "found unconscious, no relative", "--hours", "2",
    )  # fmt: skip
    assert "emergency access 1 open" in out.output
    out = run(
        "authorize", "-H", lyon, "--actor", "dr-martin", "--patient", OTHER,
        "--purpose", "emergency", "--custodian", "aphp-paris",
    )  # fmt: skip
    assert "ALLOWED basis emergency:1" in out.output
    listed = run("emergency", "list", "-H", lyon, "--unreviewed").output
    # Lyon's DPO reads the reason from Lyon's notes; the chain holds only its salted hash.
    assert "pending" in listed and "unconscio" in listed, listed
    with Node.open(Path(lyon)) as node:
        (opening,) = node.engine.query("emergency/list", {"org": "chu-lyon"})
    assert "reason" not in opening and len(opening["reason_hash"]) == 32
    out = run(
        "emergency", "review", "-H", lyon, "--as", "dpo-lyon", "--id", "1",
        "--verdict", "approved",
    )  # fmt: skip
    assert "approved" in out.output

    # -- referral ----------------------------------------------------------------------------
    out = run(
        "referral", "create", "-H", lyon, "--as", "dr-martin", "--patient", PID,
        "--to", "aphp-paris", "--date", "2099-01-01", "--categories", "labs,imaging",
        "--letter", str(form), "--rids", "r-1", "--evidence-file", str(form),
    )  # fmt: skip
    assert "referral 1 to aphp-paris" in out.output
    # The letter's hash on the chain is salted: hashing a guessed letter does not find it.
    with Node.open(Path(lyon)) as node:
        posted = bytes(node.engine.query("referral/status", {"id": 1})["procedure_hash"])
    assert posted != hashlib.sha256(form.read_bytes()).digest()
    kept = NoteStore(Path(lyon)).get(posted)
    assert (
        kept is not None
        and kept["letter_sha256"] == hashlib.sha256(b"signed consent form").hexdigest()
    )
    assert "must deliver by" in run("referral", "admit", "-H", paris, "--id", "1").output
    assert "1 records delivered" in run("referral", "deliver", "-H", lyon, "--id", "1").output
    commitment = hashlib.sha256(b"r-1").hexdigest()
    run("referral", "confirm", "-H", paris, "--id", "1", "--commitments", commitment)
    status = run("referral", "status", "-H", paris, "--id", "1").output
    assert "confirmed" in status and "obligation fulfilled" in status

    # -- study -------------------------------------------------------------------------------
    protocol = tmp_path / "protocol.pdf"
    protocol.write_bytes(b"protocol v1")
    run(
        "study", "register", "-H", paris, "--as", "res-paris", "--id", "diab",
        "--protocol", str(protocol), "--ethics", "CPP-2026-42", "--categories", "labs",
        "--min-cohort", "2", "--title", "Diabetes outcomes",
    )  # fmt: skip
    # The sponsor shows its study's title; the chain, and so every other member, has its hash.
    assert "Diabetes outcomes" in run("study", "show", "-H", paris, "--id", "diab").output
    assert "Diabetes" not in run("study", "show", "-H", lyon, "--id", "diab").output
    run("study", "enrol", "-H", lyon, "--id", "diab", "--patient", PID,
        "--patient-key", str(patient_key))  # fmt: skip
    pids = tmp_path / "pids.txt"
    pids.write_text(PID + "\n")
    dataset = tmp_path / "dataset.parquet"
    dataset.write_bytes(b"rows")
    out = run(
        "study", "release", "-H", lyon, "--id", "diab", "--dataset", str(dataset),
        "--patients", str(pids), code=1,
    )  # fmt: skip
    assert "cohort of 1 is under" in out.output
    run("study", "withdraw", "-H", lyon, "--id", "diab", "--patient", PID,
        "--evidence-file", str(form), "--practitioner", "dr-martin")  # fmt: skip
    assert "enrolled 0" in run("study", "show", "-H", paris, "--id", "diab").output

    # -- policy ------------------------------------------------------------------------------
    cedar = tmp_path / "no-imaging.cedar"
    cedar.write_text('forbid(principal, action, resource == Category::"imaging");\n')
    assert (
        "proposal 2 created"
        in run("policy", "set", "-H", lyon, "--id", "x", "--file", str(cedar)).output
    )
    assert "executed" in run("member", "vote", "-H", paris, "2").output
    out = run("policy", "show", "-H", paris)
    assert "policy x" in out.output and "emergency_max_ms" in out.output
    broken = tmp_path / "broken.cedar"
    broken.write_text("forbid(")
    assert (
        "does not parse"
        in run("policy", "set", "-H", lyon, "--id", "y", "--file", str(broken), code=1).output
    )


def test_a_self_grant_contested_by_another_custodians_dpo_then_confirmed_by_the_patient(
    tmp_path: Path,
) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "2")
    lyon = str(net / "hospitals" / "chu-lyon")
    paris = str(net / "hospitals" / "aphp-paris")
    run("practitioner", "add", "-H", lyon, "--id", "dr-martin", "--roles", "physician")
    run("practitioner", "add", "-H", lyon, "--id", "nurse-lyon", "--roles", "nurse")
    run("practitioner", "add", "-H", paris, "--id", "dpo-paris", "--roles", "dpo")
    for home, rid in ((lyon, "r-lyon"), (paris, "r-paris")):  # both treat the patient
        with Node.open(Path(home)) as node:
            meta_ct = b"\x01" * META_CT_SIZES[0]
            entry = {"rid": rid, "pid": PID, "commitment": b"\x01" * 32, "meta_ct": meta_ct}
            node.wallet.send("records.register", {"entries": [entry]})
    form = tmp_path / "form.pdf"
    form.write_bytes(b"the patient asks Lyon to fetch their file from Paris")
    patient_key = tmp_path / "patient.key"
    key = SigningKey.generate()
    key.save(patient_key)
    bind_young_custody(lyon, paris)
    run("consent", "bind-key", "-H", lyon, "--patient", PID, "--key", key.public_key.hex(),
        "--evidence-file", str(form))  # fmt: skip

    # The nurse who took the request is named; Lyon grants itself Paris's records.
    out = run(
        "consent", "grant", "-H", lyon, "--patient", PID, "--grantee", "org:chu-lyon",
        "--categories", "labs", "--purpose", "treatment", "--custodian", "aphp-paris",
        "--evidence-file", str(form), "--practitioner", "nurse-lyon",
    )  # fmt: skip
    assert "consent 1 granted to org:chu-lyon" in out.output
    ask = ("authorize", "-H", lyon, "--actor", "chu-lyon/dr-martin", "--patient", PID,
           "--purpose", "treatment", "--custodian", "aphp-paris")  # fmt: skip
    assert "ALLOWED basis consent:1" in run(*ask).output

    note = tmp_path / "note.txt"
    note.write_text("we never saw a request from this patient")
    out = run("consent", "contest", "-H", paris, "--as", "dpo-paris", "--id", "1",
              "--reason", "patient-denies", "--note", str(note))  # fmt: skip
    assert "suspended" in out.output
    assert "DENIED consent contested" in run(*ask, code=3).output
    run("consent", "confirm", "-H", lyon, "--id", "1", "--patient-key", str(patient_key))
    assert "ALLOWED basis consent:1" in run(*ask).output

    # Irreversible acts in the patient's name wait 72 h; Paris's DPO (a custodian since before)
    # cancels a rebinding of the key and an erasure request Lyon filed.
    other = SigningKey.generate()
    out = run("consent", "bind-key", "-H", lyon, "--patient", PID, "--key",
              other.public_key.hex(), "--evidence-file", str(form))  # fmt: skip
    assert "key rebinding pending" in out.output
    out = run("consent", "cancel", "-H", paris, "--patient", PID, "--what", "key",
              "--as", "dpo-paris")  # fmt: skip
    assert "key rebinding cancelled" in out.output
    run("erase", "-H", lyon, "--patient", PID, "--evidence", str(form),
        "--practitioner", "nurse-lyon")  # fmt: skip
    out = run("consent", "cancel", "-H", paris, "--patient", PID, "--what", "erasure",
              "--as", "dpo-paris")  # fmt: skip
    assert "erasure request 1 cancelled" in out.output
