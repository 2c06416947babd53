"""Ingestion end to end: files into the vault and onto the chain, all or nothing; erasure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.indexing import check_commitment, open_meta
from medledger.node.ingest import Ingestor
from medledger.vault import Vault
from medledger.vault.errors import PatientErased


@pytest.fixture
def hospital(consortium: list[Path]):
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault, Ingestor(node, vault)


def _bundles(org: str) -> list[dict]:  # type: ignore[type-arg]
    return generate(4, [org, "aphp-paris"], seed=3)[org]


def test_a_bundle_round_trips_and_its_index_entries_open_for_the_custodian(hospital) -> None:
    node, vault, ingestor = hospital
    bundle = _bundles("chu-lyon")[0]
    result = ingestor.ingest_bytes(orjson.dumps(bundle), "p1.json")
    assert result.rejections == []
    assert result.accepted == len(bundle["entry"])
    (pid,) = result.pids
    entries = node.engine.query("records/of_patient", {"pid": pid})
    assert sorted(e["rid"] for e in entries) == sorted(result.rids)
    key = vault.metadata_key(pid)
    for entry in entries:
        stored = vault.get(entry["rid"])
        # The custodian can prove the stored bytes are what the chain committed to.
        assert check_commitment(vault.salt(pid, entry["rid"], 1), stored, entry["commitment"])
        meta = open_meta(key, entry["rid"], 1, entry["meta_ct"])
        resource = json.loads(stored)
        assert meta["type"] == resource["resourceType"]
        assert entry["custodian"] == "chu-lyon"
    # Semantically equal to what was sent, except for the ids the vault assigned.
    originals = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {json.loads(vault.get(r))["resourceType"] for r in result.rids} == originals


def test_no_identifier_or_clinical_value_reaches_the_chain(hospital) -> None:
    node, vault, ingestor = hospital
    bundle = _bundles("chu-lyon")[0]
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    secrets = [
        patient["identifier"][0]["value"],
        patient["name"][0]["family"],
        patient["birthDate"],
    ]
    ingestor.ingest_bytes(orjson.dumps(bundle), "p1.json")
    db = node.config.ledger_db
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    for value in secrets:
        assert value.encode() not in raw, value


def test_a_bundle_is_all_or_nothing_in_the_vault_and_on_the_chain(hospital) -> None:
    node, vault, ingestor = hospital
    bundle = _bundles("chu-lyon")[0]
    bundle["entry"][-1]["resource"]["status"] = 12  # wrong type in the last entry
    result = ingestor.ingest_bytes(orjson.dumps(bundle), "bad.json")
    assert result.accepted == 0
    assert len(result.rejections) >= 1
    assert "status" in result.rejections[0].where
    assert vault.patients() == []
    assert node.engine.height() == 0


def test_a_chain_refusal_rolls_the_vault_back(hospital, monkeypatch) -> None:
    node, vault, ingestor = hospital
    from medledger.node.wallet import TxRejected

    def refuse(kind, body, **kw):
        raise TxRejected(kind, 9, "refused for the test", "check")

    monkeypatch.setattr(node.wallet, "send", refuse)
    result = ingestor.ingest_bytes(orjson.dumps(_bundles("chu-lyon")[0]), "p.json")
    assert result.accepted == 0
    assert "refused by the ledger" in result.rejections[0].reason
    assert vault.patients() == []


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("broken.json", b'{"resourceType": "Patient", "birthDate": 12', "broken JSON"),
        (
            "ref.json",
            orjson.dumps(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "Patient/nobody"},
                }
            ),
            "does not match",
        ),
        ("unknown.json", orjson.dumps({"resourceType": "Patient", "colour": "blue"}), "colour"),
        ("noid.json", orjson.dumps({"resourceType": "Patient", "gender": "female"}), "identifier"),
        (
            "adt.hl7",
            b"MSH|^~\\&|A|B|C|D|202401011200||ADT^A01|1|P|2.5\rEVN|A01|202401011200\r",
            "PID",
        ),
    ],
)
def test_bad_inputs_are_rejected_naming_file_and_field(
    hospital, name: str, content: bytes, words: str
) -> None:
    _, vault, ingestor = hospital
    result = ingestor.ingest_bytes(content, name)
    assert result.accepted == 0
    text = " ".join(f"{r.where} {r.reason}" for r in result.rejections)
    assert words in text, text
    assert all(r.source == name for r in result.rejections)
    assert vault.patients() == []


def test_shredding_leaves_nothing_readable(hospital) -> None:
    from medledger.node.shredding import shred

    node, vault, ingestor = hospital
    bundle = _bundles("chu-lyon")[0]
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    family = patient["name"][0]["family"]
    result = ingestor.ingest_bytes(orjson.dumps(bundle), "p1.json")
    (pid,) = result.pids

    done = shred(node, vault, pid)
    assert done.records == len(bundle["entry"]) and done.purged_rows == len(bundle["entry"])

    vault_path = node.config.vault_config().path
    raw = b"".join(p.read_bytes() for p in vault_path.parent.glob(vault_path.name + "*"))
    assert family.encode() not in raw
    with pytest.raises(PatientErased):
        vault.get(result.rids[0])
    with pytest.raises(PatientErased):  # so no remaining chain entry can be opened
        vault.metadata_key(pid)
    assert node.engine.query("records/shredded", {"holder": "chu-lyon", "pid": pid})
    entries = node.engine.query("records/of_patient", {"pid": pid})
    assert entries and all(e["shredded"] for e in entries)


def test_erase_at_the_custodian_is_refused_under_legal_retention(hospital, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medledger.cli import app

    node, vault, ingestor = hospital
    bundle = _bundles("chu-lyon")[0]
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    ins = patient["identifier"][0]["value"]
    result = ingestor.ingest_bytes(orjson.dumps(bundle), "p1.json")
    dpo = {"practitioner": "dpo", "key": b"\x07" * 32, "roles": ["dpo"]}
    node.wallet.send("identity.register", dpo)  # who takes the patient's request
    home = node.config.home
    node.close()
    vault.close()
    letter = tmp_path / "request.pdf"
    letter.write_bytes(b"signed erasure request of the patient")

    no_request = CliRunner().invoke(app, ["erase", "-H", str(home), "--patient", ins])
    assert no_request.exit_code == 1 and "--evidence" in no_request.output
    out = CliRunner().invoke(
        app, ["erase", "-H", str(home), "--patient", ins, "--evidence", str(letter)]
    )
    assert out.exit_code == 1 and "--practitioner" in out.output
    out = CliRunner().invoke(
        app,
        ["erase", "-H", str(home), "--patient", ins, "--evidence", str(letter)]
        + ["--practitioner", "dpo"],
    )
    # Filed on the patient's behalf: it waits 72 h (on_behalf_delay_ms), cancellable.
    assert out.exit_code == 0 and "erasure request 1: pending until" in out.output
    with Node.open(home) as later:  # three days on, by the chain's clock
        later.engine.clock = lambda: time.time() + 3 * 24 * 3600 + 60  # type: ignore[attr-defined]
        later.wallet.send(
            "identity.register", {**dpo, "practitioner": "dpo-2", "key": b"\x08" * 32}
        )
    out = CliRunner().invoke(app, ["erase", "-H", str(home), "--patient", ins])
    assert out.exit_code == 1
    assert "refused here: care records under legal retention until 20" in out.output
    with Vault.open(Node.open(home).config.vault_config()) as again:
        assert json.loads(again.get(result.rids[0]))  # nothing was shredded


def test_an_hl7_update_amends_the_patient_in_one_tx(hospital) -> None:
    node, vault, ingestor = hospital
    data = Path(__file__).resolve().parents[1] / "data" / "hl7"
    first = ingestor.ingest_bytes((data / "adt_a01.hl7").read_bytes(), "adt_a01.hl7")
    assert not first.rejections
    patient = next(r for r in first.rids if vault.info(r).resource_type == "Patient")
    height = node.engine.height()
    update = ingestor.ingest_bytes((data / "adt_a08.hl7").read_bytes(), "adt_a08.hl7")
    assert not update.rejections
    assert node.engine.height() == height + 1  # one tx, one block for the whole message
    versions = node.engine.query("records/versions", {"rid": patient})
    # The same patient (same INS): a new version of the Patient, not a new record.
    assert patient in update.rids
    assert [v["version"] for v in versions] == [1, 2]
    assert vault.versions(patient) == [1, 2]


def test_hl7_messages_are_mapped_with_the_hospitals_code_tables(consortium: list[Path]) -> None:
    home = consortium[0]
    config = json.loads((home / "config.json").read_text())
    config["hl7"] = {"code_maps": {"PID-8": {"1": "male", "2": "female"}}}
    (home / "config.json").write_text(json.dumps(config))
    samples = Path(__file__).resolve().parents[1] / "data" / "hl7" / "thirdparty"
    with Node.open(home) as node, Vault.open(node.config.vault_config()) as vault:
        ingestor = Ingestor(node, vault)
        local_sex = ingestor.ingest_path(samples / "adt_a04_local_sex.hl7")  # PID-8 `1`
        assert local_sex.rejections == [] and local_sex.accepted == 2
        admission = ingestor.ingest_path(samples / "cerner_adt_a01_v23.hl7")
        assert admission.rejections == []
        stored = sorted(vault.info(r).resource_type for r in admission.rids)
        assert stored == ["AllergyIntolerance"] * 2 + ["Condition"] * 2 + ["Encounter", "Patient"]
