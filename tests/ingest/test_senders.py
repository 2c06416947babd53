"""What comes in a second time, or refers to what came before, finds it: senders' ids,
identifiers, one Patient per person, idempotent re-sends, supporting resources.

The files are shaped like what other systems send: an International Patient Summary
(document Bundle with its Practitioner, Organization and Medication), standalone resources
that name the patient by the sender's id, by a conditional reference or by identifier,
transactions with PUT and If-None-Exist, the same file sent again.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.node import Node
from medledger.node.ingest import Ingestor, UnitResult
from medledger.vault import Vault
from tests.support.documents import (
    INS,
    INS_SYSTEM,
    LAB,
    MRN_SYSTEM,
    ips,
    observation,
    patient,
    send,
    urn,
)


@pytest.fixture
def hospital(consortium: list[Path]):
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault, Ingestor(node, vault)


def _ok(result: UnitResult) -> UnitResult:
    assert result.rejections == [], result.rejections
    return result


def _chain(node: Node, pid: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = node.engine.query("records/of_patient", {"pid": pid})
    return entries


def _types(vault: Vault, pid: str) -> list[str]:
    return sorted({i.resource_type for i in vault.records_of(pid)})


def test_the_same_document_sent_twice_is_unchanged_the_second_time(hospital) -> None:
    node, vault, ingestor = hospital
    doc = ips("a", [(INS_SYSTEM, INS)])

    first = _ok(send(ingestor, doc, "ips-a.json"))
    second = _ok(send(ingestor, copy.deepcopy(doc), "ips-a.json"))

    assert first.accepted == second.accepted == 9  # 8 entries and the document itself
    assert (first.unchanged, first.updated) == (0, 0)
    assert (second.unchanged, second.updated) == (9, 0)
    assert sorted(second.rids) == sorted(first.rids)
    (pid,) = first.pids
    assert len(vault.records_of(pid)) == 6  # Patient, Composition, 3 clinical, the document
    assert len(_chain(node, pid)) == 6
    assert _types(vault, pid) == [
        "AllergyIntolerance",
        "Bundle",
        "Composition",
        "Condition",
        "MedicationStatement",
        "Patient",
    ]


def test_the_supporting_resources_are_the_hospitals_own_and_references_reach_them(
    hospital,
) -> None:
    node, vault, ingestor = hospital
    result = _ok(send(ingestor, ips("a", [(INS_SYSTEM, INS)]), "ips-a.json"))

    own = {i.resource_type: i.rid for i in vault.records_of(vault.hospital_pid)}
    assert sorted(own) == ["Medication", "Organization", "Practitioner"]
    assert vault.hospital_pid not in result.pids  # not a patient: nothing on the chain
    (pid,) = result.pids
    assert {e["rid"] for e in _chain(node, pid)}.isdisjoint(own.values())
    statement = next(
        orjson.loads(vault.get(r))
        for r in result.rids
        if vault.info(r).resource_type == "MedicationStatement"
    )
    assert statement["medicationReference"] == {"reference": f"Medication/{own['Medication']}"}
    vault.erase(pid, purge=True)  # never erased with a patient
    assert orjson.loads(vault.get(own["Practitioner"]))["name"][0]["family"] == "Ardent"


def test_ten_documents_carrying_one_practitioner_store_it_once(hospital) -> None:
    _, vault, ingestor = hospital
    for n in range(10):  # ten patients, one practitioner
        doc = ips(f"d{n}", [(MRN_SYSTEM, f"MRN{n}")], patient_id=f"pat-{n}")
        _ok(send(ingestor, doc, f"ips-{n}.json"))
    # The same practitioner from another sender, known only by their RPPS number.
    other = ips("x", [(MRN_SYSTEM, "MRN-x")], patient_id="pat-x")
    _ok(send(ingestor, other, "other.json", sender="https://gp.example.org/fhir"))

    practitioners = [
        i for i in vault.records_of(vault.hospital_pid) if i.resource_type == "Practitioner"
    ]
    assert len(practitioners) == 1 and practitioners[0].version == 1


def test_a_later_document_points_at_the_practitioner_stored_with_an_earlier_one(
    hospital,
) -> None:
    """Its references are repointed at the stored rid; a text that quotes one is left as
    written (only `reference` members change)."""
    _, vault, ingestor = hospital
    _ok(send(ingestor, ips("a", [(MRN_SYSTEM, "MRN-a")], patient_id="pat-a"), "ips-a.json"))
    (stored,) = [
        i.rid for i in vault.records_of(vault.hospital_pid) if i.resource_type == "Practitioner"
    ]
    doc = ips("b", [(MRN_SYSTEM, "MRN-b")], patient_id="pat-b")
    condition = next(e["resource"] for e in doc["entry"] if e["resource"]["id"] == "cond-b")
    quoted = "asserted by Practitioner/pract-1, see " + condition["asserter"]["reference"]
    condition["note"] = [{"text": quoted}]

    result = _ok(send(ingestor, doc, "ips-b.json"))

    by_type = {vault.info(r).resource_type: orjson.loads(vault.get(r)) for r in result.rids}
    assert by_type["Condition"]["asserter"] == {"reference": f"Practitioner/{stored}"}
    assert by_type["Composition"]["author"] == [{"reference": f"Practitioner/{stored}"}]
    assert by_type["Condition"]["note"] == [{"text": quoted}]


def test_a_changed_observation_sent_again_is_a_new_version_with_its_history(hospital) -> None:
    node, vault, ingestor = hospital
    (pid,) = _ok(send(ingestor, ips("a", [(INS_SYSTEM, INS)]), "ips-a.json")).pids
    obs = observation("hba1c-1", {"reference": "Patient/pat-1"}, value=7.1)
    first = _ok(send(ingestor, obs, "hba1c.json"))

    changed = _ok(send(ingestor, observation("hba1c-1", obs["subject"], 6.4), "hba1c.json"))

    assert (changed.accepted, changed.updated, changed.unchanged) == (1, 1, 0)
    (rid,) = first.rids
    assert changed.rids == [rid]
    assert vault.versions(rid) == [1, 2]
    assert orjson.loads(vault.get(rid, 1))["valueQuantity"]["value"] == 7.1
    assert orjson.loads(vault.get(rid))["valueQuantity"]["value"] == 6.4
    assert orjson.loads(vault.get(rid))["id"] == rid
    [entry] = [e for e in _chain(node, pid) if e["rid"] == rid]
    assert entry["version"] == 2  # the new version is registered as one
    assert len(node.engine.query("records/versions", {"rid": rid})) == 2


def test_three_documents_about_one_person_make_onepatient(hospital) -> None:
    """One with the INS, one with the INS and the hospital's number, one with that number
    only, from three senders: one Patient, one pid."""
    _, vault, ingestor = hospital
    doc_b = ips("b", [(INS_SYSTEM, INS), (MRN_SYSTEM, "MRN-42")], patient_id="P0042")
    doc_c = ips("c", [(MRN_SYSTEM, "MRN-42")], patient_id="X9")
    a = _ok(send(ingestor, ips("a", [(INS_SYSTEM, INS)]), "a.json", sender="urn:gp"))
    b = _ok(send(ingestor, doc_b, "b.json", sender="urn:lab"))
    c = _ok(send(ingestor, doc_c, "c.json", sender="urn:imaging"))

    assert a.pids == b.pids == c.pids
    (pid,) = a.pids
    [the_patient] = {i.rid for i in vault.records_of(pid) if i.resource_type == "Patient"}
    # b added the MRN; c, which says less, is a version too (history keeps the others)
    assert vault.versions(the_patient) == [1, 2, 3]
    assert (b.updated, c.updated) == (1, 1)
    assert len([i for i in vault.records_of(pid) if i.resource_type == "Condition"]) == 3


def test_a_patient_whose_identifiers_name_two_stored_patients_is_refused(hospital) -> None:
    _, vault, ingestor = hospital
    _ok(send(ingestor, patient("p1", [(INS_SYSTEM, INS)]), "one.json"))
    _ok(send(ingestor, patient("p2", [(MRN_SYSTEM, "MRN-7")], family="DUPONT"), "two.json"))
    both = patient("p3", [(INS_SYSTEM, INS), (MRN_SYSTEM, "MRN-7")])

    result = send(ingestor, both, "both.json")

    [refusal] = result.rejections
    assert refusal.where == "Patient, field identifier"
    assert "match 2 different patients stored here; not merged" in refusal.reason
    assert len(vault.patients()) == 2


def test_a_standalone_resource_attaches_to_the_stored_patient_three_ways(hospital) -> None:
    _, vault, ingestor = hospital
    (pid,) = _ok(send(ingestor, ips("a", [(INS_SYSTEM, INS)]), "ips-a.json")).pids
    [stored] = [i.rid for i in vault.records_of(pid) if i.resource_type == "Patient"]
    subjects = {
        "by-sender-id": {"reference": "Patient/pat-1"},
        "conditional": {"reference": f"Patient?identifier={INS_SYSTEM}|{INS}"},
        "absolute": {"reference": f"{LAB}/Patient/pat-1"},
    }
    sender = {"by-sender-id": LAB, "conditional": "urn:other", "absolute": "urn:other"}
    for name, subject in subjects.items():
        result = _ok(send(ingestor, observation(name, subject), f"{name}.json", sender[name]))
        assert result.pids == {pid}, name
        (rid,) = result.rids
        assert orjson.loads(vault.get(rid))["subject"] == {"reference": f"Patient/{stored}"}
    # A logical reference (subject.identifier) reaches the resolver in this form:
    assert ingestor._resolve(f"Patient?identifier={INS_SYSTEM}|{INS}") == f"Patient/{stored}"
    assert ingestor._resolve("Patient?name=LEROY") is None  # other searches: not resolved
    assert ingestor._resolve("Patient/pat-1", "urn:other") is None  # another sender's id space


def test_a_transaction_put_and_if_none_exist_work_for_any_type(hospital) -> None:
    _, vault, ingestor = hospital
    _ok(send(ingestor, ips("a", [(INS_SYSTEM, INS)]), "ips-a.json"))
    obs = observation("hba1c-1", {"reference": "Patient/pat-1"})
    obs["identifier"] = [{"system": "urn:lab:order", "value": "A-77"}]
    (rid,) = _ok(send(ingestor, obs, "hba1c.json")).rids

    def transaction(request: dict[str, Any], value: float) -> dict[str, Any]:
        resource = observation("ignored", {"reference": "Patient/pat-1"}, value)
        resource.pop("id")
        resource["identifier"] = obs["identifier"]
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"fullUrl": urn(), "resource": resource, "request": request}],
        }

    put = transaction({"method": "PUT", "url": "Observation/hba1c-1"}, 5.9)
    updated = _ok(send(ingestor, put, "put.json"))
    assert (updated.rids, updated.updated) == ([rid], 1)
    by_rid = transaction({"method": "PUT", "url": f"Observation/{rid}"}, 5.8)
    assert _ok(send(ingestor, by_rid, "put2.json")).rids == [rid]
    assert vault.versions(rid) == [1, 2, 3]

    conditional = {
        "method": "POST",
        "url": "Observation",
        "ifNoneExist": "identifier=urn:lab:order|A-77",
    }
    kept = _ok(send(ingestor, transaction(conditional, 9.9), "post.json"))
    assert (kept.rids, kept.unchanged) == ([rid], 1)
    assert vault.versions(rid) == [1, 2, 3]  # it exists: nothing created, nothing changed

    refused = send(
        ingestor,
        transaction({"method": "POST", "url": "Observation", "ifNoneExist": "code=4548-4"}, 1),
        "post2.json",
    )
    assert "conditional create is taken only by identifier" in refused.rejections[0].reason


def test_a_clinical_resource_without_a_patient_is_refused_saying_why(hospital) -> None:
    _, _, ingestor = hospital
    orphan = observation("o-1", {"reference": "Group/ward-3"})
    orphan.pop("subject")

    result = send(ingestor, orphan, "orphan.json")

    [refusal] = result.rejections
    assert "Observation" in refusal.where
    assert "no patient named in subject" in refusal.reason
    assert "must name its Patient" in refusal.reason


def test_a_retry_after_a_pending_registration_stores_nothing_twice(
    hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, vault, ingestor = hospital
    doc = ips("a", [(INS_SYSTEM, INS)])
    wallet_send = node.wallet.send

    def impatient(kind: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return wallet_send(kind, body, **(kwargs | {"timeout": 0.5}))

    def no_block_yet(tx_id: bytes, timeout: float = 30.0) -> object:
        raise TimeoutError("no block yet")

    monkeypatch.setattr(node.wallet, "send", impatient)
    monkeypatch.setattr(node.engine, "wait_for_commit", no_block_yet)
    pending = send(ingestor, doc, "ips-a.json")
    assert "registration pending" in pending.rejections[0].reason
    again = send(ingestor, copy.deepcopy(doc), "ips-a.json")  # still undecided: refused
    assert "still waiting for its registration" in again.rejections[0].reason
    monkeypatch.undo()  # the network recovers; the operator sends the file again

    retried = _ok(send(ingestor, copy.deepcopy(doc), "ips-a.json"))

    assert retried.unchanged == retried.accepted == 9
    assert vault.provisional() == []  # the earlier unit was confirmed on the way
    (pid,) = retried.pids
    assert len(vault.records_of(pid)) == len(_chain(node, pid)) == 6


def test_a_resource_sent_again_for_another_patient_is_refused(hospital) -> None:
    _, vault, ingestor = hospital
    _ok(send(ingestor, patient("p1", [(INS_SYSTEM, INS)]), "one.json"))
    _ok(send(ingestor, patient("p2", [(MRN_SYSTEM, "MRN-7")], family="DUPONT"), "two.json"))
    (rid,) = _ok(send(ingestor, observation("o-1", {"reference": "Patient/p1"}), "o.json")).rids

    moved = send(ingestor, observation("o-1", {"reference": "Patient/p2"}), "o.json")

    [refusal] = moved.rejections
    assert "a record never moves between patients" in refusal.reason
    assert vault.versions(rid) == [1]


def test_a_file_for_an_erased_patient_is_refused_and_the_batch_goes_on(hospital) -> None:
    _, vault, ingestor = hospital
    (pid,) = _ok(send(ingestor, patient("p1", [(INS_SYSTEM, INS)]), "one.json")).pids
    vault.erase(pid)

    late = send(ingestor, patient("p1", [(INS_SYSTEM, INS)]), "late.json")

    assert "the patient was erased here" in late.rejections[0].reason
    _ok(send(ingestor, patient("p2", [(MRN_SYSTEM, "MRN-7")]), "other.json"))


def test_the_parsers_warnings_are_reported_and_its_reason_for_no_patient_passed_on(
    hospital,
) -> None:
    """The parser keeps an unresolvable reference as sent with a warning (interfaces.md, 1);
    when that reference was the patient link, its words are the refusal's reason."""
    import dataclasses

    from medledger.interop.fhir import parse_fhir

    _, _, ingestor = hospital
    _ok(send(ingestor, patient("p1", [(INS_SYSTEM, INS)]), "one.json"))
    obs = observation("o-1", {"reference": "Patient/p1"})
    obs["performer"] = [{"reference": "Practitioner/unknown"}]
    data = orjson.dumps(obs)
    unresolved = "field performer[0]: reference 'Practitioner/x' matches nothing here; kept as sent"
    resolve = lambda ref: ingestor._resolve(ref, LAB)  # noqa: E731
    obs.pop("performer")
    [parsed] = parse_fhir(orjson.dumps(obs), "o.json", resolve=resolve)
    warned = dataclasses.replace(parsed, json_bytes=data, warnings=(unresolved,))

    result = _ok(ingestor.ingest_bytes(data, "o.json", parsed=[warned], sender=LAB))

    assert [(w.where, w.reason) for w in result.warnings] == [("Observation", unresolved)]
    no_link = "field subject: reference 'Patient/zz' matches nothing here nor in the vault"
    orphan = dataclasses.replace(parsed, patient_ref=None, warnings=(no_link,))
    refused = ingestor.ingest_bytes(data, "o.json", parsed=[orphan], sender=LAB)
    assert [r.reason for r in refused.rejections] == [no_link]


