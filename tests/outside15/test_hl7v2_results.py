"""ORU^R01 as laboratories send them: a microbiology result naming two organisms (OBX-5 CWE
repeated), a report as an embedded PDF (OBX-2 ED). Neither fits one FHIR R4 Observation
value: what is left out is said (a warning with the OBX), never dropped without a word, and an
embedded document is not recorded as a value that is merely "unknown"."""

from __future__ import annotations

from medledger.interop.hl7v2 import parse_hl7v2

LAB_ORU = (
    "MSH|^~\\&|MOLIS|LABO-BIO-RHONE|MEDLEDGER|CHU-LYON|20240320141700||ORU^R01^ORU_R01|"
    "LBR0042|P|2.5.1|||||||UNICODE UTF-8\r"
    "PID|||889123^^^LABO-BIO-RHONE^PI||MARTIN^Claire^^^^^L||19800214|F\r"
    "OBR|1|CMD778|LBR778|630-4^Bacteria identified in Urine by Culture^LN|||20240320080000"
    "||||||||||||||||||F\r"
    "OBX|1|CWE|11475-1^Microorganism identified^LN||"
    "112283007^Escherichia coli^SCT~3092008^Staphylococcus aureus^SCT||||||F\r"
    "OBX|2|ED|11502-2^Laboratory report^LN||LABO-BIO-RHONE^AP^PDF^Base64^JVBERi0xLjQK||||||F\r"
    "OBX|3|NM|5821-4^Leukocytes [#/area] in Urine sediment^LN||12|/[HPF]^per HPF^UCUM|0-5|H"
    "|||F\r"
)


def test_repeated_coded_values_and_an_embedded_pdf_are_reported_not_dropped() -> None:
    parsed = parse_hl7v2(LAB_ORU.encode(), "labo-bio-rhone.hl7")
    observations = [p for p in parsed if p.resource_type == "Observation"]
    assert len(observations) == 3
    organisms, pdf, leukocytes = observations

    assert organisms.resource["valueCodeableConcept"]["coding"][0]["code"] == "112283007"
    (warning,) = [w for w in organisms.warnings if "OBX-5" in w]
    assert "OBX 1" in warning and "2 values" in warning and "first" in warning

    assert not any(k.startswith("value") for k in pdf.resource)
    absent = pdf.resource["dataAbsentReason"]["coding"][0]
    assert absent["code"] == "unsupported"
    (warning,) = [w for w in pdf.warnings if "OBX-5" in w]
    assert "OBX 2" in warning and "ED" in warning

    assert leukocytes.resource["valueQuantity"]["value"] == 12
    assert not [w for w in leukocytes.warnings if "OBX-5" in w]
