"""FHIR R4 search: what a search asks, which resources answer it, and the pages it is served in.

`TYPES` is the one table of what can be searched: per resource type, each parameter's kind
(token, reference, date, string) and the element paths it reads (`effective[x]` is any choice
of `effective`). A type is one entry; the routes, the matcher and the CapabilityStatement all
read it. `COMMON` holds `_id` and `_lastUpdated` (every type).

`parse` turns a query string into a `Query`: the filters (comma = OR inside one parameter, a
repeated parameter = AND), `_sort`, `_count`, `_summary`, `_elements`, `_include` and
`_revinclude`. What this server cannot apply exactly (an unknown name, a modifier or prefix it
does not implement, an empty value) is never applied halfway: it is listed in
`Query.not_applied`, left out of the self link (`Query.applied`), and reported to the client in
an OperationOutcome entry, or refused with 400 under `Prefer: handling=strict`. A known
parameter with a malformed value is always a 400 naming it.

Matching (`Filter.matches`) runs on the decrypted JSON of a record, as FHIR R4 defines each
kind (https://hl7.org/fhir/R4/search.html): tokens `code`, `system|code`, `|code`, `system|`
and `:text` / `:not`; references `Type/id`, `id`, an absolute URL, `:Type`; dates as ranges
with the prefixes eq ne lt le gt ge sa eb at any precision (a date without a time zone is
UTC); strings case- and accent-insensitive, starting with the value (`:exact`, `:contains`);
`:missing` for every kind.

A result is frozen at its first page (`Snapshots`): the (rid, version) of each match, kept
under an unguessable token bound to its caller, bounded in number of entries and in age, so
that every page link serves the same result whatever arrives or changes meanwhile.
"""

from __future__ import annotations

import calendar
import re
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import urlencode

import orjson

from medledger.api.outcomes import FhirError

Kind = Literal["token", "reference", "date", "string"]
#: `_count` when the client gives none, and the most one page holds.
DEFAULT_COUNT = 50
MAX_COUNT = 1000
#: Included resources (`_include`, `_revinclude`) per page; beyond, the page says so.
MAX_INCLUDED = 1000
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}


@dataclass(frozen=True)
class Param:
    """One search parameter of a type: its kind and the element paths it reads."""

    kind: Kind
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference: the types it may point at
    doc: str = ""
    closed: tuple[str, ...] = ()  # token: the only codes it can take (a boolean's)


def _t(*paths: str, doc: str = "") -> Param:
    return Param("token", paths, doc=doc)


def _d(*paths: str, doc: str = "") -> Param:
    return Param("date", paths, doc=doc)


def _s(*paths: str) -> Param:
    return Param("string", paths)


def _r(*paths: str, to: tuple[str, ...]) -> Param:
    return Param("reference", paths, to)


_PATIENT = ("Patient",)
_PATIENT_DOC = "the patient's id here (or its pid), Patient/<id> or an absolute URL"
_SUBJECT = _r("subject", to=_PATIENT)
_PATIENT_OF_SUBJECT = Param("reference", ("subject",), _PATIENT, _PATIENT_DOC)
_PATIENT_OF_PATIENT = Param("reference", ("patient",), _PATIENT, _PATIENT_DOC)
_ENCOUNTER = _r("encounter", to=("Encounter",))


@dataclass(frozen=True)
class TypeSearch:
    """What a type can be searched by, and the elements `_elements` always keeps (min 1)."""

    params: Mapping[str, Param]
    mandatory: tuple[str, ...] = ()


#: Every parameter whose value names the patient: the search is scoped to that patient's
#: records (the route turns it into the patient's pid), not matched element by element.
PATIENT_PARAMS = ("patient", "subject")

COMMON: dict[str, Param] = {
    "_id": _t("id", doc="the resource's id here"),
    "_lastUpdated": _d("@lastUpdated", doc="when this version was committed (block time)"),
}

