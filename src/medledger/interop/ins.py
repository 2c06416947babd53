"""The French national health identifier (INS): validation, without ever leaking it.

The INS is the patient's NIR (the 13-character social-security number) or, while a NIR is being
attributed, a NIA of the same shape, followed by a 2-digit control key. It is a direct
identifier: medledger only ever hashes it into a pseudonym (`pseudonym.py`). To keep it out of
logs and tracebacks, `InvalidINS` messages describe what is wrong without quoting the value,
`INS` objects print as ``INS(<redacted>)``, and internal conversions never raise an exception
that would carry the text.

Structure of the 13 characters (INSEE): sex (1), year (2), month (2), department (2),
commune (3), order (3). The key is ``97 - (number mod 97)``, from 01 to 97.

Corsica. Since 1976 Corsica's departments are 2A and 2B, which puts letters in the number. For
the key, the number is read with 2A replaced by 19 and 2B by 18. Equivalently, replace the
letter by 0 and subtract 1,000,000 (2A) or 2,000,000 (2B): the department digits sit at the
10^7 and 10^6 places, so "20" - 1,000,000 reads as "19" and "20" - 2,000,000 as "18". (Replacing
by 19 *and* subtracting would count the correction twice.) Sources: INSEE's NIR schema
(http://xml.insee.fr/schema/nir.html), fr.wikipedia.org/wiki/Numéro_de_sécurité_sociale_en_France,
and python-stdnum's `stdnum.fr.nir`, whose published test vectors 253072A07300443 and
253072B07300470 our tests replay.

Identifier systems (OIDs of the INS assigning authorities, as used by the ANS "Référentiel INS",
the IHE PAM France HL7 v2 profile and the FR Core FHIR profile `fr-core-patient-ins`):
NIR 1.2.250.1.213.1.4.8, NIA 1.2.250.1.213.1.4.9, test NIR 1.2.250.1.213.1.4.10,
demonstration NIR 1.2.250.1.213.1.4.11.
"""

from __future__ import annotations

from dataclasses import dataclass

INS_NIR_OID = "1.2.250.1.213.1.4.8"
INS_NIA_OID = "1.2.250.1.213.1.4.9"
INS_NIR_TEST_OID = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO_OID = "1.2.250.1.213.1.4.11"

INS_NIR_SYSTEM = f"urn:oid:{INS_NIR_OID}"
INS_NIA_SYSTEM = f"urn:oid:{INS_NIA_OID}"
INS_NIR_TEST_SYSTEM = f"urn:oid:{INS_NIR_TEST_OID}"
INS_NIR_DEMO_SYSTEM = f"urn:oid:{INS_NIR_DEMO_OID}"

#: FHIR identifier system -> FR Core identifier type code (CodeSystem fr-core-cs-v2-0203).
INS_SYSTEMS: dict[str, str] = {
    INS_NIR_SYSTEM: "INS-NIR",
    INS_NIA_SYSTEM: "INS-NIA",
    INS_NIR_TEST_SYSTEM: "INS-NIR-TEST",
    INS_NIR_DEMO_SYSTEM: "INS-NIR-DEMO",
}

#: FR Core's identifier-type code system, where INS-NIR, INS-NIA... are defined.
FR_CORE_IDENTIFIER_TYPE_SYSTEM = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"

#: First digit: 1/2 man/woman; 3/4 are used for people born abroad whose NIR is being
#: attributed; 7/8 for temporary numbers (NIA and "NIR provisoire").
SEX_DIGITS = frozenset("123478")

_CORSICA = {"2A": "19", "2B": "18"}
_WHITESPACE = frozenset(" \t\u00a0\u202f")
_ALLOWED = frozenset("0123456789AB")


class InvalidINS(ValueError):
    """The value is not a well-formed INS. The message never contains the value itself."""