def test_a_later_resource_refers_to_a_stored_practitioner_by_id_or_identifier(hospital) -> None:
    _, vault, ingestor = hospital
    _ok(send(ingestor, ips("a", [(INS_SYSTEM, INS)]), "ips-a.json"))
    [practitioner] = [
        i.rid for i in vault.records_of(vault.hospital_pid) if i.resource_type == "Practitioner"
    ]
    for n, performer in enumerate(
        ["Practitioner/pract-1", "Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1|10003456789"]
    ):
        obs = observation(f"o-{n}", {"reference": "Patient/pat-1"})
        obs["performer"] = [{"reference": performer}]
        (rid,) = _ok(send(ingestor, obs, f"o-{n}.json")).rids
        stored = orjson.loads(vault.get(rid))
        assert stored["performer"] == [{"reference": f"Practitioner/{practitioner}"}]


def test_a_bulk_file_sent_again_is_unchanged_across_its_chunks(
    hospital, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NDJSON is stored in chunks (one chain tx each); a later chunk's references to a
    Patient of an earlier chunk follow it to the stored record."""
    from medledger.node import ingest

    _, vault, ingestor = hospital
    monkeypatch.setattr(ingest, "CHUNK", 2)
    lines = [
        patient("p1", [(INS_SYSTEM, INS)]),
        observation("o-1", {"reference": "Patient/p1"}),
        observation("o-2", {"reference": "Patient/p1"}, 6.9),
    ]
    data = b"\n".join(orjson.dumps(r) for r in lines)

    first = _ok(ingestor.ingest_bytes(data, "export.ndjson", sender=LAB))
    again = _ok(ingestor.ingest_bytes(data, "export.ndjson", sender=LAB))

    assert (first.accepted, again.unchanged) == (3, 3)
    (pid,) = first.pids
    assert len(vault.records_of(pid)) == 3