TYPES: dict[str, TypeSearch] = {
    "Patient": TypeSearch(
        {
            "identifier": _t("identifier", doc="system|value finds the patient by pseudonym"),
            "active": Param("token", ("active",), closed=("true", "false")),
            "gender": _t("gender"),
            "birthdate": _d("birthDate"),
            "name": _s("name"),
            "family": _s("name.family"),
            "given": _s("name.given"),
            "address-city": _s("address.city"),
            "address-postalcode": _s("address.postalCode"),
        }
    ),
    "Observation": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "code": _t("code"),
            "category": _t("category"),
            "status": _t("status"),
            "date": _d("effective[x]"),
            "encounter": _ENCOUNTER,
            "combo-code": _t("code", "component.code"),
            "component-code": _t("component.code"),
            "based-on": _r("basedOn", to=("ServiceRequest", "MedicationRequest", "CarePlan")),
            "performer": _r(
                "performer", to=("Practitioner", "PractitionerRole", "Organization", "Patient")
            ),
        },
        ("status", "code"),
    ),
    "Condition": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "code": _t("code"),
            "category": _t("category"),
            "clinical-status": _t("clinicalStatus"),
            "verification-status": _t("verificationStatus"),
            "severity": _t("severity"),
            "onset-date": _d("onset[x]"),
            "recorded-date": _d("recordedDate"),
            "date": _d("onset[x]", "recordedDate", doc="onset[x] or recordedDate (not in R4)"),
            "encounter": _ENCOUNTER,
        },
        ("subject",),
    ),
    "AllergyIntolerance": TypeSearch(
        {
            "patient": _PATIENT_OF_PATIENT,
            "identifier": _t("identifier"),
            "code": _t("code", "reaction.substance"),
            "category": _t("category"),
            "clinical-status": _t("clinicalStatus"),
            "verification-status": _t("verificationStatus"),
            "criticality": _t("criticality"),
            "type": _t("type"),
            "date": _d("recordedDate"),
            "onset": _d("reaction.onset"),
        },
        ("patient",),
    ),
    "Encounter": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "class": _t("class"),
            "type": _t("type"),
            "reason-code": _t("reasonCode"),
            "date": _d("period"),
            "service-provider": _r("serviceProvider", to=("Organization",)),
            "participant": _r("participant.individual", to=("Practitioner", "PractitionerRole")),
        },
        ("status", "class"),
    ),
    "MedicationRequest": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "intent": _t("intent"),
            "category": _t("category"),
            "code": _t("medicationCodeableConcept"),
            "medication": _r("medicationReference", to=("Medication",)),
            "authoredon": _d("authoredOn"),
            "encounter": _ENCOUNTER,
            "requester": _r("requester", to=("Practitioner", "PractitionerRole", "Organization")),
        },
        ("status", "intent", "medication[x]", "subject"),
    ),
    "MedicationStatement": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "category": _t("category"),
            "code": _t("medicationCodeableConcept"),
            "medication": _r("medicationReference", to=("Medication",)),
            "effective": _d("effective[x]"),
            "context": _r("context", to=("Encounter",)),
        },
        ("status", "medication[x]", "subject"),
    ),
    "DiagnosticReport": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "code": _t("code"),
            "category": _t("category"),
            "date": _d("effective[x]"),
            "issued": _d("issued"),
            "encounter": _ENCOUNTER,
            "result": _r("result", to=("Observation",)),
            "performer": _r("performer", to=("Practitioner", "PractitionerRole", "Organization")),
        },
        ("status", "code"),
    ),
    "Procedure": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "code": _t("code"),
            "category": _t("category"),
            "date": _d("performed[x]"),
            "encounter": _ENCOUNTER,
        },
        ("status", "subject"),
    ),
    "Immunization": TypeSearch(
        {
            "patient": _PATIENT_OF_PATIENT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "vaccine-code": _t("vaccineCode"),
            "date": _d("occurrence[x]"),
        },
        ("status", "vaccineCode", "patient", "occurrence[x]"),
    ),
    "ImagingStudy": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "modality": _t("series.modality"),
            "started": _d("started"),
            "encounter": _ENCOUNTER,
        },
        ("status", "subject"),
    ),
    "DocumentReference": TypeSearch(
        {
            "patient": _PATIENT_OF_SUBJECT,
            "subject": _SUBJECT,
            "identifier": _t("identifier"),
            "status": _t("status"),
            "type": _t("type"),
            "category": _t("category"),
            "date": _d("date"),
            "encounter": _r("context.encounter", to=("Encounter",)),
        },
        ("status", "content"),
    ),
}

_RESULT_PARAMS = ("_count", "_sort", "_summary", "_elements", "_include", "_revinclude")
_JSON_FORMATS = ("json", "application/json", "application/fhir+json")


def params_of(resource_type: str) -> dict[str, Param]:
    """Every parameter a type can be searched by (its own and the common ones)."""
    found = dict(COMMON)
    found.update(TYPES[resource_type].params if resource_type in TYPES else {})
    return found


# -- the query ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DateRange:
    """[low, high) in UTC; None is unbounded (a Period without start or end)."""

    low: datetime | None
    high: datetime | None


@dataclass(frozen=True)
class Value:
    """One OR'd value of a filter: its prefix (dates), system/code (tokens), or text."""

    raw: str
    prefix: str = "eq"
    system: str | None = None  # tokens: None when no `|` was given, "" for `|code`
    code: str = ""
    dates: DateRange | None = None
    ref_type: str | None = None  # references: `Type/id`
    ref_url: str | None = None  # references: an absolute URL as given