@dataclass(frozen=True, slots=True, repr=False)
class INS:
    """A validated INS, normalised to its 15 characters (no spaces, Corsican letters upper-case).

    `repr()` and `str()` hide the value so that an INS logged by mistake does not leak;
    read `.value` explicitly where the value is needed (pseudonymisation, the vault).
    """

    value: str

    @property
    def number(self) -> str:
        """The 13-character number, without its key."""
        return self.value[:13]

    @property
    def key(self) -> str:
        """The 2-digit control key."""
        return self.value[13:]

    @property
    def sex_digit(self) -> str:
        return self.value[0]

    @property
    def corsican(self) -> bool:
        return self.value[5:7] in _CORSICA

    def formatted(self) -> str:
        """The usual printed form, `1 84 12 75 108 123 45` (for display to the patient only)."""
        v = self.value
        return " ".join((v[0], v[1:3], v[3:5], v[5:7], v[7:10], v[10:13], v[13:]))

    def __repr__(self) -> str:
        return "INS(<redacted>)"

    __str__ = __repr__


def compute_key(number: str) -> int:
    """The control key (1..97) of a 13-character NIR/NIA number, Corsican letters allowed.

    Raises `InvalidINS` (without the value) if `number` is not 13 digits, 2A/2B aside.
    """
    if len(number) != 13:
        raise InvalidINS(f"the number must have 13 characters, got {len(number)}")
    department = number[5:7].upper()
    if department in _CORSICA:
        number = number[:5] + _CORSICA[department] + number[7:]
    if not number.isascii() or not number.isdigit():
        raise InvalidINS("the number must be made of digits (2A/2B aside)")
    return 97 - int(number) % 97


def parse_ins(text: str) -> INS:
    """Validate and normalise an INS typed or received in any usual format.

    Spaces (and non-breaking spaces) are ignored, so `1 84 12 75 108 123 45` and
    `184127510812345` are the same INS. Refuses, with the reason: a wrong length, characters
    other than digits (letters only as the Corsican departments 2A/2B), a sex digit outside
    1, 2, 3, 4, 7, 8, and a key that does not match the number.
    """
    if not isinstance(text, str):
        raise InvalidINS(f"the INS must be a string, got {type(text).__name__}")
    compact = "".join(c for c in text if c not in _WHITESPACE).upper()
    if not compact:
        raise InvalidINS("the INS is empty")
    for position, char in enumerate(compact, start=1):
        if char not in _ALLOWED:
            raise InvalidINS(
                f"the INS may only contain digits (and 2A/2B for Corsica): "
                f"character {position} is not allowed"
            )
    if len(compact) != 15:
        raise InvalidINS(
            f"the INS must have 15 characters (13-character number and 2-digit key), "
            f"got {len(compact)}"
        )
    letters = [i for i, c in enumerate(compact) if not c.isdigit()]
    if letters and (compact[5:7] not in _CORSICA or letters != [6]):
        raise InvalidINS(
            "letters are only allowed as the Corsican department (2A or 2B, characters 6-7)"
        )
    if compact[0] not in SEX_DIGITS:
        raise InvalidINS(f"sex digit {compact[0]} is not one of 1, 2, 3, 4, 7, 8")
    key = int(compact[13:])
    if not 1 <= key <= 97:
        raise InvalidINS(f"key {compact[13:]} is outside 01..97")
    computed = compute_key(compact[:13])
    if key != computed:
        raise InvalidINS(f"key {compact[13:]} does not match computed {computed:02d}")
    return INS(compact)


def is_valid_ins(text: str) -> bool:
    """True when `parse_ins` would accept `text`."""
    try:
        parse_ins(text)
    except InvalidINS:
        return False
    return True


def make_ins(number: str) -> INS:
    """Append the computed key to a 13-character number (used by the synthetic generator)."""
    return parse_ins(number + f"{compute_key(number):02d}")


def is_ins_system(system: str | None) -> bool:
    """True for the identifier systems of the INS (NIR, NIA, test and demonstration NIR).

    Accepts the FHIR form (`urn:oid:1.2.250.1.213.1.4.8`) and the bare OID used in HL7 v2.
    """
    if not system:
        return False
    return system in INS_SYSTEMS or f"urn:oid:{system}" in INS_SYSTEMS
