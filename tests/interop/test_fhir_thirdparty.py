"""FHIR as other systems send it: IPS documents with their practitioners and organisations,
the specification's examples sent one at a time, Epic- and Cerner-shaped resources with
conditional and logical references, primitive extensions. Each file is under
tests/data/fhir/thirdparty/ (written for these tests, shaped like the published examples)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.interop import InputError, ParsedResource, parse_fhir, sequential_ids
from medledger.interop.fhir import is_supporting


@pytest.fixture
def thirdparty(fhir_dir: Path) -> Path:
    return fhir_dir / "thirdparty"


def parse(path: Path, **kwargs: Any) -> list[ParsedResource]:
    kwargs.setdefault("id_factory", sequential_ids())
    return parse_fhir(path.read_bytes(), path.name, **kwargs)


def refusal(path: Path, **kwargs: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        parse(path, **kwargs)
    return caught.value


def loads(parsed: ParsedResource) -> dict[str, Any]:
    return orjson.loads(parsed.json_bytes)  # type: ignore[no-any-return]


def references(value: Any) -> Iterator[str]:
    """Every `reference` string anywhere in a resource."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


class Recorder:
    """A resolver that knows a few references and remembers what it was asked."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[str] = []

    def __call__(self, reference: str) -> str | None:
        self.asked.append(reference)
        return self.known.get(reference)


def never(reference: str) -> str | None:
    raise AssertionError(f"the resolver was asked about {reference}")


# ---------------------------------------------------------------- IPS document


def test_an_ips_document_goes_in_whole_with_every_reference_rewritten(thirdparty: Path) -> None:
    parsed = parse(thirdparty / "ips_document.json", resolve=never)
    kinds = [p.resource_type for p in parsed]
    assert kinds == [
        "Composition",
        "Patient",
        "Practitioner",
        "Organization",
        "Medication",
        "MedicationStatement",
        "Condition",
        "AllergyIntolerance",
        "Bundle",
    ]
    entries = {p.resource_type: p for p in parsed[:-1]}
    patient = entries["Patient"].id
    for kind in ("Composition", "MedicationStatement", "Condition", "AllergyIntolerance"):
        assert entries[kind].patient_ref == patient, kind
    # Practitioner (entry 2) once refused with "field subject: belongs to no known patient".
    for kind in ("Practitioner", "Organization", "Medication"):
        assert is_supporting(kind)
        assert entries[kind].patient_ref is None, kind
    ids = {p.id for p in parsed}
    for entry in parsed[:-1]:
        assert entry.warnings == ()
        for reference in references(loads(entry)):
            kind, _, rid = reference.partition("/")
            assert rid in ids and entries[kind].id == rid, (entry.resource_type, reference)
    composition = loads(entries["Composition"])
    assert composition["custodian"] == {"reference": f"Organization/{entries['Organization'].id}"}
    allergy_section = composition["section"][2]["entry"]
    assert allergy_section == [
        {"reference": f"AllergyIntolerance/{entries['AllergyIntolerance'].id}"}
    ]


def test_the_sender_identity_of_each_entry_is_kept(thirdparty: Path) -> None:
    parsed = parse(thirdparty / "ips_document.json")
    patient = parsed[1]
    assert (patient.source_system, patient.source_id) == (
        "http://ips.example.org/fhir",
        "ips-pat-1",
    )
    assert patient.source_ref == "http://ips.example.org/fhir/Patient/ips-pat-1"
    assert {p.source_system for p in parsed[:-1]} == {"http://ips.example.org/fhir"}


def test_the_document_itself_is_kept_as_it_was_received(thirdparty: Path) -> None:
    data = (thirdparty / "ips_document.json").read_bytes()
    parsed = parse_fhir(data, "ips.json", id_factory=sequential_ids())
    document = parsed[-1]
    assert document.resource_type == "Bundle"
    assert document.json_bytes == data  # the sender's ids and references, as sent
    assert document.patient_ref == parsed[1].id  # the Composition's subject
    assert document.source_id == "IPS-examples-Bundle-01"
    assert document.id not in {p.id for p in parsed[:-1]}


def test_decimals_keep_their_digits_in_rewritten_entries(thirdparty: Path) -> None:
    parsed = parse(thirdparty / "ips_document.json")
    statement = next(p for p in parsed if p.resource_type == "MedicationStatement")
    medication = next(p for p in parsed if p.resource_type == "Medication")
    assert b'"doseQuantity":{"value":1.50,' in statement.json_bytes
    assert b'"numerator":{"value":1.0,' in medication.json_bytes
    assert statement.resource["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 1.5


# ---------------------------------------------------------------- resources sent alone


def test_a_spec_example_sent_alone_finds_its_patient_and_warns_about_the_rest(
    thirdparty: Path,
) -> None:
    resolver = Recorder({"Patient/example": "Patient/p-77"})
    [observation] = parse(thirdparty / "spec_observation_bodyweight.json", resolve=resolver)
    assert observation.patient_ref == "p-77"
    body = loads(observation)
    assert body["subject"] == {"reference": "Patient/p-77"}
    # Not found here: kept as sent, reported, never a refusal.
    assert body["encounter"] == {"reference": "Encounter/example"}
    assert body["performer"] == [{"reference": "Practitioner/example"}]
    assert observation.warnings == (
        "field encounter: reference 'Encounter/example' matches nothing here; kept as sent",
        "field basedOn[0]: reference 'ServiceRequest/example' matches nothing here; kept as sent",
        "field performer[0]: reference 'Practitioner/example' matches nothing here; kept as sent",
    )
    assert sorted(resolver.asked) == [
        "Encounter/example",
        "Patient/example",
        "Practitioner/example",
        "ServiceRequest/example",
    ]
    assert (observation.source_system, observation.source_id) == ("", "example")


def test_a_relative_reference_is_asked_against_the_senders_base_first(thirdparty: Path) -> None:
    resolver = Recorder({"Patient/eq081-VQEgP8drUUqCWzHfw3": "Patient/never-asked"})
    parsed = parse(thirdparty / "epic_collection_extensions.json", resolve=resolver)
    assert parsed[1].patient_ref == parsed[0].id  # inside the input: the resolver is not asked
    organization = "Organization/enRyWnSP963FYDpoks4NHOA3"
    assert resolver.asked[:2] == [
        f"https://fhir.epic.example.org/api/FHIR/R4/{organization}",
        organization,
    ]


def test_conditional_and_logical_references_resolve_through_the_resolver(
    thirdparty: Path,
) -> None:
    resolver = Recorder(
        {
            "Patient?identifier=urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0|E4007": "Patient/p-1",
            "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1234567893": (
                "Practitioner/dr-9"
            ),
        }
    )
    [observation] = parse(thirdparty / "epic_observation_conditional.json", resolve=resolver)
    assert observation.patient_ref == "p-1"
    body = loads(observation)
    assert body["subject"]["reference"] == "Patient/p-1"
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}
    assert body["performer"][0] == {
        "type": "Practitioner",
        "identifier": npi,
        "display": "Physician Family Medicine, MD",
        "reference": "Practitioner/dr-9",  # added; the identifier stays
    }
    # The laboratory is unknown here: kept, and the warning quotes no identifier.
    assert observation.warnings == (
        "field performer[1]: conditional reference to Organization matches nothing here; "
        "kept as sent",
    )
    # meta.source names the sender; its #fragment (the request) is not part of it.
    assert observation.source_system == (
        "https://fhir.epic.example.org/interconnect-fhir-oauth/api/FHIR/R4"
    )
    assert observation.source_id == "eLab.4Xkc7q3GY0zKkT0a3"
    assert b'"value":95.0,' in observation.json_bytes


def test_a_logical_reference_takes_the_one_type_its_field_allows(thirdparty: Path) -> None:
    query = "Patient?identifier=urn:oid:2.16.840.1.113883.6.1000|12724066"
    resolver = Recorder({query: "Patient/p-5"})
    [allergy] = parse(thirdparty / "cerner_allergy_logical.json", resolve=resolver)
    assert allergy.patient_ref == "p-5"  # AllergyIntolerance.patient allows Patient only
    assert query in resolver.asked
    assert [w.split(":")[0] for w in allergy.warnings] == ["field encounter", "field recorder"]


def test_a_logical_patient_reference_found_nowhere_is_refused(thirdparty: Path) -> None:
    error = refusal(thirdparty / "cerner_allergy_logical.json", resolve=lambda r: None)
    assert str(error) == (
        "cerner_allergy_logical.json, AllergyIntolerance, field patient.identifier: logical "
        "reference to Patient (by identifier) does not match any entry of the input nor a "
        "resource stored here; it names the patient, and an AllergyIntolerance cannot be stored "
        "without its patient"
    )
    assert "12724066" not in str(error)
    assert len(error.problems) == 1  # the encounter and the recorder are not refusals


def test_a_clinical_resource_whose_patient_is_unknown_is_refused_with_the_true_reason(
    thirdparty: Path,
) -> None:
    error = refusal(thirdparty / "orphan_condition.json", resolve=lambda r: None)
    assert str(error) == (
        "orphan_condition.json, Condition, field subject.reference: reference 'Patient/f201' "
        "does not match any entry of the input nor a resource stored here; it names the "
        "patient, and a Condition cannot be stored without its patient"
    )
    assert len(error.problems) == 1


def test_a_clinical_resource_that_names_no_patient_is_refused() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "ward temperature"},
        "subject": {"reference": "Location/ward-3"},
    }
    with pytest.raises(InputError) as caught:
        parse_fhir(orjson.dumps(observation), "o.json", resolve=lambda r: r)
    assert str(caught.value) == (
        "o.json, Observation, field subject: no patient named in subject or performer: an "
        "Observation is stored as a patient's record and must name its Patient"
    )


# ---------------------------------------------------------------- supporting resources


def test_a_transaction_of_supporting_and_clinical_resources(thirdparty: Path) -> None:
    parsed = parse(thirdparty / "cerner_lab_transaction.json")
    by_type = {p.resource_type: p for p in parsed}
    patient = by_type["Patient"].id
    assert by_type["Specimen"].patient_ref == patient  # Specimen.subject
    assert by_type["Observation"].patient_ref == patient
    for kind in ("PractitionerRole", "Organization", "Location", "Device"):
        assert by_type[kind].patient_ref is None, kind
    observation = loads(by_type["Observation"])
    assert observation["specimen"] == {"reference": f"Specimen/{by_type['Specimen'].id}"}
    assert observation["device"] == {"reference": f"Device/{by_type['Device'].id}"}
    assert b'"value":4.10,' in by_type["Observation"].json_bytes
    role = by_type["PractitionerRole"]
    assert role.warnings == (
        "field practitioner: reference 'Practitioner/4122622' matches nothing here; kept as sent",
    )
    assert loads(role)["organization"] == {
        "reference": f"Organization/{by_type['Organization'].id}"
    }
    assert (by_type["Patient"].source_system, by_type["Patient"].source_id) == ("", None)
    assert (
        by_type["Patient"].if_none_exist == "identifier=urn:oid:2.16.840.1.113883.6.1000|12724066"
    )


@pytest.mark.parametrize(
    "kind",
    [
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Medication",
        "Device",
        "Substance",
        "HealthcareService",
        "Endpoint",
    ],
)
def test_supporting_types(kind: str) -> None:
    assert is_supporting(kind)


@pytest.mark.parametrize(
    "kind",
    ["Patient", "Observation", "Specimen", "Composition", "Provenance", "Task", "DeviceUsage"],
)
def test_clinical_types(kind: str) -> None:
    assert not is_supporting(kind)


# ---------------------------------------------------------------- every FHIR JSON form


def test_primitive_extensions_and_positional_nulls_are_valid_fhir_json(thirdparty: Path) -> None:
    data = (thirdparty / "epic_collection_extensions.json").read_bytes()
    patient, observation, request = parse_fhir(data, "epic.json", id_factory=sequential_ids())
    name = loads(patient)["name"][0]
    assert name["given"] == [None, "Derrick"]  # the first given name is masked
    assert name["_given"][0]["extension"][0]["valueCode"] == "masked"
    assert "_birthDate" in loads(patient) and "birthDate" not in loads(patient)
    race = loads(patient)["extension"][0]["extension"][1]
    assert race["_valueString"]["extension"][0]["url"].endswith("/translation")
    assert "_valueString" in loads(observation)
    assert loads(observation)["modifierExtension"][0]["valueBoolean"] is False
    # A contained medication: `#med1` stays as it is, with no warning.
    assert loads(request)["medicationReference"] == {"reference": "#med1"}
    assert request.warnings == (
        "field requester: reference 'Practitioner/eM5CWtq15N0WJeuCet5bJlQ3' matches nothing "
        "here; kept as sent",
    )
    assert b'"value":0.50,' in request.json_bytes


def test_a_null_in_a_primitive_array_needs_its_extension() -> None:
    patient = {"resourceType": "Patient", "name": [{"given": [None, "B"]}]}
    with pytest.raises(InputError) as caught:
        parse_fhir(orjson.dumps(patient), "p.json")
    assert str(caught.value) == "p.json, Patient, field name[0].given[0]: null is not allowed here"


def test_a_primitive_extension_inside_an_extension_must_be_an_object() -> None:
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": "http://example.org/x", "valueString": "a", "_valueString": "b"}],
    }
    with pytest.raises(InputError) as caught:
        parse_fhir(orjson.dumps(patient), "p.json")
    assert str(caught.value) == (
        "p.json, Patient, field extension[0]._valueString: expected a JSON object, got a string"
    )


def test_a_contained_reference_to_nothing_is_a_warning() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#missing"},
        "subject": {"reference": "Patient/1"},
    }
    [parsed] = parse_fhir(orjson.dumps(request), "m.json", resolve=lambda r: r)
    assert parsed.warnings == (
        "field medicationReference: reference '#missing' matches no contained resource; "
        "kept as sent",
    )


def test_a_reference_with_an_identifier_too_is_found_by_either() -> None:
    condition = {
        "resourceType": "Condition",
        "code": {"text": "asthma"},
        "subject": {
            "reference": "Patient/eq081-unknown-here",
            "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "279035121518989"},
        },
    }
    resolver = Recorder(
        {"Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|279035121518989": "Patient/p-3"}
    )
    [parsed] = parse_fhir(orjson.dumps(condition), "c.json", resolve=resolver)
    assert parsed.patient_ref == "p-3"
    assert loads(parsed)["subject"]["reference"] == "Patient/p-3"
    assert resolver.asked == [
        "Patient/eq081-unknown-here",
        "Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|279035121518989",
    ]


@pytest.mark.parametrize(
    ("resource", "version"),
    [
        # R5 DeviceUsage links its patient by `patient`; R5 Provenance has a `patient` of its own.
        (
            {
                "resourceType": "DeviceUsage",
                "status": "active",
                "patient": {"reference": "Patient/example"},
                "device": {"concept": {"text": "insulin pump"}},
            },
            "R5",
        ),
        (
            {
                "resourceType": "Provenance",
                "target": [{"reference": "Observation/o-1"}],
                "recorded": "2024-02-14T08:05:00Z",
                "patient": {"reference": "Patient/example"},
                "agent": [{"who": {"reference": "Practitioner/example"}}],
            },
            "R5",
        ),
        # R4 has no compartment link for Task; R5's (`for`) applies to it too.
        (
            {
                "resourceType": "Task",
                "status": "requested",
                "intent": "order",
                "for": {"reference": "Patient/example"},
            },
            "R4",
        ),
    ],
)
def test_the_compartment_link_of_each_version(resource: dict[str, Any], version: str) -> None:
    resolver = Recorder({"Patient/example": "Patient/p-9"})
    [parsed] = parse_fhir(orjson.dumps(resource), "r.json", resolve=resolver)
    assert (parsed.fhir_version, parsed.patient_ref) == (version, "p-9")


def test_a_logical_reference_found_nowhere_stays_as_sent_without_a_warning() -> None:
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/example"},
        "serviceProvider": {
            "type": "Organization",
            "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "690781810"},
        },
    }
    resolver = Recorder({"Patient/example": "Patient/p-9"})
    [parsed] = parse_fhir(orjson.dumps(encounter), "e.json", resolve=resolver)
    assert resolver.asked[-1] == "Organization?identifier=urn:oid:1.2.250.1.71.4.2.2|690781810"
    assert parsed.warnings == ()  # an identifier alone is a complete (logical) reference
    assert "reference" not in loads(parsed)["serviceProvider"]


def test_a_bundle_inside_a_bundle_is_refused(thirdparty: Path) -> None:
    document = orjson.loads((thirdparty / "ips_document.json").read_bytes())
    collection = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": document}]}
    with pytest.raises(InputError) as caught:
        parse_fhir(orjson.dumps(collection), "c.json")
    assert str(caught.value) == (
        "c.json, entry 0 (Bundle), field resource: a Bundle inside a Bundle is not ingested; "
        "send it as a file of its own"
    )