@dataclass(frozen=True)
class Filter:
    """One parameter occurrence: all its values are OR'd; several filters are AND'ed."""

    name: str  # as given, with its modifier: `code:text`
    param_name: str
    param: Param
    modifier: str
    values: tuple[Value, ...]

    def matches(self, resource: Mapping[str, Any], context: MatchContext) -> bool:
        found = _elements_at(resource, self.param.paths, context)
        if self.modifier == "missing":
            wanted = self.values[0].raw == "true"
            return (not found) == wanted
        if self.modifier == "not":
            return not any(_token_matches(v, e, "") for v in self.values for e in found)
        kind = self.param.kind
        if kind == "token":
            return any(_token_matches(v, e, self.modifier) for v in self.values for e in found)
        if kind == "date":
            ranges = [r for e in found for r in _ranges_of(e)]
            return any(_date_matches(v, r) for v in self.values for r in ranges)
        if kind == "reference":
            return any(
                _ref_matches(v, e, self.modifier, context) for v in self.values for e in found
            )
        texts = [t for e in found for t in _strings(e)]
        return any(_string_matches(v.raw, t, self.modifier) for v in self.values for t in texts)


@dataclass(frozen=True)
class Include:
    """`_include=Source:param[:Target]` or `_revinclude=...` (reverse: Source points at us)."""

    source: str
    param_name: str
    target: str | None
    reverse: bool

    @property
    def param(self) -> Param:
        return params_of(self.source)[self.param_name]

    def text(self) -> str:
        return ":".join(p for p in (self.source, self.param_name, self.target) if p)


@dataclass
class Query:
    """A parsed search: filters, result parameters, and what was not applied (and why)."""

    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    count: int = DEFAULT_COUNT
    summary_count: bool = False
    elements: frozenset[str] | None = None  # `_elements` / `_summary=data`: kept elements
    drop_text: bool = False
    includes: list[Include] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)
    not_applied: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    served: frozenset[str] = frozenset(TYPES)

    def filters_named(self, *names: str) -> list[Filter]:
        return [f for f in self.filters if f.param_name in names]

    def self_query(self) -> str:
        """The query string of exactly what was applied (the self link)."""
        return urlencode(self.applied)

    def subsets(self) -> bool:
        return self.elements is not None or self.drop_text


@dataclass(frozen=True)
class MatchContext:
    """What matching needs beyond the resource: this server's base URL (absolute references
    to it are local) and each record's committed time (`_lastUpdated`)."""

    base: str
    last_updated: datetime | None = None


def strict_handling(prefer: str) -> bool:
    """Whether a `Prefer` header asks for `handling=strict` (unknown parameters are errors)."""
    return any(p.strip().replace(" ", "") == "handling=strict" for p in prefer.split(";"))


def parse(
    resource_type: str,
    items: Iterable[tuple[str, str]],
    *,
    strict: bool,
    base: str,
    served: Iterable[str] = TYPES,
) -> Query:
    """The search a query string asks for (400 for a malformed value of a known parameter,
    and under `strict` for anything not applied). `served`: the types this server serves
    (an `_include` of another type is not applied)."""
    query = Query(resource_type, served=frozenset(served))
    known = params_of(resource_type)
    for name, value in items:
        if name == "_format":
            if value in _JSON_FORMATS or value.startswith("application/fhir+json"):
                continue  # the only format served
            query.not_applied.append((name, "only JSON is served"))
        elif name in _RESULT_PARAMS:
            _result_param(query, name, value, known)
        else:
            _filter_param(query, name, value, known, base)
    refuse_if_strict(query.not_applied, strict)
    return query


def parse_limited(
    resource_type: str,
    items: Iterable[tuple[str, str]],
    *,
    strict: bool,
    keep: Sequence[str],
    why: str,
) -> tuple[Query, dict[str, str]]:
    """For a page link and `$everything`: `_count` applies, the names in `keep` are handed
    back to the caller, anything else is not applied (`why`), or refused under `strict`."""
    query = Query(resource_type)
    kept: dict[str, str] = {}
    for name, value in items:
        if name == "_count":
            _result_param(query, name, value, {})
        elif name == "_format" and value in _JSON_FORMATS:
            continue
        elif name in keep:
            kept[name] = value
        else:
            query.not_applied.append((name, why))
    refuse_if_strict(query.not_applied, strict)
    return query, kept


