"""Finding a patient's pid from what a person types: an INS, or the pid itself.

The INS never leaves this function: it is validated, pseudonymised under the consortium key,
and forgotten. Several INS systems exist (NIR, NIA, test and demo NIRs); the pid that the
hospital's data actually uses is the one returned.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from medledger.interop.ins import (
    INS_NIA_SYSTEM,
    INS_NIR_DEMO_SYSTEM,
    INS_NIR_SYSTEM,
    INS_NIR_TEST_SYSTEM,
    InvalidINS,
    parse_ins,
)
from medledger.interop.pseudonym import pseudonymise

_PID = re.compile(r"^[0-9a-f]{64}$")
_SYSTEMS = (INS_NIR_SYSTEM, INS_NIA_SYSTEM, INS_NIR_TEST_SYSTEM, INS_NIR_DEMO_SYSTEM)


def candidate_pids(key: bytes, ins: str) -> list[str]:
    """The pid of this INS under each INS system (raises InvalidINS with the reason)."""
    try:
        parse_ins(ins)
    except InvalidINS as exc:
        raise ValueError(f"--patient: not a valid INS: {exc}") from None
    return [pseudonymise(key, system, ins) for system in _SYSTEMS]


def resolve_pid(key: bytes, patient: str, *known: Callable[[str], bool]) -> str:
    """A pid typed as such, or the pid of an INS: the first candidate that a `known` check
    accepts (this hospital's vault, then the chain), else the NIR one."""
    text = patient.strip().lower()
    if _PID.match(text):
        return text
    pids = candidate_pids(key, patient)
    for is_known in known:
        for pid in pids:
            if is_known(pid):
                return pid
    return pids[0]
