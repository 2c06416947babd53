"""FHIR input: what is accepted, how ids and references are rewritten, and how bad input is
reported (file, entry, field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.interop import (
    InputError,
    ParsedResource,
    keep_ids,
    namespaced_ids,
    parse_fhir,
    sequential_ids,
)


def parse(path: Path, **kwargs: object) -> list[ParsedResource]:
    kwargs.setdefault("id_factory", sequential_ids())
    return parse_fhir(path.read_bytes(), path.name, **kwargs)  # type: ignore[arg-type]


def error_of(data: bytes, source: str = "input.json", **kwargs: object) -> InputError:
    with pytest.raises(InputError) as caught:
        parse_fhir(data, source, id_factory=sequential_ids(), **kwargs)  # type: ignore[arg-type]
    return caught.value


def loads(parsed: ParsedResource) -> dict[str, Any]:
    return orjson.loads(parsed.json_bytes)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- single resources, versions


def test_a_single_r4_resource_keeps_its_exact_bytes(fhir_dir: Path) -> None:
    data = (fhir_dir / "patient_r4.json").read_bytes()
    [patient] = parse_fhir(data, "patient_r4.json", id_factory=keep_ids)
    assert patient.resource_type == "Patient"
    assert patient.id == "pat-4711"
    assert patient.patient_ref == "pat-4711"
    assert patient.fhir_version == "R4"
    assert patient.entry_index is None
    assert patient.json_bytes == data  # not re-serialised through the models


def test_a_new_id_is_written_into_the_resource(fhir_dir: Path) -> None:
    [patient] = parse(fhir_dir / "patient_r4.json")
    assert patient.id == "r1"
    assert loads(patient)["id"] == "r1"
    assert patient.source_ref == "Patient/pat-4711"


def test_r5_is_detected_from_r5_only_fields(fhir_dir: Path) -> None:
    known = {"Patient/pat-4711": "Patient/p-stored"}
    [encounter] = parse(fhir_dir / "encounter_r5.json", resolve=known.get)
    assert encounter.fhir_version == "R5"
    assert encounter.patient_ref == "p-stored"
    assert loads(encounter)["subject"] == {"reference": "Patient/p-stored"}
    [medication] = parse(fhir_dir / "medicationrequest_r5.json", resolve=known.get)
    assert medication.fhir_version == "R5"


def test_an_explicit_version_is_obeyed(fhir_dir: Path) -> None:
    data = (fhir_dir / "encounter_r5.json").read_bytes()
    error = error_of(data, "encounter_r5.json", fhir_version="R4", resolve=lambda r: "Patient/x")
    fields = {p.field for p in error.problems}
    assert "actualPeriod" in fields  # an R5 field is unknown to R4
    assert all(p.resource_type == "Encounter" for p in error.problems)


def test_meta_profile_names_the_version() -> None:
    resource = {
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/5.0/StructureDefinition/vitalsigns"]},
        "status": "final",
        "code": {"text": "heart rate"},
        "subject": {"reference": "Patient/p1"},
    }
    [parsed] = parse_fhir(orjson.dumps(resource), "o.json", resolve=lambda r: r)
    assert parsed.fhir_version == "R5"


def test_an_undecided_resource_that_only_r5_accepts_is_read_as_r5() -> None:
    # Encounter.status "completed" exists in R5 only, and `class` as an array too.
    resource = {
        "resourceType": "Encounter",
        "status": "completed",
        "class": [{"text": "ambulatory"}],
        "subject": {"reference": "Patient/p1"},
    }
    [parsed] = parse_fhir(orjson.dumps(resource), "e.json", resolve=lambda r: r)
    assert parsed.fhir_version == "R5"


# ---------------------------------------------------------------- bundles


def test_transaction_bundle_with_urn_uuid_references(fhir_dir: Path) -> None:
    parsed = parse(fhir_dir / "bundle_transaction.json")
    assert [(p.resource_type, p.id, p.entry_index) for p in parsed] == [
        ("Patient", "r1", 0),
        ("Encounter", "r2", 1),
        ("Observation", "r3", 2),
        ("Observation", "r4", 3),
        ("DiagnosticReport", "r5", 4),
    ]
    assert {p.patient_ref for p in parsed} == {"r1"}
    report = loads(parsed[4])
    assert report["result"] == [{"reference": "Observation/r3"}, {"reference": "Observation/r4"}]
    assert report["id"] == "r5"
    assert loads(parsed[2])["encounter"] == {"reference": "Encounter/r2"}
    assert all(b"urn:uuid" not in p.json_bytes for p in parsed)
    patient = parsed[0]
    assert patient.request_method == "POST"
    assert patient.if_none_exist == "identifier=urn:oid:1.2.250.1.213.1.4.10|184127510812347"
    assert patient.source_ref == "urn:uuid:6f1c2f1e-2a4b-4c53-9f0e-1d2b3c4d5e6f"


def test_batch_bundle_with_relative_absolute_and_versioned_references(fhir_dir: Path) -> None:
    parsed = parse(fhir_dir / "bundle_batch.json")
    patient, condition, medication = parsed
    assert [p.request_method for p in parsed] == ["PUT", "PUT", "PUT"]
    assert loads(condition)["subject"] == {"reference": "Patient/r1"}  # "Patient/p1"
    med = loads(medication)
    assert med["subject"] == {"reference": "Patient/r1"}  # absolute fullUrl
    assert med["reasonReference"] == [{"reference": "Condition/r2"}]  # "Condition/c1/_history/2"
    assert medication.patient_ref == "r1"


def test_collection_bundle(fhir_dir: Path) -> None:
    patient, allergy = parse(fhir_dir / "bundle_collection.json")
    assert allergy.resource_type == "AllergyIntolerance"
    assert allergy.patient_ref == patient.id  # AllergyIntolerance.patient
    assert allergy.request_method is None


def test_document_bundle(fhir_dir: Path) -> None:
    data = (fhir_dir / "bundle_document.json").read_bytes()
    composition, patient, observation, document = parse(fhir_dir / "bundle_document.json")
    assert composition.resource_type == "Composition"
    assert composition.patient_ref == patient.id
    section = loads(composition)["section"]
    assert section[0]["entry"] == [{"reference": f"Observation/{observation.id}"}]
    # The document itself, as it was sent, belongs to its Composition's patient.
    assert document.resource_type == "Bundle"
    assert document.json_bytes == data
    assert document.patient_ref == patient.id
    assert document.entry_index is None


def test_a_document_must_start_with_its_composition(fhir_dir: Path) -> None:
    bundle = orjson.loads((fhir_dir / "bundle_document.json").read_bytes())
    bundle["entry"].reverse()
    error = error_of(orjson.dumps(bundle), "doc.json")
    assert str(error) == (
        "doc.json, entry 0, field resource: "
        "the first entry of a document Bundle must be a Composition"
    )


def test_searchset_bundle_skips_the_outcome(fhir_dir: Path) -> None:
    parsed = parse(fhir_dir / "bundle_searchset.json")
    assert [p.resource_type for p in parsed] == ["Observation", "Patient", "Encounter"]
    observation = loads(parsed[0])
    assert observation["subject"] == {"reference": f"Patient/{parsed[1].id}"}
    assert observation["encounter"] == {"reference": f"Encounter/{parsed[2].id}"}


@pytest.mark.parametrize("bundle_type", ["history", "message", "transaction-response"])
def test_other_bundle_types_are_refused(bundle_type: str) -> None:
    bundle = {"resourceType": "Bundle", "type": bundle_type, "entry": []}
    error = error_of(orjson.dumps(bundle), "b.json")
    assert str(error) == (
        f"b.json, Bundle, field type: Bundle type {bundle_type!r} is not supported "
        "(supported: transaction, batch, collection, document, searchset)"
    )


def test_delete_entries_cannot_be_ingested(fhir_dir: Path) -> None:
    bundle = orjson.loads((fhir_dir / "bundle_transaction.json").read_bytes())
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Observation/123"}})
    error = error_of(orjson.dumps(bundle), "t.json")
    assert str(error) == (
        "t.json, entry 5, field request.method: "
        "DELETE entries cannot be ingested (only POST and PUT)"
    )


def test_bundle_envelope_errors_point_at_the_entry() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": 42, "resource": {"resourceType": "Patient"}}],
    }
    error = error_of(orjson.dumps(bundle), "b.json")
    assert error.entry == 0 and error.field == "fullUrl"


def test_duplicate_full_urls_are_refused(fhir_dir: Path) -> None:
    bundle = orjson.loads((fhir_dir / "bundle_collection.json").read_bytes())
    bundle["entry"][1]["fullUrl"] = bundle["entry"][0]["fullUrl"]
    error = error_of(orjson.dumps(bundle), "c.json")
    first, second = error.problems
    assert (first.entry, first.field, first.message) == (
        1,
        "fullUrl",
        "duplicate fullUrl (also entry 0)",
    )
    assert second.field == "patient.reference"
    assert "is ambiguous (several entries match)" in second.message


# ---------------------------------------------------------------- NDJSON


def test_ndjson_bulk_file(fhir_dir: Path) -> None:
    parsed = parse(fhir_dir / "bulk.ndjson")
    assert [(p.resource_type, p.entry_index) for p in parsed] == [
        ("Patient", 0),
        ("Observation", 1),
        ("Encounter", 2),
        ("Observation", 3),
    ]
    assert {p.patient_ref for p in parsed} == {parsed[0].id}
    assert loads(parsed[1])["encounter"] == {"reference": f"Encounter/{parsed[2].id}"}


def test_ndjson_keeps_each_line_when_nothing_changes(fhir_dir: Path) -> None:
    data = (fhir_dir / "bulk.ndjson").read_bytes()
    parsed = parse_fhir(data, "bulk.ndjson", id_factory=keep_ids)
    assert [p.json_bytes for p in parsed] == data.splitlines()


def test_ndjson_is_recognised_by_its_content_too(fhir_dir: Path) -> None:
    data = (fhir_dir / "bulk.ndjson").read_bytes()
    assert len(parse_fhir(data, "export.json")) == 4


def test_ndjson_errors_name_the_line(fhir_dir: Path) -> None:
    lines = (fhir_dir / "bulk.ndjson").read_bytes().splitlines()
    lines[2] = lines[2][:-1]
    error = error_of(b"\n".join(lines), "bulk.ndjson")
    assert str(error).startswith("bulk.ndjson, line 3: broken JSON at column ")
    lines = (fhir_dir / "bulk.ndjson").read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"value":81.5', b'"value":"81,5"')
    error = error_of(b"\n".join(lines), "bulk.ndjson")
    assert str(error) == (
        "bulk.ndjson, line 4 (Observation), field valueQuantity.value: "
        "expected a JSON number (decimal), got a string"
    )


# ---------------------------------------------------------------- references


def test_references_outside_the_input_go_to_the_resolver(fhir_dir: Path) -> None:
    asked: list[str] = []

    def resolve(reference: str) -> str | None:
        asked.append(reference)
        return "Patient/stored-1" if reference == "Patient/pat-4711" else None

    [encounter] = parse(fhir_dir / "encounter_r5.json", resolve=resolve)
    assert asked == ["Patient/pat-4711"]
    assert encounter.patient_ref == "stored-1"


def test_the_resolver_is_not_asked_about_references_inside_the_input(fhir_dir: Path) -> None:
    def resolve(reference: str) -> str | None:
        raise AssertionError(reference)

    assert len(parse(fhir_dir / "bundle_transaction.json", resolve=resolve)) == 5


@pytest.mark.parametrize("bar", ["|", "%7C"])
def test_a_conditional_reference_is_resolved_inside_the_bundle(fhir_dir: Path, bar: str) -> None:
    bundle = orjson.loads((fhir_dir / "bundle_transaction.json").read_bytes())
    bundle["entry"][2]["resource"]["subject"] = {
        "reference": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10{bar}184127510812347"
    }
    parsed = parse_fhir(orjson.dumps(bundle), "t.json", id_factory=sequential_ids())
    assert loads(parsed[2])["subject"] == {"reference": "Patient/r1"}


def test_an_unresolved_conditional_reference_does_not_leak_the_identifier() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|279035121518989"},
    }
    error = error_of(orjson.dumps(resource), "o.json")
    assert "279035121518989" not in str(error)
    assert str(error) == (
        "o.json, Observation, field subject.reference: conditional reference to Patient does "
        "not match any entry of the input nor a resource stored here; it names the patient, and "
        "an Observation cannot be stored without its patient"
    )


def test_contained_references_are_left_alone() -> None:
    resource = {
        "resourceType": "MedicationRequest",
        "contained": [{"resourceType": "Medication", "id": "med", "code": {"text": "metformin"}}],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#med"},
        "subject": {"reference": "Patient/1"},
    }
    [parsed] = parse_fhir(orjson.dumps(resource), "m.json", resolve=lambda r: "Patient/9")
    assert loads(parsed)["medicationReference"] == {"reference": "#med"}
    assert parsed.patient_ref == "9"


def test_references_inside_contained_resources_are_rewritten(fhir_dir: Path) -> None:
    bundle = orjson.loads((fhir_dir / "bundle_transaction.json").read_bytes())
    patient_urn = bundle["entry"][0]["fullUrl"]
    bundle["entry"][4]["resource"]["contained"] = [
        {
            "resourceType": "Specimen",
            "id": "s1",
            "subject": {"reference": patient_urn},
        }
    ]
    parsed = parse_fhir(orjson.dumps(bundle), "t.json", id_factory=sequential_ids())
    assert loads(parsed[4])["contained"][0]["subject"] == {"reference": "Patient/r1"}


# ---------------------------------------------------------------- malformed inputs


def test_broken_json_gives_line_and_column(fhir_dir: Path) -> None:
    error = error_of((fhir_dir / "bad" / "broken.json").read_bytes(), "broken.json")
    assert (
        str(error)
        == "broken.json: broken JSON at line 5, column 3: unexpected character, expected ',' or '}'"
    )
    assert error.entry is None and error.field is None


def test_a_wrong_decimal_names_file_entry_and_field(fhir_dir: Path) -> None:
    error = error_of((fhir_dir / "bad" / "labs.json").read_bytes(), "labs.json")
    assert str(error) == (
        "labs.json, entry 3 (Observation), field valueQuantity.value: "
        "expected a JSON number (decimal), got a string"
    )
    assert (error.source, error.entry, error.resource_type, error.field) == (
        "labs.json",
        3,
        "Observation",
        "valueQuantity.value",
    )


def test_a_string_that_is_not_a_decimal_at_all() -> None:
    resource = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    resource["valueQuantity"] = {"value": 7.1, "comparator": "<"}
    resource["effectiveDateTime"] = "2024-02-30"
    error = error_of(orjson.dumps(resource), "o.json")
    assert str(error) == (
        "o.json, Observation, field effectiveDateTime: value is not a valid dateTime: "
        "day value is outside expected range"
    )


def test_wrong_json_types_are_refused(fhir_dir: Path) -> None:
    error = error_of((fhir_dir / "bad" / "wrong_types.json").read_bytes(), "wrong_types.json")
    assert [(p.field, p.message) for p in error.problems] == [
        ("name", "expected a JSON array (HumanName), got a string"),
        ("active", "expected a JSON boolean (boolean), got a string"),
    ]
    assert str(error) == (
        "wrong_types.json, Patient, field name: expected a JSON array (HumanName), got a string "
        "(and 1 more problem)"
    )


def test_an_unknown_field_suggests_the_right_one(fhir_dir: Path) -> None:
    error = error_of((fhir_dir / "bad" / "unknown_field.json").read_bytes(), "unknown_field.json")
    assert str(error) == (
        "unknown_field.json, entry 2 (Observation), field valueQuantiy: "
        "unknown field (did you mean valueQuantity?)"
    )


def test_a_missing_required_field(fhir_dir: Path) -> None:
    error = error_of(
        (fhir_dir / "bad" / "missing_required.json").read_bytes(), "missing_required.json"
    )
    assert str(error) == (
        "missing_required.json, entry 4 (DiagnosticReport), field code: required field is missing"
    )


def test_an_unsupported_resource_type(fhir_dir: Path) -> None:
    error = error_of(
        (fhir_dir / "bad" / "unsupported_type.json").read_bytes(), "unsupported_type.json"
    )
    assert str(error) == (
        "unsupported_type.json, entry 1 (PatientNote), field resourceType: "
        "unsupported resource type 'PatientNote' (not a FHIR R4 resource)"
    )


def test_a_reference_to_nothing_is_kept_with_a_warning(fhir_dir: Path) -> None:
    parsed = parse(fhir_dir / "bad" / "dangling_reference.json")
    report = parsed[4]
    assert report.resource_type == "DiagnosticReport"
    assert report.warnings == (
        "field result[1]: reference 'urn:uuid:00000000-0000-4000-8000-000000000000' "
        "matches nothing here; kept as sent",
    )
    assert loads(report)["result"][1] == {
        "reference": "urn:uuid:00000000-0000-4000-8000-000000000000"
    }
    assert report.patient_ref == parsed[0].id


def test_every_problem_of_a_bundle_is_reported_and_nothing_is_returned(fhir_dir: Path) -> None:
    bundle = orjson.loads((fhir_dir / "bundle_transaction.json").read_bytes())
    bundle["entry"][2]["resource"]["valueQuantity"]["value"] = True
    del bundle["entry"][3]["resource"]["status"]
    bundle["entry"][4]["resource"]["subject"]["display"] = 3
    error = error_of(orjson.dumps(bundle), "t.json")
    assert [(p.entry, p.field, p.message) for p in error.problems] == [
        (2, "valueQuantity.value", "expected a JSON number (decimal), got a boolean"),
        (3, "status", "required field is missing"),
        (4, "subject.display", "expected a JSON string (string), got an integer"),
    ]
    assert str(error).endswith("(and 2 more problems)")


def test_nulls_choice_types_and_non_objects() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueString": "a",
        "valueBoolean": True,
    }
    error = error_of(orjson.dumps(resource), "o.json")
    assert (
        str(error)
        == "o.json, Observation, field value[x]: only one of valueBoolean, valueString may be given"
    )
    error = error_of(b'{"resourceType": "Patient", "gender": null}', "p.json")
    assert (
        str(error)
        == "p.json, Patient, field gender: null is not allowed in FHIR JSON (omit the field)"
    )
    assert str(error_of(b"[1, 2]", "a.json")) == "a.json: expected a JSON object (a FHIR resource)"
    assert str(error_of(b"  ", "e.json")) == "e.json: the file is empty"
    assert (
        str(error_of(b'{"id": "x"}', "n.json"))
        == "n.json, field resourceType: missing resourceType"
    )


def test_error_messages_never_quote_values() -> None:
    resource = {
        "resourceType": "Patient",
        "name": [{"family": "DUPONT", "given": "Marie"}],
        "birthDate": "1979-13-28",
    }
    error = error_of(orjson.dumps(resource), "p.json")
    text = " ".join(str(p) for p in error.problems)
    assert "Marie" not in text and "1979-13-28" not in text and "DUPONT" not in text
    assert {p.field for p in error.problems} == {"name[0].given", "birthDate"}


def test_an_r5_bundle(fhir_dir: Path) -> None:
    patient = orjson.loads((fhir_dir / "patient_r4.json").read_bytes())
    del patient["meta"]  # its FR Core profile is an R4 one
    encounter = orjson.loads((fhir_dir / "encounter_r5.json").read_bytes())
    medication = orjson.loads((fhir_dir / "medicationrequest_r5.json").read_bytes())
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "https://h.example/fhir/Patient/pat-4711", "resource": patient}]
        + [{"resource": r} for r in (encounter, medication)],
    }
    parsed = parse_fhir(orjson.dumps(bundle), "r5.json", id_factory=sequential_ids())
    assert [(p.resource_type, p.fhir_version, p.patient_ref) for p in parsed] == [
        ("Patient", "R5", "r1"),
        ("Encounter", "R5", "r1"),
        ("MedicationRequest", "R5", "r1"),
    ]


def test_namespaced_ids_are_stable(fhir_dir: Path) -> None:
    data = (fhir_dir / "bundle_batch.json").read_bytes()
    first = parse_fhir(data, "b.json", id_factory=namespaced_ids("chu-lyon"))
    again = parse_fhir(data, "b.json", id_factory=namespaced_ids("chu-lyon"))
    other = parse_fhir(data, "b.json", id_factory=namespaced_ids("ch-nantes"))
    assert [p.json_bytes for p in first] == [p.json_bytes for p in again]
    assert {p.id for p in first}.isdisjoint({p.id for p in other})


def test_input_errors_survive_pickling(fhir_dir: Path) -> None:
    import pickle

    error = error_of((fhir_dir / "bad" / "wrong_types.json").read_bytes(), "wrong_types.json")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert [str(p) for p in copy.problems] == [str(p) for p in error.problems]