def read_view(resource_type: str, items: Iterable[tuple[str, str]]) -> Query | None:
    """What a read's (or vread's) query asks of the resource: `_elements`, `_summary=data`
    (or `false`), applied as a search applies them (`subset`); None for the whole resource.
    A read has no Bundle to report a parameter it left out, so anything else is a 400 naming
    it, never a whole resource that looks like what was asked. `_format` (JSON) and `_pretty`
    change no content."""
    query = Query(resource_type)
    for name, value in items:
        if name == "_format" and (
            value in _JSON_FORMATS or value.startswith("application/fhir+json")
        ):
            continue
        if name == "_pretty":
            continue
        if name == "_summary" and value == "count":
            query.not_applied.append((name, "'count' applies to a search, not a read"))
        elif name == "_summary" and value not in ("data", "false"):
            # Not the search's list: it names `count`, which a read refuses too.
            query.not_applied.append((name, f"{value!r} is not supported on a read (data, false)"))
        elif name in ("_elements", "_summary"):
            _result_param(query, name, value, {})
        else:
            query.not_applied.append((name, "not a parameter of a read"))
    if query.not_applied:
        raise FhirError(
            400,
            "not-supported",
            "not applied: " + "; ".join(f"{n}: {why}" for n, why in query.not_applied),
            query.not_applied[0][0],
        )
    return query if query.subsets() else None


def refuse_if_strict(not_applied: list[tuple[str, str]], strict: bool) -> None:
    """Under `Prefer: handling=strict`, a parameter left unapplied is a 400, never ignored."""
    if strict and not_applied:
        raise FhirError(
            400,
            "not-supported",
            "not applied (Prefer: handling=strict): "
            + "; ".join(f"{n}: {why}" for n, why in not_applied),
            not_applied[0][0],
        )


def _result_param(query: Query, name: str, value: str, known: Mapping[str, Param]) -> None:
    if name == "_count":
        if not value.isdigit():
            raise FhirError(400, "invalid", f"_count: {value!r} is not a number", name)
        query.count = min(int(value), MAX_COUNT)
        query.summary_count = query.summary_count or query.count == 0
        query.applied.append((name, str(query.count)))
    elif name == "_sort":
        keys = [k.strip() for k in value.split(",") if k.strip()]
        sortable = {n for n, p in known.items() if p.kind == "date"} | {"_id"}
        bad = [k for k in keys if k.lstrip("-") not in sortable]
        if bad or not keys:
            why = f"cannot sort by {', '.join(bad) or 'nothing'}"
            why += f" (sortable: {', '.join(sorted(sortable))})"
            query.not_applied.append((name, why))
            return
        query.sort = [(k.lstrip("-"), k.startswith("-")) for k in keys]
        query.applied.append((name, value))
    elif name == "_summary":
        if value == "count":
            query.summary_count = True
        elif value == "data":
            query.drop_text = True
        elif value != "false":
            query.not_applied.append((name, f"{value!r} is not supported (count, data, false)"))
            return
        query.applied.append((name, value))
    elif name == "_elements":
        names = {e.strip().split(".")[-1] for e in value.split(",") if e.strip()}
        if not names:
            query.not_applied.append((name, "empty value"))
            return
        query.elements = frozenset(names) | (query.elements or frozenset())
        query.applied.append((name, value))
    else:  # _include, _revinclude
        include = _include(query, value, reverse=name == "_revinclude")
        if isinstance(include, str):
            query.not_applied.append((f"{name}={value}", include))
            return
        query.includes.append(include)
        query.applied.append((name, value))


def _include(query: Query, value: str, *, reverse: bool) -> Include | str:
    """The include a value names, or why it is not supported here."""
    resource_type = query.resource_type
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in TYPES:
        return "not Type:parameter[:Target] of a searchable type"
    source, param_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    param = params_of(source).get(param_name)
    if param is None or param.kind != "reference":
        return f"{source} has no reference parameter {param_name!r}"
    if target is not None and target not in param.targets:
        return f"{source}:{param_name} does not point at {target}"
    if reverse and resource_type not in param.targets:
        return f"{source}:{param_name} does not point at {resource_type}"
    if reverse and target not in (None, resource_type):
        return f"{source}:{param_name}:{target} does not point at {resource_type}"
    if not reverse and source != resource_type:
        return f"_include starts from the searched type ({resource_type}), not {source}"
    reached = {target} if target else set(param.targets)
    if not reverse and not reached & query.served:
        return f"{', '.join(sorted(reached))} is not served here"
    if reverse and source not in query.served:
        return f"{source} is not served here"
    return Include(source, param_name, target, reverse)


