"""SMART App Launch scopes, v1 and v2, and what each interaction needs.

v1: `patient/Observation.read`, `user/*.write`, ...; v2: `patient/Observation.rs`,
`user/*.cruds`, `system/*.rs` (c=create r=read u=update d=delete s=search). A v1 `read`
grants read and search, `write` grants create, update and delete. `patient/` scopes limit the
caller to the patient of its launch context; `user/` to what the user may see; `system/` is
a backend service acting for the hospital.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SCOPE = re.compile(
    r"^(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>read|write|\*|[cruds]+)"
    r"(?:\?.*)?$"
)
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

INTERACTION_LETTER = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}


@dataclass(frozen=True)
class Grant:
    level: str
    resource_type: str
    letters: str


def parse_scope(scope: str) -> Grant | None:
    m = _SCOPE.match(scope)
    if m is None:
        return None
    perm = m.group("perm")
    letters = _V1.get(perm, perm)
    if perm not in _V1 and list(letters) != sorted(set(letters), key="cruds".index):
        return None  # v2 letters must appear once each, in c r u d s order
    return Grant(m.group("level"), m.group("type"), letters)


def allowed_levels(scopes: frozenset[str], resource_type: str, interaction: str) -> set[str]:
    """The levels (patient, user, system) at which these scopes allow the interaction."""
    letter = INTERACTION_LETTER[interaction]
    levels = set()
    for scope in scopes:
        grant = parse_scope(scope)
        if grant is None:
            continue
        if grant.resource_type in ("*", resource_type) and letter in grant.letters:
            levels.add(grant.level)
    return levels
