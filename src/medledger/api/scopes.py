"""SMART App Launch scopes, v1 and v2, and what each interaction needs.

v1: `patient/Observation.read`, `user/*.write`, ...; v2: `patient/Observation.rs`,
`user/*.cruds`, `system/*.rs` (c=create r=read u=update d=delete s=search). A v1 `read`
grants read and search, `write` grants create, update and delete. `patient/` scopes limit the
caller to the patient of its launch context; `user/` to what the user may see; `system/` is
a backend service acting for the hospital.

A v2 scope may narrow itself with search parameters. The one honoured here is `category`
(`patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory`,
several values comma-separated, `system|code` or a bare `code`): the scope then reaches only the
resources that carry one of those category codings, exactly as a FHIR search on `category`
would match them. Any other parameter is refused (`ScopeError`) when the token is used, never
silently dropped, since dropping it would widen the scope.

`permission` is the one decision both the FHIR API and the pages use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

_SCOPE = re.compile(
    r"^(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>read|write|\*|[cruds]+)"
    r"(?:\?(?P<query>.*))?$"
)
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_MAX_CATEGORIES = 32

INTERACTION_LETTER = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}


class ScopeError(ValueError):
    """A scope this server cannot honour exactly; the message names the scope and why."""


@dataclass(frozen=True)
class Grant:
    level: str
    resource_type: str
    letters: str
    categories: frozenset[str] | None = None  # None: not narrowed; else `system|code` or `code`


@dataclass(frozen=True)
class Permission:
    """What a token's scopes allow for one interaction on one resource type."""

    levels: frozenset[str]
    categories: frozenset[str] | None  # None: every resource of the type

    def __bool__(self) -> bool:
        return bool(self.levels)

    def covers(self, resource: Mapping[str, Any]) -> bool:
        """Whether this resource is within the scope's category restriction (if any)."""
        if not self.levels:
            return False
        if self.categories is None:
            return True
        return bool(self.categories & category_tokens(resource))


def _restriction(scope: str, query: str) -> frozenset[str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ScopeError(f"scope {scope!r}: its restriction is not a query string") from None
    values: set[str] = set()
    for name, value in pairs:
        if name != "category":
            raise ScopeError(
                f"scope {scope!r}: restriction {name!r} is not supported here (only category)"
            )
        for item in value.split(","):
            system, bar, code = item.rpartition("|")
            if not code or (bar and not system):
                raise ScopeError(f"scope {scope!r}: category {item!r} is not system|code or code")
            values.add(item)
    if not values or len(values) > _MAX_CATEGORIES:
        raise ScopeError(f"scope {scope!r}: 1..{_MAX_CATEGORIES} category values")
    return frozenset(values)


@functools.lru_cache(maxsize=1024)  # asked once per record a search or a document serves
def parse_scope(scope: str) -> Grant | None:
    """The grant of a resource scope; None for other scopes (`launch`, `openid`, ...).

    Raises ScopeError for a resource scope narrowed in a way this server does not honour."""
    m = _SCOPE.match(scope)
    if m is None:
        return None
    perm = m.group("perm")
    letters = _V1.get(perm, perm)
    if perm not in _V1 and list(letters) != sorted(set(letters), key="cruds".index):
        return None  # v2 letters must appear once each, in c r u d s order
    query = m.group("query")
    categories = None if query is None else _restriction(scope, query)
    return Grant(m.group("level"), m.group("type"), letters, categories)


def grants(scopes: Iterable[str]) -> list[Grant]:
    """Every resource grant of a token (ScopeError if one of its scopes cannot be honoured)."""
    found = []
    for scope in sorted(scopes):
        grant = parse_scope(scope)
        if grant is not None:
            found.append(grant)
    return found


def permission(scopes: Iterable[str], resource_type: str, interaction: str) -> Permission:
    """What these scopes allow for `interaction` on `resource_type`: at which levels, and
    restricted to which categories. Several grants add up; an unrestricted one wins."""
    letter = INTERACTION_LETTER[interaction]
    levels: set[str] = set()
    categories: set[str] | None = set()
    for grant in grants(scopes):
        if grant.resource_type not in ("*", resource_type) or letter not in grant.letters:
            continue
        levels.add(grant.level)
        if grant.categories is None:
            categories = None
        elif categories is not None:
            categories |= grant.categories
    return Permission(frozenset(levels), None if categories is None else frozenset(categories))


def allowed_levels(scopes: frozenset[str], resource_type: str, interaction: str) -> set[str]:
    """The levels (patient, user, system) at which these scopes allow the interaction."""
    return set(permission(scopes, resource_type, interaction).levels)


def category_tokens(resource: Mapping[str, Any]) -> set[str]:
    """A resource's category codings as `system|code` and bare `code` (what a scope names)."""
    raw = resource.get("category")
    concepts = raw if isinstance(raw, list) else [raw]
    found: set[str] = set()
    for concept in concepts:
        codings = concept.get("coding") if isinstance(concept, Mapping) else None
        for coding in codings if isinstance(codings, list) else []:
            if not isinstance(coding, Mapping) or not isinstance(coding.get("code"), str):
                continue
            code = coding["code"]
            found.add(code)
            if isinstance(coding.get("system"), str):
                found.add(f"{coding['system']}|{code}")
    return found
