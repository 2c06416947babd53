"""Pseudonyms: the same patient gets the same pid everywhere, different patients never share
one, and the pid cannot be recomputed without the consortium key."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.interop.ins import INS_NIR_SYSTEM, INS_NIR_TEST_SYSTEM, InvalidINS
from medledger.interop.pseudonym import (
    NoPatientIdentifier,
    canonical_identifier,
    patient_identifier,
    patient_pid,
    pseudonymise,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
INS = "279035121518989"
LOCAL = "urn:oid:1.2.250.1.71.4.2.7.690781810"


def test_pid_is_hmac_sha256_of_system_bar_value() -> None:
    expected = hmac.new(KEY, f"urn:medledger:ins|{INS}".encode(), hashlib.sha256).hexdigest()
    assert pseudonymise(KEY, INS_NIR_SYSTEM, INS) == expected
    assert len(expected) == 64
    local = hmac.new(KEY, f"{LOCAL}|94554411".encode(), hashlib.sha256).hexdigest()
    assert pseudonymise(KEY, LOCAL, "94554411") == local


def test_the_same_ins_however_written_gives_the_same_pid() -> None:
    pid = pseudonymise(KEY, INS_NIR_SYSTEM, INS)
    assert pseudonymise(KEY, INS_NIR_SYSTEM, "2 79 03 51 215 189 89") == pid
    assert pseudonymise(KEY, "1.2.250.1.213.1.4.8", INS) == pid  # bare OID from HL7 v2
    assert pseudonymise(KEY, f" {INS_NIR_SYSTEM} ", f" {INS} ") == pid


def test_pids_are_separated_by_key_system_and_value() -> None:
    pid = pseudonymise(KEY, INS_NIR_SYSTEM, INS)
    assert pseudonymise(OTHER_KEY, INS_NIR_SYSTEM, INS) != pid
    # One national number space: the INS system a hospital filed it under does not matter.
    assert pseudonymise(KEY, INS_NIR_TEST_SYSTEM, INS) == pid
    assert pseudonymise(KEY, INS_NIR_SYSTEM, "253072A07300443") != pid
    assert pseudonymise(KEY, LOCAL, INS) != pid  # same digits as a local IPP: another patient


@given(
    st.text(min_size=1, max_size=20).filter(str.strip),
    st.text(min_size=1, max_size=20).filter(str.strip),
)
def test_local_identifiers_are_stable_and_distinct(a: str, b: str) -> None:
    assert pseudonymise(KEY, LOCAL, a) == pseudonymise(KEY, LOCAL, a)
    if canonical_identifier(LOCAL, a) != canonical_identifier(LOCAL, b):
        assert pseudonymise(KEY, LOCAL, a) != pseudonymise(KEY, LOCAL, b)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        pseudonymise(b"short", INS_NIR_SYSTEM, INS)
    with pytest.raises(InvalidINS, match="does not match"):
        pseudonymise(KEY, INS_NIR_SYSTEM, "279035121518988")
    with pytest.raises(ValueError, match="may not contain"):
        pseudonymise(KEY, "urn:a|b", "1")
    with pytest.raises(ValueError, match="value is empty"):
        pseudonymise(KEY, LOCAL, "  ")


def _patient(*identifiers: dict[str, str]) -> dict[str, object]:
    return {"resourceType": "Patient", "identifier": list(identifiers)}


def test_patient_pid_prefers_the_ins() -> None:
    patient = _patient(
        {"system": LOCAL, "value": "00451287"},
        {"use": "official", "system": INS_NIR_SYSTEM, "value": "2 79 03 51 215 189 89"},
    )
    assert patient_identifier(patient) == (INS_NIR_SYSTEM, INS)
    assert patient_pid(KEY, patient) == pseudonymise(KEY, INS_NIR_SYSTEM, INS)


def test_the_same_patient_in_two_hospitals_gets_one_pid() -> None:
    at_lyon = _patient(
        {"system": LOCAL, "value": "00451287"}, {"system": INS_NIR_SYSTEM, "value": INS}
    )
    at_nantes = _patient({"system": "urn:oid:1.2.250.1.71.4.2.7.440000289", "value": "IPP-1"},
                         {"system": INS_NIR_SYSTEM, "value": INS})  # fmt: skip
    assert patient_pid(KEY, at_lyon) == patient_pid(KEY, at_nantes)


def test_without_ins_the_first_identifier_with_a_system_is_used() -> None:
    patient = _patient(
        {"value": "no-system"},
        {"use": "old", "system": "urn:old", "value": "retired"},
        {"system": LOCAL, "value": "00451287"},
        {"system": "urn:other", "value": "x"},
    )
    assert patient_identifier(patient) == (LOCAL, "00451287")
    assert patient_pid(KEY, patient) == pseudonymise(KEY, LOCAL, "00451287")


def test_a_malformed_ins_is_refused_rather_than_silently_replaced() -> None:
    patient = _patient(
        {"system": LOCAL, "value": "00451287"},
        {"system": INS_NIR_SYSTEM, "value": "279035121518988"},
    )
    with pytest.raises(InvalidINS) as error:
        patient_pid(KEY, patient)
    assert "279035121518988" not in str(error.value)


def test_a_patient_without_usable_identifier_is_refused() -> None:
    with pytest.raises(NoPatientIdentifier):
        patient_pid(KEY, _patient({"value": "123"}))
    with pytest.raises(NoPatientIdentifier):
        patient_pid(KEY, {"resourceType": "Patient"})
    with pytest.raises(ValueError, match="Patient"):
        patient_pid(KEY, {"resourceType": "Observation"})
