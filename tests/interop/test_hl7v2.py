"""HL7 v2 messages of each supported type, mapped to FHIR R4 and validated."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from medledger.interop import InputError, ParsedResource, parse_hl7v2, patient_pid, sequential_ids
from medledger.interop.hl7v2 import hl7v2_to_fhir
from medledger.interop.ins import INS_NIR_SYSTEM

KEY = b"k" * 32
INS = "279035121518989"


def parse(path: Path) -> list[ParsedResource]:
    return parse_hl7v2(path.read_bytes(), path.name, id_factory=sequential_ids())


def loads(parsed: ParsedResource) -> dict:  # type: ignore[type-arg]
    return orjson.loads(parsed.json_bytes)  # type: ignore[no-any-return]


def error_of(data: bytes | str, source: str = "msg.hl7") -> InputError:
    with pytest.raises(InputError) as caught:
        parse_hl7v2(data, source)
    return caught.value


def test_adt_a01_admission(hl7_dir: Path) -> None:
    patient, encounter = parse(hl7_dir / "adt_a01.hl7")
    assert (patient.resource_type, encounter.resource_type) == ("Patient", "Encounter")
    assert patient.fhir_version == "R4"
    p = loads(patient)
    ins = p["identifier"][0]
    assert ins["system"] == INS_NIR_SYSTEM and ins["value"] == INS and ins["use"] == "official"
    assert ins["type"]["coding"][0]["code"] == "INS-NIR"
    assert p["identifier"][1]["system"] == "urn:oid:1.2.250.1.71.4.2.7.690781810"
    assert p["name"][0] == {
        "use": "official",
        "family": "PAT-TROIS",
        "given": ["Dominique", "Marie"],
        "prefix": ["Mme"],
    }
    assert p["name"][1]["use"] == "usual" and p["name"][1]["family"] == "DUBOIS"
    assert p["gender"] == "female" and p["birthDate"] == "1979-03-28"
    assert p["address"] == [
        {
            "use": "home",
            "line": ["28 Av de Breteuil"],
            "city": "PARIS",
            "postalCode": "75007",
            "country": "FRA",
        }
    ]  # the birth place (BDL) is not an address
    assert [t["system"] for t in p["telecom"]] == ["phone", "phone", "email"]
    assert patient_pid(KEY, p) == patient_pid(
        KEY, {"identifier": [{"system": INS_NIR_SYSTEM, "value": INS}]}
    )
    # A conditional create: the hospital usually knows the patient already.
    assert patient.request_method == "POST"
    assert patient.if_none_exist == f"identifier={INS_NIR_SYSTEM}|{INS}"

    e = loads(encounter)
    assert encounter.patient_ref == patient.id
    assert e["subject"] == {"reference": f"Patient/{patient.id}"}
    assert e["class"]["code"] == "IMP" and e["status"] == "in-progress"
    assert e["period"] == {"start": "2024-03-11T08:30:00+01:00"}  # PV1-44, Paris winter time
    assert e["identifier"] == [
        {"value": "240311001", "system": "urn:oid:1.2.250.1.71.4.2.7.690781810.2"}
    ]
    assert e["participant"][0]["individual"]["display"] == "Dr Paul LEGRAND"


def test_adt_a04_registration_without_ins(hl7_dir: Path) -> None:
    # This file uses \n as segment separator and is UTF-8.
    patient, encounter = parse(hl7_dir / "adt_a04.hl7")
    p = loads(patient)
    assert p["identifier"] == [
        {
            "use": "usual",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}
                ]
            },
            "value": "IPP-88213",
            "system": "urn:oid:1.2.250.1.71.4.2.7.440000289",
        }
    ]
    assert p["address"][0]["line"] == ["4 rue des Écoles"]
    assert p["telecom"] == [{"system": "phone", "value": "0699887766", "use": "mobile"}]
    e = loads(encounter)
    assert e["class"]["code"] == "AMB"
    assert e["period"] == {"start": "2024-04-02T14:05:00+02:00"}  # summer time
    assert encounter.patient_ref == patient.id


def test_adt_a08_update(hl7_dir: Path) -> None:
    # \r\n separators, ISO 8859-1 as MSH-18 declares.
    [patient] = parse(hl7_dir / "adt_a08.hl7")
    assert patient.request_method == "PUT"
    assert patient.request_url == f"Patient?identifier={INS_NIR_SYSTEM}|{INS}"
    assert loads(patient)["address"][0]["line"] == ["12 quai Général Sarrail"]


def test_oru_r01_results(hl7_dir: Path) -> None:
    parsed = parse(hl7_dir / "oru_r01.hl7")
    kinds = [p.resource_type for p in parsed]
    assert kinds == ["Patient"] + ["Observation"] * 4 + ["DiagnosticReport"] + [
        "Observation"
    ] * 3 + ["DiagnosticReport"]
    patient = parsed[0]
    assert all(p.patient_ref == patient.id for p in parsed)
    hba1c = loads(parsed[1])
    assert hba1c["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "4548-4",
        "display": "Hemoglobin A1c/Hemoglobin.total in Blood",
    }
    assert hba1c["valueQuantity"] == {
        "value": 7.4,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    assert hba1c["referenceRange"][0]["low"]["value"] == 4.0
    assert hba1c["interpretation"][0]["coding"][0]["code"] == "H"
    assert hba1c["effectiveDateTime"] == "2024-03-12T07:30:00+01:00"
    assert hba1c["issued"] == "2024-03-12T16:25:00+01:00"
    assert hba1c["category"][0]["coding"][0]["code"] == "laboratory"
    egfr = loads(parsed[4])
    assert egfr["valueQuantity"]["comparator"] == ">" and egfr["valueQuantity"]["value"] == 90
    report = loads(parsed[5])
    assert report["code"]["coding"][0]["code"] == "24331-1"
    assert report["result"] == [{"reference": f"Observation/{p.id}"} for p in parsed[1:5]]
    assert report["identifier"][0] == {
        "value": "LAB-99120",
        "system": "urn:oid:1.2.250.1.71.4.2.7.690781810.9",
    }
    assert report["category"][0]["coding"][0]["code"] == "CH"
    blood_group = loads(parsed[7])
    assert blood_group["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "112144000",
        "display": "Blood group A",
    }
    assert loads(parsed[8])["valueString"] == "Hémolyse légère, résultat interprétable."


def test_the_three_segment_separators_give_the_same_result(hl7_dir: Path) -> None:
    text = (hl7_dir / "oru_r01.hl7").read_text("utf-8")
    segments = [s for s in text.split("\r") if s]
    results = [
        hl7v2_to_fhir(separator.join(segments), "oru.hl7") for separator in ("\r", "\n", "\r\n")
    ]
    assert results[0] == results[1] == results[2]


def test_a_file_with_several_messages(hl7_dir: Path) -> None:
    data = (hl7_dir / "adt_a01.hl7").read_bytes() + (hl7_dir / "oru_r01.hl7").read_bytes()
    parsed = parse_hl7v2(data, "batch.hl7")
    patients = [p for p in parsed if p.resource_type == "Patient"]
    assert len(patients) == 2  # one per message: the caller deduplicates by pid
    assert len(parsed) == 2 + 10


def test_a_message_without_pid_is_refused(hl7_dir: Path) -> None:
    error = error_of((hl7_dir / "adt_a01_no_pid.hl7").read_bytes(), "adt_a01_no_pid.hl7")
    assert (error.source, error.entry, error.field) == ("adt_a01_no_pid.hl7", "message 1", "PID")
    assert str(error) == (
        "adt_a01_no_pid.hl7, message 1, field PID: "
        "the PID segment is missing: the message does not say which patient"
    )


def test_the_second_message_is_named(hl7_dir: Path) -> None:
    data = (hl7_dir / "adt_a04.hl7").read_bytes() + (hl7_dir / "adt_a01_no_pid.hl7").read_bytes()
    assert error_of(data, "two.hl7").entry == "message 2"


def test_a_bad_ins_key_is_refused_without_quoting_it(hl7_dir: Path) -> None:
    data = (hl7_dir / "adt_a01.hl7").read_bytes().replace(INS.encode(), b"279035121518988")
    error = error_of(data, "a01.hl7")
    assert (
        str(error)
        == "a01.hl7, message 1, field PID-3: invalid INS: key 88 does not match computed 89"
    )
    assert "2790351215189" not in str(error)


def test_unsupported_messages_and_values(hl7_dir: Path) -> None:
    a40 = (hl7_dir / "adt_a01.hl7").read_bytes().replace(b"ADT^A01^ADT_A01", b"ADT^A40^ADT_A39")
    assert str(error_of(a40, "a40.hl7")) == (
        "a40.hl7, message 1, field MSH-9: unsupported message type ADT^A40 (supported: "
        "ADT^A01, ADT^A02, ADT^A03, ADT^A04, ADT^A08, ADT^A28, ADT^A31, ORU^R01, "
        "PPR^PC1, PPR^PC2, PPR^PC3)"
    )
    oru = (hl7_dir / "oru_r01.hl7").read_bytes().replace(b"||1.32|", b"||1,32|")
    assert str(error_of(oru, "oru.hl7")) == (
        "oru.hl7, message 1, OBX 2, field OBX-5: value is not a valid number (value type NM)"
    )
    no_pv1 = b"\r".join(
        s for s in (hl7_dir / "adt_a01.hl7").read_bytes().split(b"\r") if not s.startswith(b"PV1")
    )
    assert error_of(no_pv1).field == "PV1"
    bad_date = (hl7_dir / "adt_a04.hl7").read_bytes().replace(b"|19541203|", b"|19541303|")
    assert str(error_of(bad_date, "a04.hl7")) == (
        "a04.hl7, message 1, field PID-7: not a valid HL7 date/time (out of range)"
    )
    assert str(error_of(b"PID|1||123\r", "x.hl7")) == (
        "x.hl7, message 1, field MSH: the message does not start with an MSH segment"
    )
    assert str(error_of(b"hello world", "x.hl7")) == "x.hl7: line 1 is not an HL7 v2 segment"


def test_a_retired_ins_c_is_kept_as_a_plain_identifier(hl7_dir: Path) -> None:
    ins_c = b"1234567890123456789012^^^ASIP-SANTE-INS-C&1.2.250.1.213.1.4.2&ISO^INS-C~"
    data = (hl7_dir / "adt_a04.hl7").read_bytes().replace(b"PID|1||", b"PID|1||" + ins_c)
    patient, _ = parse_hl7v2(data, "a04.hl7")
    systems = [i["system"] for i in loads(patient)["identifier"]]
    assert systems == ["urn:oid:1.2.250.1.213.1.4.2", "urn:oid:1.2.250.1.71.4.2.7.440000289"]