def _filter_param(
    query: Query, name: str, value: str, known: Mapping[str, Param], base: str
) -> None:
    param_name, _, modifier = name.partition(":")
    param = known.get(param_name)
    if param is None:
        query.not_applied.append((name, f"unknown parameter for {query.resource_type}"))
        return
    if not value:
        query.not_applied.append((name, "empty value"))
        return
    if not _modifier_supported(param, modifier):
        query.not_applied.append((name, f"modifier :{modifier} is not supported here"))
        return
    if modifier == "missing":
        if value not in ("true", "false"):
            raise FhirError(400, "invalid", f"{name}: must be true or false", name)
        values: tuple[Value, ...] = (Value(value),)
    else:
        try:
            values = tuple(_value(param, raw, base) for raw in _split(value, ","))
        except ValueError as exc:
            raise FhirError(400, "invalid", f"{name}: {exc}", name) from None
        except _NotSupported as exc:
            query.not_applied.append((name, str(exc)))
            return
    query.filters.append(Filter(name, param_name, param, modifier, values))
    query.applied.append((name, value))


class _NotSupported(Exception):
    """A well-formed value this server cannot apply exactly (e.g. the `ap` prefix)."""


def _modifier_supported(param: Param, modifier: str) -> bool:
    if modifier in ("", "missing"):
        return True
    if param.kind == "token":
        return modifier in ("text", "not")
    if param.kind == "string":
        return modifier in ("exact", "contains")
    if param.kind == "reference":
        return modifier in param.targets
    return False


