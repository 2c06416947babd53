"""Values at the edges: numbers out of range are refused by field, logs never quote a value."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.interop.errors import InputError
from medledger.interop.fhir import parse_fhir
from medledger.interop.hl7v2 import parse_hl7v2


def _observation(value: bytes) -> bytes:
    """An Observation whose valueQuantity.value is `value`, written as is in the JSON."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": 0, "unit": "%"},
    }
    return orjson.dumps(resource).replace(b'"value":0', b'"value":' + value)


@pytest.mark.parametrize("value", [b"74000000000000000000", b"1e300", b"-18446744073709551615"])
def test_a_fhir_decimal_out_of_range_is_refused_naming_its_path(value: bytes) -> None:
    with pytest.raises(InputError) as refused:
        parse_fhir(_observation(value), "labs.json")
    (problem,) = refused.value.problems
    assert problem.source == "labs.json"
    assert problem.field == "valueQuantity.value"
    assert "out of range" in problem.message
    assert value.decode().lstrip("-")[:6] not in str(refused.value)  # the value is not quoted


def test_a_fhir_decimal_in_range_is_kept() -> None:
    (parsed,) = parse_fhir(_observation(b"123456789012.5"), "labs.json", resolve=lambda r: r)
    assert parsed.resource["valueQuantity"]["value"] == 123456789012.5


@pytest.mark.parametrize(
    ("result", "field"),
    [
        (b"NM|4548-4^HbA1c^LN||74000000000000000000|", "OBX-5"),  # ended a batch in _finish
        (b"NM|4548-4^HbA1c^LN||" + b"9" * 400 + b".5|", "OBX-5"),  # a float of inf
        (b"SN|4548-4^HbA1c^LN||>^900000000000000000000|", "OBX-5"),
    ],
)
def test_an_obx_number_out_of_range_is_refused_naming_segment_and_field(
    hl7_dir: Path, result: bytes, field: str
) -> None:
    data = (hl7_dir / "oru_r01.hl7").read_bytes()
    original = b"NM|4548-4^Hemoglobin A1c/Hemoglobin.total in Blood^LN||7.4|"
    assert original in data
    with pytest.raises(InputError) as refused:
        parse_hl7v2(data.replace(original, result), "lab.hl7")
    (problem,) = refused.value.problems
    assert (problem.source, problem.entry, problem.field) == ("lab.hl7", "message 1, OBX 1", field)
    assert "out of range" in problem.message


def test_a_bad_escape_in_pid_logs_no_value_of_the_message(
    hl7_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = (hl7_dir / "adt_a01.hl7").read_bytes()
    pid = next(line for line in data.split(b"\r") if line.startswith(b"PID|"))
    fields = pid.split(b"|")
    values = [v.decode() for v in (fields[5].split(b"^")[0], fields[7]) if v]
    # An escape python-hl7 cannot decode, in the patient's family name (PID-5).
    bad = data.replace(pid, pid.replace(fields[5], fields[5].replace(b"^", b"\\Q\\^", 1)))
    with caplog.at_level(logging.DEBUG):
        parsed = parse_hl7v2(bad, "adt.hl7")
    assert {p.resource_type for p in parsed} == {"Patient", "Encounter"}
    hl7_records = [r for r in caplog.records if "/hl7/" in r.name]
    assert hl7_records, "python-hl7 reports the bad escape (the event is kept)"
    for record in hl7_records:
        assert record.getMessage().startswith("python-hl7: ")
        assert record.exc_info is None and record.args == ()
    for value in [*values, "\\Q\\", "[Q]"]:
        assert value not in caplog.text
