"""The INS: which values are accepted, why others are refused, and that it never leaks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.interop.ins import (
    INS_NIA_SYSTEM,
    INS_NIR_SYSTEM,
    INS_NIR_TEST_SYSTEM,
    InvalidINS,
    compute_key,
    is_ins_system,
    is_valid_ins,
    make_ins,
    parse_ins,
)

DIGITS = "0123456789"
sex_digit = st.sampled_from("123478")
plain_number = st.builds(
    lambda s, rest: s + rest, sex_digit, st.text(DIGITS, min_size=12, max_size=12)
)
corsican_number = st.builds(
    lambda s, head, dept, tail: s + head + dept + tail,
    sex_digit,
    st.text(DIGITS, min_size=4, max_size=4),
    st.sampled_from(["2A", "2B"]),
    st.text(DIGITS, min_size=6, max_size=6),
)
any_number = st.one_of(plain_number, corsican_number)


def reference_key(number: str) -> int:
    """The key as INSEE defines it, written independently of the code under test."""
    value = int(number.replace("2A", "19").replace("2B", "18"))
    return 97 - value % 97


def test_published_examples_are_accepted() -> None:
    # python-stdnum's test vectors (incl. both Corsican departments) and the ANS test identity
    # of the IHE PAM France examples.
    for value in ("295109912611193", "253072A07300443", "253072B07300470", "279035121518989"):
        assert parse_ins(value).value == value


def test_spaces_and_case_are_normalised() -> None:
    assert parse_ins("2 95 10 99 126 111 93").value == "295109912611193"
    assert parse_ins(" 2 53 07 2a 073 004 43 ").value == "253072A07300443"
    assert (
        parse_ins("2\u00a095\u00a010\u00a099\u00a0126\u00a0111\u00a093").value == "295109912611193"
    )


@given(any_number)
def test_any_number_with_its_computed_key_is_accepted(number: str) -> None:
    key = reference_key(number)
    ins = parse_ins(f"{number}{key:02d}")
    assert ins.number == number
    assert ins.key == f"{key:02d}"
    assert compute_key(number) == key


@given(any_number, st.integers(min_value=0, max_value=99))
def test_any_other_key_is_refused(number: str, key: int) -> None:
    if key == reference_key(number):
        return
    with pytest.raises(InvalidINS) as error:
        parse_ins(f"{number}{key:02d}")
    assert str(error.value) in (
        f"key {key:02d} does not match computed {reference_key(number):02d}",
        f"key {key:02d} is outside 01..97",
    )


@given(sex_digit, st.text(DIGITS, min_size=4, max_size=4), st.text(DIGITS, min_size=6, max_size=6))
def test_corsica_2a_reads_as_19_and_2b_as_18(sex: str, head: str, tail: str) -> None:
    for letters, digits, correction in (("2A", "19", 1_000_000), ("2B", "18", 2_000_000)):
        corsican = sex + head + letters + tail
        assert compute_key(corsican) == compute_key(sex + head + digits + tail)
        # The other formulation of the same rule: letter read as 0, then subtract.
        as_twenty = int(sex + head + "20" + tail) - correction
        assert compute_key(corsican) == 97 - as_twenty % 97


@given(any_number, st.integers(min_value=0, max_value=14), st.sampled_from(DIGITS + "AB"))
def test_the_ins_never_appears_in_an_error_message(number: str, position: int, char: str) -> None:
    valid = f"{number}{reference_key(number):02d}"
    mutated = valid[:position] + char + valid[position + 1 :]
    for candidate in (mutated, mutated[:-1], mutated + "0", " ".join(mutated)):
        try:
            parse_ins(candidate)
        except InvalidINS as error:
            text = f"{error} {error!r}"
            assert candidate.replace(" ", "") not in text
            assert number not in text
            assert error.__cause__ is None and error.__context__ is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "2951099126111",
            "the INS must have 15 characters (13-character number and 2-digit key), got 13",
        ),
        (
            "29510991261119300",
            "the INS must have 15 characters (13-character number and 2-digit key), got 17",
        ),
        ("2951099126111-93", "character 14 is not allowed"),
        ("29510X9912611193", "character 6 is not allowed"),
        ("253072C07300443", "character 7 is not allowed"),
        ("2530A2207300443", "letters are only allowed as the Corsican department"),
        ("595109912611193", "sex digit 5 is not one of 1, 2, 3, 4, 7, 8"),
        ("295109912611199", "key 99 is outside 01..97"),
        ("295109912611194", "key 94 does not match computed 93"),
        ("", "the INS is empty"),
    ],
)
def test_refusals_say_why(value: str, reason: str) -> None:
    with pytest.raises(InvalidINS) as error:
        parse_ins(value)
    assert reason in str(error.value)
    assert not is_valid_ins(value)


def test_an_ins_object_does_not_print_its_value() -> None:
    ins = parse_ins("295109912611193")
    assert repr(ins) == str(ins) == "INS(<redacted>)"
    assert f"{ins}" == "INS(<redacted>)"
    assert ins.formatted() == "2 95 10 99 126 111 93"
    assert ins.sex_digit == "2" and not ins.corsican
    assert parse_ins("253072A07300443").corsican


def test_make_ins_appends_the_key() -> None:
    assert make_ins("2951099126111").value == "295109912611193"


def test_ins_systems() -> None:
    assert is_ins_system(INS_NIR_SYSTEM)
    assert is_ins_system(INS_NIA_SYSTEM)
    assert is_ins_system(INS_NIR_TEST_SYSTEM)
    assert is_ins_system("1.2.250.1.213.1.4.8")  # bare OID, as in HL7 v2
    assert is_ins_system("urn:oid:1.2.250.1.213.1.4.11")
    assert not is_ins_system("urn:oid:1.2.250.1.213.1.4.2")  # retired INS-C
    assert not is_ins_system(None)