def _split(text: str, sep: str) -> list[str]:
    r"""Split on `sep` unless escaped (`\,` `\|` `\$` `\\`), and unescape."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _value(param: Param, raw: str, base: str) -> Value:
    if param.kind == "token":
        pieces = _split(raw.replace("\\,", ","), "|") if "|" in raw else [raw]
        if len(pieces) > 2:
            raise ValueError(f"{raw!r} is not [system|]code")
        if param.closed and (len(pieces) == 2 or pieces[0] not in param.closed):
            raise ValueError(f"{raw!r} is not one of {', '.join(param.closed)}")
        if len(pieces) == 2:
            return Value(raw, system=pieces[0], code=pieces[1])
        return Value(raw, code=pieces[0])
    if param.kind == "date":
        prefix = raw[:2] if raw[:2].isalpha() else "eq"
        if prefix == "ap":
            raise _NotSupported("prefix ap (approximately) is not supported")
        if prefix not in ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb"):
            raise ValueError(f"{raw!r}: unknown prefix {prefix!r}")
        text = raw[2:] if raw[:2].isalpha() else raw
        return Value(raw, prefix=prefix, dates=date_range(text))
    if param.kind == "reference":
        return _reference_value(raw, base)
    return Value(raw)


def _reference_value(raw: str, base: str) -> Value:
    local = raw[len(base) + 1 :] if raw.startswith(base + "/") else raw
    if "://" in local:  # another server's resource: matched as the same absolute URL
        parts = local.rstrip("/").split("/")
        return Value(raw, code=parts[-1], ref_type=parts[-2], ref_url=local.rstrip("/"))
    kind, _, ident = local.rpartition("/")
    if "/" in kind or (kind and not kind[:1].isupper()) or not ident:
        raise ValueError(f"{raw!r} is not [Type/]id or an absolute URL")
    return Value(raw, code=ident, ref_type=kind or None)


# -- dates --------------------------------------------------------------------------------

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(text: str) -> DateRange:
    """The range a FHIR date, dateTime or instant covers at its precision (ValueError if it
    is none of them). No time zone: UTC."""
    m = _DATE.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD[Thh:mm[:ss]])")
    try:
        year = int(m["y"])
        if m["m"] is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return DateRange(low, datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else None)
        month = int(m["m"])
        if m["d"] is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            days = calendar.monthrange(year, month)[1]
            return DateRange(low, low + timedelta(days=days))
        day = datetime(year, month, int(m["d"]), tzinfo=UTC)
        if m["H"] is None:
            return DateRange(day, day + timedelta(days=1))
        tz = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
            tz = UTC if not (hours or minutes) else _zone(sign * (hours * 60 + minutes))
        moment = datetime(year, month, int(m["d"]), int(m["H"]), int(m["M"]), tzinfo=tz)
        if m["S"] is None:
            step = timedelta(minutes=1)
        elif m["f"] is None:
            moment = moment.replace(second=int(m["S"]))
            step = timedelta(seconds=1)
        else:
            digits = m["f"][:6]
            moment = moment.replace(second=int(m["S"]), microsecond=int(digits.ljust(6, "0")))
            step = timedelta(microseconds=10 ** (6 - len(digits)))
        low = moment.astimezone(UTC)
        return DateRange(low, low + step)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date") from None


def _zone(minutes: int) -> timezone:
    return timezone(timedelta(minutes=minutes))


def _ranges_of(element: Any) -> list[DateRange]:
    """The ranges a date-like element covers: a date/dateTime/instant, a Period, a time."""
    if isinstance(element, datetime):
        return [DateRange(element, element + timedelta(milliseconds=1))]
    if isinstance(element, str):
        try:
            return [date_range(element)]
        except ValueError:
            return []
    if isinstance(element, Mapping) and ("start" in element or "end" in element):
        start = _ranges_of(element.get("start"))
        end = _ranges_of(element.get("end"))
        return [DateRange(start[0].low if start else None, end[0].high if end else None)]
    return []


def _before(a: datetime | None, b: datetime | None, *, a_low: bool, b_low: bool) -> bool:
    """a < b, where None is -inf for a lower bound and +inf for an upper bound."""
    if a is None:
        return a_low and not (b is None and b_low)
    if b is None:
        return not b_low
    return a < b


def _date_matches(value: Value, r: DateRange) -> bool:
    s = value.dates
    assert s is not None

    def contains() -> bool:  # the search range holds the resource's range
        return not _before(r.low, s.low, a_low=True, b_low=True) and not _before(
            s.high, r.high, a_low=False, b_low=False
        )

    above = _before(s.high, r.high, a_low=False, b_low=False)  # r reaches past s
    below = _before(r.low, s.low, a_low=True, b_low=True)  # r starts before s
    match value.prefix:
        case "eq":
            return contains()
        case "ne":
            return not contains()
        case "gt":
            return above
        case "lt":
            return below
        case "ge":
            return above or contains()
        case "le":
            return below or contains()
        case "sa":
            return not _before(r.low, s.high, a_low=True, b_low=False)
        case _:  # eb
            return not _before(s.low, r.high, a_low=True, b_low=False)


# -- elements, tokens, references, strings -------------------------------------------------


def _elements_at(
    resource: Mapping[str, Any], paths: Sequence[str], context: MatchContext
) -> list[Any]:
    found: list[Any] = []
    for path in paths:
        if path == "@lastUpdated":
            if context.last_updated is not None:
                found.append(context.last_updated)
            continue
        level: list[Any] = [resource]
        for step in path.split("."):
            level = [v for node in level for v in _children(node, step)]
        found.extend(level)
    return found


def _children(node: Any, step: str) -> list[Any]:
    if not isinstance(node, Mapping):
        return []
    if step.endswith("[x]"):
        stem = step[:-3]
        values = [
            v
            for k, v in node.items()
            if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()
        ]
    else:
        values = [node[step]] if step in node else []
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return flat


def _token_matches(value: Value, element: Any, modifier: str) -> bool:
    if modifier == "text":
        wanted = _fold(value.raw)
        return any(wanted in _fold(t) for t in _texts(element))
    if isinstance(element, bool):
        return value.system is None and value.code == ("true" if element else "false")
    if isinstance(element, str):  # a code: its system is implicit
        return element == value.code
    if not isinstance(element, Mapping):
        return False
    codings = element.get("coding") if "coding" in element else [element]
    for coding in codings if isinstance(codings, list) else []:
        if not isinstance(coding, Mapping):
            continue
        code = coding.get("code", coding.get("value"))  # a Coding, or an Identifier
        if value.code and code != value.code:
            continue
        if value.system is not None and (coding.get("system") or "") != value.system:
            continue
        if value.code or value.system:
            return True
    return False


def _texts(element: Any) -> list[str]:
    if not isinstance(element, Mapping):
        return [element] if isinstance(element, str) else []
    texts = [element["text"]] if isinstance(element.get("text"), str) else []
    codings = element.get("coding") if "coding" in element else [element]
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            texts.append(coding["display"])
    return texts


def _ref_matches(value: Value, element: Any, modifier: str, context: MatchContext) -> bool:
    if not isinstance(element, Mapping) or not isinstance(element.get("reference"), str):
        return False
    ref = str(element["reference"])
    if ref.startswith(context.base + "/"):
        ref = ref[len(context.base) + 1 :]
    if value.ref_url is not None:
        return ref == value.ref_url
    kind, _, ident = ref.split("/_history/")[0].rpartition("/")
    wanted_type = value.ref_type or modifier or None
    return ident == value.code and (wanted_type is None or kind == wanted_type)


def _fold(text: str) -> str:
    """Case- and accent-insensitive form of a text, for string and `:text` matching."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _strings(element: Any) -> list[str]:
    if isinstance(element, str):
        return [element]
    if isinstance(element, list):
        return [s for e in element for s in _strings(e)]
    if isinstance(element, Mapping):
        return [
            s
            for k, v in element.items()
            if k not in ("use", "period", "extension", "id", "type")
            for s in _strings(v)
        ]
    return []


def _string_matches(wanted: str, text: str, modifier: str) -> bool:
    if modifier == "exact":
        return text == wanted
    if modifier == "contains":
        return _fold(wanted) in _fold(text)
    return _fold(text).startswith(_fold(wanted))


