"""HL7 v2 messages of each supported type, mapped to FHIR R4 and validated."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from medledger.interop import InputError, ParsedResource, parse_hl7v2, patient_pid, sequential_ids
from medledger.interop.hl7v2 import CodeMaps, MessageHeader, hl7v2_to_fhir, message_headers
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


# --------------------------------------------------------------------------- as senders send it


def third(hl7_dir: Path, name: str) -> Path:
    return hl7_dir / "thirdparty" / name


def by_type(parsed: list[ParsedResource], resource_type: str) -> list[ParsedResource]:
    return [p for p in parsed if p.resource_type == resource_type]


def test_an_epic_lab_result_keeps_local_codes_beside_loinc_and_says_so(hl7_dir: Path) -> None:
    parsed = parse(third(hl7_dir, "epic_oru_r01.hl7"))
    assert [p.resource_type for p in parsed] == ["Patient"] + ["Observation"] * 3 + [
        "DiagnosticReport"
    ]
    patient = parsed[0]
    assert {p.source_system for p in parsed} == {"urn:hl7v2:EPIC^EPICLAB"}
    # Repeated PID-3: Epic's own MRN (namespace only) and the hospital's (with its OID).
    systems = [i["system"] for i in loads(patient)["identifier"]]
    assert systems == [
        "urn:medledger:hl7v2:assigning-authority:EPI",
        "urn:oid:1.2.250.1.71.4.2.7.690781810",
    ]
    assert loads(patient)["address"][0]["line"] == ["3 rue Garibaldi", "Apt 4|B"]  # \F\
    assert patient.warnings == (
        "segment ZPD (message 1): a local Z segment, ignored: its meaning is the sender's own",
    )
    hemoglobin, wbc, comment = (loads(p) for p in parsed[1:4])
    assert [c["system"] for c in hemoglobin["code"]["coding"]] == [
        "http://loinc.org",
        "urn:hl7v2:EPIC^EPICLAB:EPIC",  # the sender's local code, kept as sent
    ]
    assert parsed[1].warnings == ()  # a LOINC coding is there: nothing to report
    assert wbc["code"]["coding"] == [
        {
            "system": "urn:hl7v2:EPIC^EPICLAB:EPIC",
            "code": "WBC",
            "display": "WHITE BLOOD CELL COUNT",
        }
    ]
    assert parsed[2].warnings == (
        "field OBX-3 (message 1, OBX 2): a code of the sender's local system (EPIC) has no "
        "mapping (config hl7.code_maps.OBX-3); kept as sent",
    )
    assert comment["valueString"] == "Frottis sans anomalie\\ morphologique"  # \E\
    report = loads(parsed[4])
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "58410-2",
        "display": "CBC panel",
    }
    assert report["result"] == [{"reference": f"Observation/{p.id}"} for p in parsed[1:4]]


def test_a_cerner_admission_gives_its_diagnoses_and_allergies(hl7_dir: Path) -> None:
    # v2.3, \n terminators, ISO 8859-1 as MSH-18 says; DG1, AL1 and a Z segment.
    parsed = parse(third(hl7_dir, "cerner_adt_a01_v23.hl7"))
    assert [p.resource_type for p in parsed] == ["Patient", "Encounter"] + ["Condition"] * 2 + [
        "AllergyIntolerance"
    ] * 2
    patient, encounter = parsed[0], parsed[1]
    assert loads(patient)["name"][0]["family"] == "LEFÈVRE"
    assert all(p.patient_ref == patient.id for p in parsed)
    angina, diabetes = (loads(p) for p in by_type(parsed, "Condition"))
    assert angina["code"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10",
        "code": "I20.0",
        "display": "Unstable angina",
    }
    assert angina["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert angina["clinicalStatus"]["coding"][0]["code"] == "active"
    assert angina["verificationStatus"]["coding"][0]["code"] == "provisional"  # DG1-6 A
    assert diabetes["verificationStatus"]["coding"][0]["code"] == "confirmed"  # DG1-6 F
    assert angina["encounter"] == {"reference": f"Encounter/{encounter.id}"}
    assert angina["onsetDateTime"] == "2024-02-10T14:00:00+01:00"  # DG1-5
    assert diabetes["onsetDateTime"] == "2015-01-01"
    penicillin, peanut = (loads(p) for p in by_type(parsed, "AllergyIntolerance"))
    assert penicillin["category"] == ["medication"] and penicillin["type"] == "allergy"
    assert penicillin["code"]["coding"][0]["system"] == (
        "http://www.nlm.nih.gov/research/umls/rxnorm"
    )
    assert penicillin["criticality"] == "high"  # AL1-4 SV
    assert penicillin["reaction"] == [
        {"manifestation": [{"text": "Hives"}, {"text": "Anaphylaxis"}], "severity": "severe"}
    ]
    assert penicillin["onsetDateTime"] == "2010-03-15"  # AL1-6
    assert peanut["category"] == ["food"] and peanut["criticality"] == "low"
    assert peanut["code"]["coding"][0]["system"] == "urn:hl7v2:HNAM^CERNER:99CERNER"
    assert by_type(parsed, "AllergyIntolerance")[1].warnings == (
        "field AL1-3 (message 1, AL1 2): a code of the sender's local system (99CERNER) has "
        "no mapping (config hl7.code_maps.AL1-3); kept as sent",
    )
    assert any("segment ZCE" in w for w in patient.warnings)


def test_an_update_of_the_same_visit_names_the_same_resources(hl7_dir: Path) -> None:
    first = parse(third(hl7_dir, "cerner_adt_a01_v23.hl7"))
    update = parse(third(hl7_dir, "cerner_adt_a08_v23.hl7"))  # another MSH-10, same PV1-19
    assert [p.resource_type for p in update] == ["Patient", "Encounter", "Condition"]
    assert update[0].request_method == "PUT"
    ids = {p.resource_type: p.source_id for p in first[:3]}
    assert {p.resource_type: p.source_id for p in update} == ids  # a new version of each
    assert loads(update[1])["location"][0]["location"]["display"].endswith("205 / B")
    # DG1 1 of the visit is now final: the same Condition, confirmed.
    assert loads(update[2])["verificationStatus"]["coding"][0]["code"] == "confirmed"
    headers = message_headers(third(hl7_dir, "cerner_adt_a08_v23.hl7").read_bytes(), "a08.hl7")
    assert headers == [MessageHeader("urn:hl7v2:HNAM^CERNER", "Q1234567999T1234999", "ADT^A08")]


def test_a_resent_message_gives_the_same_bytes_and_source_ids(hl7_dir: Path) -> None:
    for name in ("epic_oru_r01.hl7", "cerner_adt_a01_v23.hl7", "hapi_adt_a01_v22.hl7"):
        data = third(hl7_dir, name).read_bytes()
        once = parse_hl7v2(data, "first.hl7", id_factory=sequential_ids())
        again = parse_hl7v2(data, "resent-later.hl7", id_factory=sequential_ids())
        assert [p.json_bytes for p in once] == [p.json_bytes for p in again]
        assert [p.source_id for p in once] == [p.source_id for p in again]
        assert len({p.source_id for p in once}) == len(once)  # one id per resource
        # And with the random ids ingestion uses, only the ids differ.
        assert hl7v2_to_fhir(data, "a.hl7") == hl7v2_to_fhir(data, "b.hl7")


def test_a_message_without_control_id_nor_authority_still_has_stable_ids(hl7_dir: Path) -> None:
    # HAPI's classic v2.2 sample shape: MSH-10 empty, PID-3 with no assigning authority.
    patient, encounter = parse(third(hl7_dir, "hapi_adt_a01_v22.hl7"))
    assert patient.warnings == (
        "field MSH-10 (message 1): the message control id is empty: ids derived from its content",
        "field PID-3 (message 1): identifier 1 has no assigning authority: taken as the sending "
        "facility's",
    )
    assert loads(patient)["identifier"][0]["system"] == (
        "urn:medledger:hl7v2:assigning-authority:RIH"
    )
    assert patient.if_none_exist == "identifier=urn:medledger:hl7v2:assigning-authority:RIH|204958"
    assert loads(encounter)["class"]["code"] == "AMB"
    [header] = message_headers(third(hl7_dir, "hapi_adt_a01_v22.hl7").read_bytes(), "x.hl7")
    assert header.control_id.startswith("sha256:")


def test_a_python_hl7_style_result_keeps_a_value_without_comparator(hl7_dir: Path) -> None:
    patient, glucose, report = parse(third(hl7_dir, "pyhl7_oru_r01_v24.hl7"))
    value = loads(glucose)
    assert value["valueQuantity"] == {"value": 182, "unit": "mg/dl"}  # SN `^182`
    assert value["referenceRange"] == [{"text": "70_105"}]
    # OBX-3 component 3 is not a coding system HL7 knows: a local code, reported.
    assert glucose.warnings and "field OBX-3" in glucose.warnings[0]
    assert patient.source_system == "urn:hl7v2:GHH LAB^ELAB-3"
    assert " " not in value["code"]["coding"][0]["system"]  # a FHIR uri has no space
    assert loads(report)["identifier"] == [{"value": "1045813"}, {"value": "845439"}]


def test_a_v28_person_update_unescapes_and_updates_the_patient(hl7_dir: Path) -> None:
    patient, allergy = parse(third(hl7_dir, "adt_a31_v28.hl7"))
    assert patient.request_method == "PUT"  # A31: update person information
    assert loads(patient)["address"][0]["line"] == [
        "Résidence Les Tilleuls|Bât. B",
        "7 chemin du Lac",
    ]
    assert loads(patient)["name"][0]["family"] == "D'ARC-MARTIN"
    a = loads(allergy)
    assert a["code"]["coding"][0]["system"] == "http://www.whocc.no/atc"
    assert a["reaction"] == [{"manifestation": [{"text": "Éruption cutanée"}], "severity": "mild"}]


def test_a_problem_list_message_gives_problem_list_conditions(hl7_dir: Path) -> None:
    patient, hypertension, asthma = parse(third(hl7_dir, "ppr_pc1_v25.hl7"))
    h, a = loads(hypertension), loads(asthma)
    assert h["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert h["clinicalStatus"]["coding"][0]["code"] == "active"
    assert h["onsetDateTime"] == "2023-09-15"  # PRB-16
    assert a["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert a["abatementDateTime"] == "2024-01-01"  # PRB-9
    assert hypertension.patient_ref == patient.id
    assert hypertension.source_id != asthma.source_id  # PRB-4, one per problem


def test_a_diagnosis_deleted_by_the_sender_is_entered_in_error(hl7_dir: Path) -> None:
    data = third(hl7_dir, "cerner_adt_a08_v23.hl7").read_bytes()
    deleted = data.replace(b"20240210140000|F", b"20240210140000|F" + b"|" * 15 + b"D")
    condition = loads(parse_hl7v2(deleted, "a08.hl7")[2])
    assert condition["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in condition


# --------------------------------------------------------------------------- batches


def test_a_batch_file_is_read_message_by_message(hl7_dir: Path) -> None:
    parsed = parse(third(hl7_dir, "batch_adt.hl7"))
    assert [p.resource_type for p in parsed] == ["Patient", "Encounter"] * 2
    assert parsed[1].source_id == parsed[3].source_id  # the A08 is about the A01's visit
    assert [
        h.control_id for h in message_headers(third(hl7_dir, "batch_adt.hl7").read_bytes(), "b")
    ] == [
        "ADT0001",
        "ADT0002",
    ]


def test_a_batch_header_in_the_middle_of_a_message_is_refused(hl7_dir: Path) -> None:
    # Regression: it used to be skipped, ending the message silently.
    error = error_of(third(hl7_dir, "bhs_in_a_message.hl7").read_bytes(), "bhs.hl7")
    assert str(error) == "bhs.hl7: line 4: BHS in the middle of message 1"
    fhs = third(hl7_dir, "epic_oru_r01.hl7").read_bytes().replace(b"\rNTE|", b"\rFHS|^~\\&|X\rNTE|")
    assert str(error_of(fhs, "fhs.hl7")) == "fhs.hl7: line 9: FHS in the middle of message 1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((b"BTS|2", b"BTS|3"), "line 11: BTS-1 says '3' messages, there are 2"),
        ((b"FTS|1", b"FTS|2"), "line 12: FTS-1 says '2' batches, there are 1"),
        ((b"\rBTS|2", b""), "line 11: FTS while the batch of line 2 has no BTS"),
        ((b"\rFTS|1", b""), "line 1: the file header (FHS) has no trailer (FTS)"),
        (
            (b"FTS|1\r", b"FTS|1\rMSH|^~\\&|X\r"),
            "line 13: MSH after the file trailer (FTS, line 12)",
        ),
        (
            (b"\rBHS|^~\\&|PAM_ADT|CHU_LYON|MEDLEDGER|CHU_LYON|20240312110000", b""),
            "line 2: a message in a file (FHS) must be inside a batch (BHS)",
        ),
        ((b"FHS|", b"BTS|\rFHS|"), "line 1: BTS without a batch header (BHS)"),
        (
            (b"\rMSH|", b"\rBHS|^~\\&\rMSH|"),
            "line 3: BHS inside the batch of line 2 (no BTS before it)",
        ),
    ],
)
def test_batch_envelopes_must_nest_and_count_right(
    hl7_dir: Path, change: tuple[bytes, bytes], reason: str
) -> None:
    data = third(hl7_dir, "batch_adt.hl7").read_bytes().replace(*change, 1)
    assert str(error_of(data, "batch.hl7")) == f"batch.hl7: {reason}"


def test_counts_are_optional_and_loose_batches_work(hl7_dir: Path) -> None:
    data = (
        third(hl7_dir, "batch_adt.hl7")
        .read_bytes()
        .replace(b"BTS|2", b"BTS")
        .replace(b"FTS|1", b"FTS|")
    )
    assert len(parse_hl7v2(data, "batch.hl7")) == 4
    without_file = data.split(b"\r", 1)[1].replace(b"FTS|\r", b"")  # BHS...BTS alone
    assert len(parse_hl7v2(without_file, "batch.hl7")) == 4


# --------------------------------------------------------------------------- local codes


def test_a_local_sex_code_is_refused_unless_the_hospital_maps_it(hl7_dir: Path) -> None:
    data = third(hl7_dir, "adt_a04_local_sex.hl7").read_bytes()
    assert str(error_of(data, "a04.hl7")) == (
        "a04.hl7, message 1, field PID-8: administrative sex is not one of M, F, O, A, U, N, "
        "nor mapped by the hospital's table (config hl7.code_maps.PID-8)"
    )
    codes = CodeMaps.build({}, {"PID-8": {"1": "male", "2": "female"}})
    patient, encounter = parse_hl7v2(data, "a04.hl7", codes=codes)
    assert loads(patient)["gender"] == "male"
    # PV1-2 `U` (unknown) has no FHIR class: kept as sent in the sender's system, reported.
    assert loads(encounter)["class"] == {"system": "urn:hl7v2:GAM^CH_RURAL:PV1-2", "code": "U"}
    assert encounter.warnings == (
        "field PV1-2 (message 1): the patient class is not one of HL7's (table 0004) nor mapped "
        "by the hospital's table (config hl7.code_maps.PV1-2); kept as sent",
    )
    mapped = CodeMaps.build({}, {"PID-8": {"1": "male"}, "PV1-2": {"U": "AMB"}})
    _, encounter = parse_hl7v2(data, "a04.hl7", codes=mapped)
    assert loads(encounter)["class"]["code"] == "AMB" and encounter.warnings == ()


def test_a_hospital_maps_local_lab_codes_to_loinc(hl7_dir: Path) -> None:
    codes = CodeMaps.build(
        {"EAP": "https://lab.example.org/orders"},
        {"OBX-3": {"WBC": "http://loinc.org|6690-2"}},
    )
    parsed = parse_hl7v2(third(hl7_dir, "epic_oru_r01.hl7").read_bytes(), "epic.hl7", codes=codes)
    wbc = loads(parsed[2])
    assert wbc["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "6690-2"},  # the hospital's mapping first
        {
            "system": "urn:hl7v2:EPIC^EPICLAB:EPIC",
            "code": "WBC",
            "display": "WHITE BLOOD CELL COUNT",
        },
    ]
    assert parsed[2].warnings == ()
    report = loads(parsed[4])
    assert report["code"]["coding"][0]["system"] == "https://lab.example.org/orders"
    assert parsed[3].warnings  # PATH-COMMENT has no mapping: still reported


@pytest.mark.parametrize(
    ("systems", "tables", "reason"),
    [
        ({}, {"PID-99": {"1": "male"}}, "code_maps.PID-99: unknown table (known: PID-8, "),
        ({}, {"PID-8": {"1": "males"}}, "code_maps.PID-8.1: must be one of female, male, other"),
        ({}, {"OBX-3": {"GLU": "2345-7"}}, "code_maps.OBX-3.GLU: must be 'system|code'"),
        ({}, {"AL1-2": {"X": "drug"}}, "code_maps.AL1-2.X: must be one of biologic, environment"),
        ({"99LAB": "not a uri"}, {}, "coding_systems.99LAB: must be a URI"),
    ],
)
def test_a_wrong_table_is_refused_naming_it(
    systems: dict[str, str], tables: dict[str, dict[str, str]], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        CodeMaps.build(systems, tables)


def test_a_segment_repeating_the_keys_of_another_is_told_apart(hl7_dir: Path) -> None:
    # Some senders number every OBX 1: same order, code and set id twice in one message.
    data = third(hl7_dir, "epic_oru_r01.hl7").read_bytes()
    second = b"OBX|1|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||13.0|g/dL^g/dL^UCUM||||F\r"
    parsed = parse_hl7v2(data.replace(b"OBX|2|", second + b"OBX|2|"), "epic.hl7")
    first, repeated = by_type(parsed, "Observation")[:2]
    assert first.source_id != repeated.source_id
    assert repeated.warnings == (
        "segment OBR1.OBX2 (message 1): its keys are the same as an earlier segment's: told "
        "apart by its position",
    )


def test_an_update_without_visit_number_leaves_the_encounter_alone(hl7_dir: Path) -> None:
    [patient] = parse(hl7_dir / "adt_a08.hl7")
    assert patient.warnings == (
        "field PV1-19 (message 1): the visit number is empty: which visit this is about is "
        "unknown, its Encounter is left as it was",
    )


def test_msh18_character_sets_and_hex_escapes_are_honoured(hl7_dir: Path) -> None:
    text = third(hl7_dir, "adt_a31_v28.hl7").read_text("utf-8")
    for charset, codec, prefix in (
        ("8859/15", "iso8859-15", "€éa"),
        ("8859/2", "iso8859-2", "Łéa"),
    ):
        data = text.replace("UNICODE UTF-8", charset).replace("Mme^^L", f"{prefix}^^L")
        patient = loads(parse_hl7v2(data.encode(codec), "a31.hl7")[0])
        assert patient["name"][0]["prefix"] == [prefix]
    escaped = text.replace("D'ARC-MARTIN", "D\\X27\\ARC\\X2D\\MARTIN")  # hex escapes
    assert loads(parse_hl7v2(escaped, "a31.hl7")[0])["name"][0]["family"] == "D'ARC-MARTIN"


def test_a_result_status_fhir_cannot_hold_is_refused_and_an_odd_flag_reported(
    hl7_dir: Path,
) -> None:
    data = third(hl7_dir, "epic_oru_r01.hl7").read_bytes()
    odd_status = data.replace(b"|13.2|g/dL^g/dL^UCUM|12.0-16.0|N|||F|", b"|13.2|||N|||Q|")
    assert str(error_of(odd_status, "epic.hl7")) == (
        "epic.hl7, message 1, OBX 1, field OBX-11: the result status is not one of "
        "F, C, A, P, R, S, I, X, D, W, nor mapped by the hospital's table "
        "(config hl7.code_maps.OBX-11)"
    )
    codes = CodeMaps.build({}, {"OBX-11": {"Q": "preliminary"}})
    observation = parse_hl7v2(odd_status, "epic.hl7", codes=codes)[1]
    assert loads(observation)["status"] == "preliminary"
    odd_flag = data.replace(b"|12.0-16.0|N|", b"|12.0-16.0|NORMAL|")
    observation = parse_hl7v2(odd_flag, "epic.hl7")[1]
    assert "interpretation" not in loads(observation)
    assert observation.warnings == (
        "field OBX-8 (message 1, OBX 1): the abnormal flag is not one of HL7's (table 0078): "
        "left out",
    )


def test_a_result_message_for_two_patients_gives_each_their_own_results(hl7_dir: Path) -> None:
    lucie = third(hl7_dir, "epic_oru_r01.hl7").read_bytes().rstrip(b"\r").split(b"\r")
    eve = third(hl7_dir, "pyhl7_oru_r01_v24.hl7").read_bytes().rstrip(b"\r").split(b"\r")[1:]
    parsed = parse_hl7v2(b"\r".join(lucie + eve), "two.hl7")  # ORU^R01: PID, ..., PID, ...
    patients = by_type(parsed, "Patient")
    assert len(patients) == 2
    glucose = parsed[-2]
    assert loads(glucose)["valueQuantity"]["value"] == 182
    assert glucose.patient_ref == patients[1].id  # Eve's glucose, not Lucie's
    assert all(p.patient_ref == patients[0].id for p in parsed[:5])
    two_admissions = (
        third(hl7_dir, "cerner_adt_a01_v23.hl7")
        .read_bytes()
        .replace(b"\nPV1|", b"\n" + b"PID|1||1^^^X&1.2.3&ISO^PI||DOE^JOHN||19700101|M\nPV1|", 1)
    )
    assert str(error_of(two_admissions, "a01.hl7")) == (
        "a01.hl7, message 1, field PID: 2 PID segments: ADT^A01 is about one patient"
    )


def test_a_discharge_finishes_the_visit_the_admission_opened(hl7_dir: Path) -> None:
    batch = third(hl7_dir, "batch_adt.hl7").read_bytes().decode()
    admission = batch.split("\r")[2:6]
    discharge = [
        admission[0].replace("ADT^A01^ADT_A01|ADT0001", "ADT^A03^ADT_A03|ADT0003"),
        *admission[1:3],
        admission[3] + "|20240315120000",  # PV1-45 discharge date/time
    ]
    [_, opened] = parse_hl7v2("\r".join(admission), "a01.hl7")
    [_, finished] = parse_hl7v2("\r".join(discharge), "a03.hl7")
    assert finished.source_id == opened.source_id  # the same visit, a new version
    assert loads(finished)["status"] == "finished"
    assert loads(finished)["period"] == {
        "start": "2024-03-11T08:30:00+01:00",
        "end": "2024-03-15T12:00:00+01:00",
    }
