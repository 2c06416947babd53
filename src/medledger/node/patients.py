"""Finding a patient's pid from what a person types: an INS, or the pid itself.

The INS never leaves these functions: it is validated, pseudonymised under the consortium
key, and forgotten. The pid of an INS does not depend on the INS system it was filed under.
"""

from __future__ import annotations

import re

from medledger.interop.ins import INS_NIR_SYSTEM, InvalidINS, parse_ins
from medledger.interop.pseudonym import pseudonymise

_PID = re.compile(r"^[0-9a-f]{64}$")


def pid_of_ins(key: bytes, ins: str) -> str:
    """The pid of an INS (raises ValueError with the reason, never the value)."""
    try:
        parse_ins(ins)
    except InvalidINS as exc:
        raise ValueError(f"--patient: not a valid INS: {exc}") from None
    return pseudonymise(key, INS_NIR_SYSTEM, ins)


def resolve_pid(key: bytes, patient: str) -> str:
    """A pid typed as such, or the pid of an INS."""
    text = patient.strip().lower()
    if _PID.match(text):
        return text
    return pid_of_ins(key, patient)