# -- sorting, references of a resource, subsetting -------------------------------------------


def sort_key(
    resource: Mapping[str, Any], param_name: str, descending: bool, context: MatchContext
) -> tuple[int, Any]:
    """What `_sort` orders by: a date's low bound (its high bound, descending), or the id;
    resources without a value come last either way."""
    if param_name == "_id":
        ident = resource.get("id")
        return (0, ident) if isinstance(ident, str) else (1, "")
    param = params_of(str(resource.get("resourceType")))[param_name]
    ranges = [r for e in _elements_at(resource, param.paths, context) for r in _ranges_of(e)]
    if descending:
        highs = [r.high or datetime.max.replace(tzinfo=UTC) for r in ranges]
        return (0, max(highs)) if highs else (1, datetime.min.replace(tzinfo=UTC))
    lows = [r.low or datetime.min.replace(tzinfo=UTC) for r in ranges]
    return (0, min(lows)) if lows else (1, datetime.max.replace(tzinfo=UTC))


def sort_resources(
    items: list[Any],
    sort: Sequence[tuple[str, bool]],
    resource_of: Callable[[Any], Mapping[str, Any]],
    context_of: Callable[[Any], MatchContext],
) -> list[Any]:
    """`items` ordered by `_sort`'s keys (stable: ties keep their order)."""
    ordered = list(items)
    for param_name, descending in reversed(sort):
        keyed = [
            (sort_key(resource_of(i), param_name, descending, context_of(i)), i) for i in ordered
        ]
        present = [k for k in keyed if k[0][0] == 0]
        absent = [k for k in keyed if k[0][0] == 1]
        present.sort(key=lambda k: k[0][1], reverse=descending)
        ordered = [i for _, i in present] + [i for _, i in absent]
    return ordered


def references(resource: Mapping[str, Any], include: Include, base: str) -> list[tuple[str, str]]:
    """(type, id) of each local reference the include's parameter finds in a resource."""
    found = []
    context = MatchContext(base)
    for element in _elements_at(resource, include.param.paths, context):
        if not isinstance(element, Mapping) or not isinstance(element.get("reference"), str):
            continue
        ref = element["reference"]
        if ref.startswith(base + "/"):
            ref = ref[len(base) + 1 :]
        if "://" in ref or ref.startswith(("#", "urn:")):
            continue
        kind, _, ident = ref.split("/_history/")[0].rpartition("/")
        targets = (include.target,) if include.target else include.param.targets
        if kind in targets and ident:
            found.append((kind, ident))
    return found


def points_at(
    resource: Mapping[str, Any], include: Include, kind: str, ident: str, base: str
) -> bool:
    """Whether a resource's include parameter references `kind/ident` (for `_revinclude`)."""
    return (kind, ident) in references(resource, include, base)


def subset(raw: bytes, query: Query) -> bytes:
    """The resource with only the elements asked (`_elements`) or without its narrative
    (`_summary=data`), mandatory elements kept, tagged SUBSETTED as R4 asks."""
    resource = orjson.loads(raw)
    keep = query.elements
    if keep is not None:
        mandatory = TYPES.get(str(resource.get("resourceType")), TypeSearch({})).mandatory
        wanted = set(keep) | {"resourceType", "id", "meta"}
        for name in mandatory:
            wanted.add(name[:-3] + "[x]" if name.endswith("[x]") else name)
        resource = {k: v for k, v in resource.items() if _kept(k, wanted)}
    if query.drop_text:
        resource.pop("text", None)
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    resource["meta"] = meta
    return orjson.dumps(resource)


def _kept(key: str, wanted: set[str]) -> bool:
    if key in wanted:
        return True
    for name in wanted:  # `value` or `value[x]` keeps valueQuantity
        stem = name[:-3] if name.endswith("[x]") else name
        if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper():
            return True
    return False


# -- the CapabilityStatement --------------------------------------------------------------


def capability(resource_type: str, served: Iterable[str]) -> dict[str, Any]:
    """The search part of a type's CapabilityStatement entry: its parameters, and the
    `_include`/`_revinclude` pairs it answers (those whose other end is served here)."""
    served = set(served)
    params = [
        {"name": name, "type": p.kind, **({"documentation": p.doc} if p.doc else {})}
        for name, p in params_of(resource_type).items()
    ]
    params += [
        {"name": "_count", "type": "number"},
        {"name": "_sort", "type": "special", "documentation": "date parameters, _id; -desc"},
        {"name": "_summary", "type": "special", "documentation": "count, data, false"},
        {"name": "_elements", "type": "special"},
    ]
    includes = [
        f"{resource_type}:{name}"
        for name, p in params_of(resource_type).items()
        if p.kind == "reference" and served & set(p.targets)
    ]
    revincludes = [
        f"{source}:{name}"
        for source in sorted(TYPES)
        if source in served
        for name, p in params_of(source).items()
        if p.kind == "reference" and resource_type in p.targets
    ]
    return {"searchParam": params, "searchInclude": includes, "searchRevInclude": revincludes}


