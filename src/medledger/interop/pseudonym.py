"""Patient pseudonyms: the only form in which a patient appears on the chain.

`pid = HMAC-SHA256(consortium pseudonymisation key, "system|value")`, hex. Every hospital holds
the same key, so the same INS gives the same pid everywhere, which is what lets a patient's
records held by several hospitals meet on the ledger. Without the key, a pid cannot be reversed
nor recomputed from a guessed INS (a plain hash of a 15-digit number could be brute-forced).

The canonical string must not depend on how the identifier was typed: INS values are validated
and normalised (no spaces, 2A/2B upper-case), systems are written as FHIR does (`urn:oid:...`
for a bare OID), and every value is Unicode NFC-normalised. A patient without INS is
pseudonymised the same way from a local identifier (system of the hospital + value); such a pid
only links records within that identifier's domain.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from medledger.interop.ins import (
    INS_NIA_SYSTEM,
    INS_NIR_DEMO_SYSTEM,
    INS_NIR_SYSTEM,
    INS_NIR_TEST_SYSTEM,
    InvalidINS,
    is_ins_system,
    parse_ins,
)

MIN_KEY_BYTES = 16
INS_SYSTEM_TAG = "urn:medledger:ins"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
#: When a Patient carries several INS, the one used for the pid (real NIR first).
_INS_PREFERENCE = (INS_NIR_SYSTEM, INS_NIA_SYSTEM, INS_NIR_TEST_SYSTEM, INS_NIR_DEMO_SYSTEM)


class NoPatientIdentifier(ValueError):
    """The Patient has no identifier from which a pseudonym can be derived."""


def canonical_system(system: str) -> str:
    """The FHIR spelling of an identifier system: a bare OID becomes `urn:oid:<oid>`."""
    system = unicodedata.normalize("NFC", system.strip())
    if _OID.match(system):
        return f"urn:oid:{system}"
    return system


def canonical_identifier(system: str, value: str) -> str:
    """The exact string that is hashed: `system|value`, normalised as described above.

    Raises `InvalidINS` for an INS system with an invalid value, `ValueError` for an empty
    part or a `|` in the system (which would make two identifiers collide).
    """
    system = canonical_system(system)
    if not system:
        raise ValueError("the identifier system is empty")
    if "|" in system:
        raise ValueError("the identifier system may not contain '|'")
    if is_ins_system(system):
        # One national number space: the same INS gives the same pid whichever INS system
        # (NIR, NIA, test or demo NIR) a hospital filed it under.
        return f"{INS_SYSTEM_TAG}|{parse_ins(value).value}"
    else:
        value = unicodedata.normalize("NFC", value.strip())
        if not value:
            raise ValueError("the identifier value is empty")
    return f"{system}|{value}"


def pseudonymise(key: bytes, system: str, value: str) -> str:
    """The patient's pid: hex HMAC-SHA256 of `system|value` under the consortium's key."""
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the pseudonymisation key must be at least {MIN_KEY_BYTES} bytes")
    message = canonical_identifier(system, value).encode("utf-8")
    return hmac.new(bytes(key), message, hashlib.sha256).hexdigest()


def patient_identifier(resource: Mapping[str, Any]) -> tuple[str, str]:
    """The (system, value) a Patient is pseudonymised from.

    The INS when present (validated: a malformed INS raises `InvalidINS` rather than silently
    falling back to a local identifier, which would split the patient in two), else the first
    identifier with both a system and a value. Identifiers marked `use: old` are skipped.
    """
    if resource.get("resourceType") not in (None, "Patient"):
        raise ValueError("a pseudonym is derived from a Patient resource")
    identifiers = [
        i
        for i in resource.get("identifier") or ()
        if isinstance(i, Mapping) and i.get("use") != "old"
    ]
    ins = [
        i
        for i in identifiers
        if isinstance(i.get("system"), str) and is_ins_system(canonical_system(i["system"]))
    ]
    if ins:
        ins.sort(key=lambda i: _INS_PREFERENCE.index(canonical_system(i["system"])))
        chosen = ins[0]
        value = chosen.get("value")
        if not isinstance(value, str):
            raise InvalidINS("the INS identifier has no value")
        system = canonical_system(chosen["system"])
        return system, parse_ins(value).value
    for identifier in identifiers:
        local_system, local_value = identifier.get("system"), identifier.get("value")
        if (
            isinstance(local_system, str)
            and local_system.strip()
            and isinstance(local_value, str)
            and local_value.strip()
        ):
            return canonical_system(local_system), local_value.strip()
    raise NoPatientIdentifier("the Patient has no INS and no identifier with a system and value")


def patient_pid(key: bytes, resource: Mapping[str, Any]) -> str:
    """The pid of a FHIR Patient (as a dict): from its INS if present, else a local identifier."""
    system, value = patient_identifier(resource)
    return pseudonymise(key, system, value)