# -- the searchset Bundle -----------------------------------------------------------------


def bundle(
    total: int,
    links: Sequence[tuple[str, str]],
    entries: Sequence[tuple[str, bytes, str]],
) -> bytes:
    """A searchset Bundle around resource bytes (url, bytes, search mode), not re-serialised."""
    head = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": r, "url": u} for r, u in links],
        }
    )
    if not entries:
        return head
    items = b",".join(
        b'{"fullUrl":'
        + orjson.dumps(url)
        + b',"resource":'
        + raw
        + b',"search":{"mode":'
        + orjson.dumps(mode)
        + b"}}"
        for url, raw, mode in entries
    )
    return head[:-1] + b',"entry":[' + items + b"]}"


def outcome_entry(notes: Sequence[tuple[str, str, str]]) -> tuple[str, bytes, str]:
    """An OperationOutcome entry (search.mode outcome): (severity, code, diagnostics) each."""
    issues = [
        {"severity": severity, "code": code, "diagnostics": text} for severity, code, text in notes
    ]
    body = orjson.dumps({"resourceType": "OperationOutcome", "issue": issues})
    return f"urn:uuid:{_uuid()}", body, "outcome"


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def not_applied_notes(query: Query) -> list[tuple[str, str, str]]:
    return [
        ("warning", "not-supported", f"parameter {name} was not applied: {why}")
        for name, why in query.not_applied
    ]


# -- paging snapshots ---------------------------------------------------------------------

Owner = tuple[str, str, str | None]  # issuer, subject, launch context


@dataclass(frozen=True)
class Snapshot:
    """A search result frozen at its first page: what each page link serves."""

    token: str
    owner: Owner
    path: str  # `Observation` or `Patient/<rid>/$everything`
    action: str  # how the access trail names it: search, export
    items: tuple[tuple[str, int], ...]  # (rid, version) of each match, in order
    query: Query
    created: float


class Snapshots:
    """Frozen search results, by token: at most `max_entries` (rid, version) pairs in all
    (the least recently used go first), none older than `max_age` seconds, at most
    `per_owner` for one caller. A token only answers its owner; an expired one is told apart
    from an unknown one (410, not 404) for as long as `remember` tokens are kept."""

    def __init__(
        self,
        max_entries: int = 200_000,
        max_age: float = 600.0,
        per_owner: int = 32,
        remember: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self.per_owner = per_owner
        self.remember = remember
        self.clock = clock
        self._held: OrderedDict[str, Snapshot] = OrderedDict()
        self._gone: OrderedDict[str, Owner] = OrderedDict()
        self._entries = 0
        self._lock = threading.Lock()

    def put(
        self,
        owner: Owner,
        path: str,
        action: str,
        items: Sequence[tuple[str, int]],
        query: Query,
    ) -> Snapshot:
        snap = Snapshot(
            secrets.token_urlsafe(24), owner, path, action, tuple(items), query, self.clock()
        )
        with self._lock:
            self._expire()
            mine = [t for t, s in self._held.items() if s.owner == owner]
            for token in mine[: max(0, len(mine) - self.per_owner + 1)]:
                self._drop(token)
            while self._held and self._entries + len(snap.items) > self.max_entries:
                self._drop(next(iter(self._held)))
            self._held[snap.token] = snap
            self._entries += len(snap.items)
        return snap

    def get(self, token: str, owner: Owner) -> Snapshot:
        with self._lock:
            self._expire()
            snap = self._held.get(token)
            if snap is not None and snap.owner == owner:
                self._held.move_to_end(token)
                return snap
            if snap is None and self._gone.get(token) == owner:
                raise FhirError(
                    410,
                    "expired",
                    f"this search result expired (results are kept {int(self.max_age // 60)} "
                    "minutes, fewer when the server is busy): run the search again",
                    "_snapshot",
                )
        raise FhirError(
            404,
            "not-found",
            "no search result of yours has this _snapshot: run the search again",
            "_snapshot",
        )

    def _expire(self) -> None:
        limit = self.clock() - self.max_age
        for token in [t for t, s in self._held.items() if s.created < limit]:
            self._drop(token)

    def _drop(self, token: str) -> None:
        snap = self._held.pop(token)
        self._entries -= len(snap.items)
        self._gone[token] = snap.owner
        while len(self._gone) > self.remember:
            self._gone.popitem(last=False)

    def __len__(self) -> int:
        return len(self._held)
