"""Validation of one FHIR resource (as a parsed JSON dict) against the fhir.resources models.

fhir.resources (pydantic) does the structural work: unknown fields, missing required fields,
cardinality, value formats (dates, ids, decimals), choice types. It is lax about JSON types,
though: it accepts `"active": "yes"`, `"effectiveDateTime": 5` or a decimal written as a string.
medledger stores the JSON as received and other systems will read it back, so JSON types are
checked here as FHIR's JSON format defines them, by walking the resource alongside a per-model
field table built once from the model annotations. The same walk collects the Reference objects
of the resource (for reference rewriting) so that nothing walks a resource twice.

Errors come back as `Problem`s: a FHIR path and a message written for an integrator, never the
offending value (it may be clinical or identifying).
"""

from __future__ import annotations

import decimal
import difflib
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

FhirVersion = Literal["R4", "R5"]
FHIR_VERSIONS: tuple[FhirVersion, ...] = ("R4", "R5")

_ABSTRACT = frozenset(
    {"Resource", "DomainResource", "CanonicalResource", "MetadataResource", "BackboneElement"}
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem inside a resource: where (FHIR path) and what."""

    field: str | None
    message: str


# --------------------------------------------------------------------------- model registry


def _getter(version: FhirVersion) -> Callable[[str], Any]:
    if version == "R4":
        from fhir.resources.R4B import get_fhir_model_class as get_r4

        return get_r4
    from fhir.resources import get_fhir_model_class as get_r5

    return get_r5


@functools.cache
def _resource_base(version: FhirVersion) -> type:
    if version == "R4":
        from fhir.resources.R4B.resource import Resource as ResourceR4

        return ResourceR4
    from fhir.resources.resource import Resource as ResourceR5

    return ResourceR5


@functools.lru_cache(maxsize=1024)  # bounded: resource types come from the input
def model_class(version: FhirVersion, resource_type: str) -> type | None:
    """The model class of a concrete resource type in `version`, or None if there is none.

    Cached: the lookup goes through fhir.resources' type registry and an issubclass check,
    which is measurable at thousands of resources per second.
    """
    if not isinstance(resource_type, str) or resource_type in _ABSTRACT:
        return None
    try:
        cls = _getter(version)(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None
    if not isinstance(cls, type) or not issubclass(cls, _resource_base(version)):
        return None
    return cls


@functools.cache
def resource_types(version: FhirVersion) -> frozenset[str]:
    """All concrete resource types of `version` known to the models."""
    if version == "R4":
        import fhir.resources.R4B.fhirtypes as ft
    else:
        import fhir.resources.fhirtypes as ft  # type: ignore[no-redef]
    names = (n[:-4] for n in dir(ft) if n.endswith("Type") and n[0].isupper())
    return frozenset(n for n in names if model_class(version, n) is not None)


# --------------------------------------------------------------------------- field tables

_BOOLEAN, _INTEGER, _DECIMAL, _STRING, _INTEGER64, _COMPLEX, _RESOURCE, _ANY = range(8)
_PRIMITIVES = frozenset({_BOOLEAN, _INTEGER, _DECIMAL, _STRING, _INTEGER64})
_KIND_NAMES = {
    _BOOLEAN: "a JSON boolean",
    _INTEGER: "a JSON integer",
    _DECIMAL: "a JSON number",
    _STRING: "a JSON string",
    _INTEGER64: "a JSON string of digits",
    _COMPLEX: "a JSON object",
    _RESOURCE: "a JSON object (a resource)",
}


@dataclass(frozen=True, slots=True)
class _Field:
    kind: int
    is_list: bool
    model: type | None  # for _COMPLEX
    fhir_type: str  # "dateTime", "Quantity"... for messages
    primitive_extension: bool  # a `_name` field: null items allowed in its list
    choice: str | None  # "value" for valueQuantity, valueString...
    targets: tuple[str, ...] = ()  # for a Reference: the resource types it may point at


@dataclass(frozen=True, slots=True)
class FoundReference:
    """A Reference object met in a resource: the dict itself (to rewrite), its FHIR path
    (`performer[0]`, `contained[0].subject`) and the types its field allows (may be empty)."""

    holder: dict[str, Any]
    path: str
    targets: tuple[str, ...]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is_list) of an Optional[...] / List[...] / X | None annotation."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            # fhir_comments is `str | list[str]`: treat as a string list, lenient either way.
            annotation = args[-1] if len(args) > 1 else args[0]
            continue
        if origin in (list, typing.List):  # noqa: UP006
            is_list = True
            annotation = typing.get_args(annotation)[0]
            continue
        return annotation, is_list


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _field_spec(annotation: Any, alias: str, extra: Mapping[str, Any] | None) -> _Field:
    inner, is_list = _unwrap(annotation)
    choice = (extra or {}).get("one_of_many")
    targets = tuple((extra or {}).get("enum_reference_types") or ())
    primitive_extension = alias.startswith("_")
    if typing.get_origin(inner) is typing.Annotated:
        base, *metadata = typing.get_args(inner)
        fhir_type = _lower_first(type(metadata[0]).__name__) if metadata else "string"
        if fhir_type == "integer64":
            kind = _INTEGER64
        elif base is bool:
            kind = _BOOLEAN
        elif base is int:
            kind = _INTEGER
        elif base in (decimal.Decimal, float):
            kind = _DECIMAL
        else:
            kind = _STRING
        return _Field(kind, is_list, None, fhir_type, primitive_extension, choice)
    if inner is bool:
        return _Field(_BOOLEAN, is_list, None, "boolean", primitive_extension, choice)
    if inner is str:
        return _Field(_STRING, is_list, None, "string", primitive_extension, choice)
    if isinstance(inner, type) and hasattr(inner, "get_model_klass"):
        if inner.__name__ == "ResourceType":
            return _Field(_RESOURCE, is_list, None, "Resource", primitive_extension, choice)
        model = inner.get_model_klass()
        return _Field(
            _COMPLEX, is_list, model, model.__name__, primitive_extension, choice, targets
        )
    return _Field(_ANY, is_list, None, "value", primitive_extension, choice)


@functools.cache
def _fields(model: type) -> dict[str, _Field]:
    """JSON name -> field spec, for one model class (built once per class)."""
    table: dict[str, _Field] = {}
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        alias = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, Mapping) else None
        table[alias] = _field_spec(info.annotation, alias, extra)
    return table


@functools.lru_cache(maxsize=1024)
def top_level_fields(version: FhirVersion, resource_type: str) -> frozenset[str]:
    """The JSON names a resource type accepts at its top level in `version`."""
    cls = model_class(version, resource_type)
    return frozenset(_fields(cls)) if cls is not None else frozenset()


def reference_path(model: type, path: str) -> bool:
    """Whether the dotted element `path` (`participant.actor`) of `model` is a Reference."""
    current: type | None = model
    spec: _Field | None = None
    for name in path.split("."):
        spec = _fields(current).get(name) if current is not None else None
        if spec is None or spec.kind != _COMPLEX:
            return False
        current = spec.model
    return spec is not None and spec.fhir_type == "Reference"


def _primitive_element(version: FhirVersion) -> type:
    """The model of a primitive's `_name` object (id and extensions)."""
    if version == "R4":
        from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension as ExtR4

        return ExtR4
    from fhir.resources.fhirprimitiveextension import FHIRPrimitiveExtension as ExtR5

    return ExtR5


def _is_primitive_extension_of(model: type, key: str) -> bool:
    """`_valueString` in an Extension: valid FHIR JSON the Extension model does not declare."""
    if model.__name__ != "Extension" or not key.startswith("_value"):
        return False
    spec = _fields(model).get(key[1:])
    return spec is not None and spec.kind in _PRIMITIVES


# --------------------------------------------------------------------------- JSON type walk


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


#: Decimals are bounded in magnitude: beyond, JSON libraries (orjson, and most readers of the
#: stored bytes) lose or refuse the number, and no clinical quantity comes near.
DECIMAL_DIGITS = 18
_DECIMAL_LIMIT = 10**DECIMAL_DIGITS
_INT64 = (-(2**63), 2**63 - 1)


def number_out_of_range(value: Any, kind: int = _DECIMAL) -> str | None:
    """Why a JSON number cannot be taken for a FHIR decimal/integer64 (None if it can)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    # NaN compares unequal to itself; inf and the huge fail the bounds.
    if kind == _DECIMAL and is_number and not -_DECIMAL_LIMIT < value < _DECIMAL_LIMIT:
        return f"number out of range (at most {DECIMAL_DIGITS} digits before the point)"
    if kind == _INTEGER64:
        try:
            integer = int(value)
        except (TypeError, ValueError):
            return None  # reported as a type problem
        if not _INT64[0] <= integer <= _INT64[1]:
            return "number out of range (integer64: a signed 64-bit integer)"
    return None


def _check_value(
    spec: _Field,
    value: Any,
    path: str,
    version: FhirVersion,
    problems: list[Problem],
    references: list[FoundReference],
) -> None:
    kind = spec.kind
    if kind == _STRING:
        ok = isinstance(value, str)
    elif kind == _DECIMAL:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == _BOOLEAN:
        ok = isinstance(value, bool)
    elif kind == _INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == _INTEGER64:
        ok = (isinstance(value, str) and value.lstrip("-").isdigit()) or (
            isinstance(value, int) and not isinstance(value, bool)
        )
    elif kind == _COMPLEX:
        if isinstance(value, dict):
            if spec.fhir_type == "Reference" and (
                isinstance(value.get("reference"), str) or isinstance(value.get("identifier"), dict)
            ):
                references.append(FoundReference(value, path, spec.targets))
            walk(spec.model, value, path, version, problems, references)  # type: ignore[arg-type]
            return
        ok = False
    elif kind == _RESOURCE:
        if isinstance(value, dict):
            walk_resource(value, path, version, problems, references)
            return
        ok = False
    else:
        return
    if not ok:
        problems.append(
            Problem(
                path, f"expected {_KIND_NAMES[kind]} ({spec.fhir_type}), got {_json_kind(value)}"
            )
        )
        return
    out_of_range = number_out_of_range(value, kind)
    if out_of_range:
        problems.append(Problem(path, out_of_range))


def walk(
    model: type,
    obj: dict[str, Any],
    path: str,
    version: FhirVersion,
    problems: list[Problem],
    references: list[FoundReference],
) -> None:
    """Check JSON types of `obj` (an instance of `model`) and collect its Reference objects
    (literal ones, with a `reference`, and logical ones, with an `identifier` only)."""
    table = _fields(model)
    for key, value in obj.items():
        spec = table.get(key)
        if spec is None:
            if _is_primitive_extension_of(model, key):
                where = _join(path, key)
                if isinstance(value, dict):
                    walk(_primitive_element(version), value, where, version, problems, references)
                else:
                    problems.append(
                        Problem(where, f"expected a JSON object, got {_json_kind(value)}")
                    )
            continue  # unknown field (or resourceType): reported by the model
        where = _join(path, key)
        if value is None:
            problems.append(Problem(where, "null is not allowed in FHIR JSON (omit the field)"))
            continue
        if spec.is_list:
            if not isinstance(value, list):
                problems.append(
                    Problem(
                        where, f"expected a JSON array ({spec.fhir_type}), got {_json_kind(value)}"
                    )
                )
                continue
            for i, item in enumerate(value):
                if item is None:
                    # JSON arrays of primitives keep their positions: `"given": [null, "B"]`
                    # with `"_given": [{"extension": ...}, null]` (the first name has only
                    # extensions), and `_given` has nulls where `given` has no extension.
                    if not spec.primitive_extension and not _extended(obj, key, i):
                        problems.append(Problem(f"{where}[{i}]", "null is not allowed here"))
                    continue
                _check_value(spec, item, f"{where}[{i}]", version, problems, references)
        else:
            _check_value(spec, value, where, version, problems, references)


def _extended(obj: dict[str, Any], key: str, index: int) -> bool:
    """Whether item `index` of the primitive array `key` has its extensions in `_key`."""
    extensions = obj.get("_" + key)
    return (
        isinstance(extensions, list)
        and index < len(extensions)
        and isinstance(extensions[index], dict)
    )


def walk_resource(
    resource: dict[str, Any],
    path: str,
    version: FhirVersion,
    problems: list[Problem],
    references: list[FoundReference],
) -> None:
    """`walk` for a resource whose model is chosen by its resourceType (contained resources)."""
    resource_type = resource.get("resourceType")
    cls = model_class(version, resource_type) if isinstance(resource_type, str) else None
    if cls is None:
        problems.append(
            Problem(_join(path, "resourceType"), unsupported_type(resource_type, version))
        )
        return
    walk(cls, resource, path, version, problems, references)


def unsupported_type(resource_type: Any, version: FhirVersion) -> str:
    if not isinstance(resource_type, str) or not resource_type:
        return "missing resourceType"
    return f"unsupported resource type {resource_type!r} (not a FHIR {version} resource)"


# --------------------------------------------------------------------------- pydantic errors

_SPEC_REGEX = re.compile(r"^(\w+) value string does not match spec regex")
_ONE_OF_MANY = re.compile(r"from this list (\[[^\]]*\])")
_SIMPLE_MESSAGES = {
    "missing": "required field is missing",
    "model_field_validation.missing": "required field is missing",
    "list_type": "expected a JSON array",
    "dict_type": "expected a JSON object",
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
    "json_invalid": "expected a JSON object",
    "json_type": "expected a JSON object",
    "string_type": "expected a JSON string",
    "bool_type": "expected a JSON boolean",
    "bool_parsing": "expected a JSON boolean",
    "int_type": "expected a JSON integer",
    "int_parsing": "expected a JSON integer",
    "int_from_float": "expected a JSON integer",
    "float_type": "expected a JSON number",
    "float_parsing": "value is not a valid decimal",
    "decimal_type": "expected a JSON number",
    "decimal_parsing": "value is not a valid decimal",
    "string_too_short": "value may not be empty",
    "too_short": "list may not be empty",
}
_TYPE_WORDS = {"DateTime": "dateTime", "Base64Binary": "base64Binary"}


def _loc_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if item in ("root", "__root__"):  # pydantic's name for a model-level check
            continue
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            else:
                parts.append(f"[{item}]")
        else:
            parts.append(str(item))
    return ".".join(parts)


def _model_at(model: type, loc: tuple[Any, ...], obj: Any) -> tuple[type | None, Any]:
    """The model and JSON object at `loc` (for hints about unknown or choice fields)."""
    current: type | None = model
    for item in loc:
        if isinstance(item, int):
            obj = obj[item] if isinstance(obj, list) and item < len(obj) else None
            continue
        if current is None:
            return None, None
        spec = _fields(current).get(str(item))
        obj = obj.get(item) if isinstance(obj, dict) else None
        if spec is None:
            return None, None
        current = spec.model if spec.kind == _COMPLEX else None
    return current, obj


def _one_of_many(message: str, obj: Any) -> tuple[str | None, str]:
    match = _ONE_OF_MANY.search(message)
    names: list[str] = re.findall(r"'([^']+)'", match.group(1)) if match else []
    prefix = _common_prefix(names)
    field = f"{prefix}[x]" if prefix else None
    if "got multiple" in message:
        present = [n for n in names if isinstance(obj, dict) and n in obj]
        return field, f"only one of {', '.join(present or names)} may be given"
    return field, f"one of {', '.join(names)} is required"


def _common_prefix(names: list[str]) -> str:
    if not names:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    # cut at the last lower-case -> upper-case boundary: valueQuantity/valueString -> value
    while prefix and prefix[-1].isupper():
        prefix = prefix[:-1]
    return prefix


def _fhir_type_at(model: type, loc: tuple[Any, ...]) -> str | None:
    while loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    if not loc:
        return None
    parent, _ = _model_at(model, loc[:-1], None)
    if parent is None:
        return None
    spec = _fields(parent).get(str(loc[-1]))
    return spec.fhir_type if spec is not None else None


def problems_from_validation_error(
    error: ValidationError, model: type, resource: dict[str, Any]
) -> list[Problem]:
    """Translate pydantic's errors into FHIR paths and messages, never quoting input values."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False, include_input=False):
        loc = tuple(item.get("loc") or ())
        kind = str(item.get("type", ""))
        raw = str(item.get("msg", ""))
        raw = raw.removeprefix("Value error, ")
        field: str | None = _loc_path(loc) or None
        if kind == "extra_forbidden":
            parent, _ = _model_at(model, loc[:-1], resource)
            if parent is not None and loc and _is_primitive_extension_of(parent, str(loc[-1])):
                continue  # checked by the walk
            message = "unknown field"
            if parent is not None and loc and isinstance(loc[-1], str):
                close = difflib.get_close_matches(loc[-1], list(_fields(parent)), n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
            problems.append(Problem(field, message))
            continue
        if "one field value is expected" in raw or "Expect any of field value" in raw:
            _, obj = _model_at(model, loc, resource)
            choice_field, message = _one_of_many(raw, obj)
            if choice_field:
                field = _join(_loc_path(loc), choice_field)
            problems.append(Problem(field, message))
            continue
        match = _SPEC_REGEX.match(raw)
        if match:
            word = _TYPE_WORDS.get(match.group(1), _lower_first(match.group(1)))
            problems.append(Problem(field, f"value is not a valid {word}"))
            continue
        if kind in _SIMPLE_MESSAGES:
            problems.append(Problem(field, _SIMPLE_MESSAGES[kind]))
            continue
        if kind.startswith(("date", "time", "datetime")) or kind == "string_pattern_mismatch":
            fhir_type = _fhir_type_at(model, loc) or "value"
            detail = raw.split(", ", 1)[1] if ", " in raw else ""
            message = f"value is not a valid {fhir_type}"
            problems.append(Problem(field, f"{message}: {detail}" if detail else message))
            continue
        problems.append(Problem(field, raw or kind))
    return problems


# --------------------------------------------------------------------------- entry point


def validate_resource(
    resource: dict[str, Any], version: FhirVersion, *, checked: bool = False
) -> tuple[list[Problem], list[FoundReference]]:
    """Validate one resource dict; return (problems, Reference objects with their paths).

    The dict is not modified. The model instance is discarded: only the original JSON is kept.
    `checked`: these very JSON bytes already passed the model as `version` (a validation
    worker's run): only the walk, which finds the references, runs again.
    """
    problems: list[Problem] = []
    references: list[FoundReference] = []
    resource_type = resource.get("resourceType")
    cls = model_class(version, resource_type) if isinstance(resource_type, str) else None
    if cls is None:
        return [Problem("resourceType", unsupported_type(resource_type, version))], references
    walk(cls, resource, "", version, problems, references)
    problems += _unknown_required_codes(resource, version)
    if checked:
        return problems, references
    try:
        cls.model_validate(resource)  # type: ignore[attr-defined]
    except ValidationError as error:
        seen = {p.field for p in problems}
        problems.extend(
            p for p in problems_from_validation_error(error, cls, resource) if p.field not in seen
        )
    except Exception as error:  # noqa: BLE001 - fhir.resources raises KeyError & co. on odd input
        if not problems:
            problems.append(Problem(None, f"invalid resource ({type(error).__name__})"))
    return problems, references


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: FHIR R4's codes for top-level `code` elements bound *required*, of the clinical types this
#: server indexes: fhir.resources takes any string there, and a status no other system knows
#: (`"status": "bogus"`) would be stored, then missed by every `status=` search and view.
_REQUIRED_CODES_R4: dict[tuple[str, str], frozenset[str]] = {
    ("Patient", "gender"): _codes("male female other unknown"),
    ("Observation", "status"): _codes(
        "registered preliminary final amended corrected cancelled entered-in-error unknown"
    ),
    ("DiagnosticReport", "status"): _codes(
        "registered partial preliminary final amended corrected appended cancelled "
        "entered-in-error unknown"
    ),
    ("Encounter", "status"): _codes(
        "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown"
    ),
    ("MedicationRequest", "status"): _codes(
        "active on-hold cancelled completed entered-in-error stopped draft unknown"
    ),
    ("MedicationRequest", "intent"): _codes(
        "proposal plan order original-order reflex-order filler-order instance-order option"
    ),
    ("DocumentReference", "status"): _codes("current superseded entered-in-error"),
    ("Procedure", "status"): _codes(
        "preparation in-progress not-done on-hold stopped completed entered-in-error unknown"
    ),
    ("Immunization", "status"): _codes("completed entered-in-error not-done"),
}

#: R5's codes there: R4's and those R5 added (a resource R4 refuses is tried as R5, so R5
#: must know them too, or any unknown code would pass as "R5").
_REQUIRED_CODES_R5: dict[tuple[str, str], frozenset[str]] = _REQUIRED_CODES_R4 | {
    ("DiagnosticReport", "status"): _REQUIRED_CODES_R4[("DiagnosticReport", "status")]
    | _codes("modified"),
    ("Encounter", "status"): _REQUIRED_CODES_R4[("Encounter", "status")]
    | _codes("on-hold discharged completed discontinued"),
    ("MedicationRequest", "status"): _REQUIRED_CODES_R4[("MedicationRequest", "status")]
    | _codes("ended"),
}


def _unknown_required_codes(resource: Mapping[str, Any], version: FhirVersion) -> list[Problem]:
    """A top-level code outside its required value set (the message names the field and the
    codes allowed, never the value sent)."""
    required = _REQUIRED_CODES_R4 if version == "R4" else _REQUIRED_CODES_R5
    kind = resource.get("resourceType")
    problems = []
    for (resource_type, element), allowed in required.items():
        value = resource.get(element) if resource_type == kind else None
        if isinstance(value, str) and value not in allowed:
            problems.append(
                Problem(
                    element,
                    f"not a code of the value set FHIR {version} requires here ("
                    + ", ".join(sorted(allowed))
                    + ")",
                )
            )
    return problems


# --------------------------------------------------------------------------- version detection

_R5_PROFILE_HINTS = ("hl7.org/fhir/5.0", "hl7.org/fhir/R5", "hl7.org/fhir/r5")
_R4_PROFILE_HINTS = (
    "hl7.org/fhir/4.0",
    "hl7.org/fhir/R4",
    "hl7.org/fhir/r4",
    "hl7.org/fhir/4.3",
    "hl7.fr/ig/fhir/core",  # FR Core is an R4 guide
    "hl7.org/fhir/us/core",
)


@functools.lru_cache(maxsize=1024)
def _version_markers(resource_type: str) -> tuple[int, frozenset[str], frozenset[str]]:
    """(type evidence, R4-only fields, R5-only fields) for this resource type.

    The type evidence is -10 for a type that exists in R4 only, +10 for R5 only, else 0.
    """
    r4 = top_level_fields("R4", resource_type)
    r5 = top_level_fields("R5", resource_type)
    if r4 and not r5:
        return -10, frozenset(), frozenset()
    if r5 and not r4:
        return 10, frozenset(), frozenset()
    return 0, r4 - r5, r5 - r4


def version_evidence(resource: Mapping[str, Any]) -> int:
    """Evidence for R5 (positive) or R4 (negative) in one resource; 0 when undecided.

    Uses `meta.profile` when it names a version, else the fields present: a field that only one
    version defines (Encounter.actualPeriod is R5, MedicationRequest.medicationCodeableConcept
    is R4...) or a resource type that only one version has.
    """
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, Mapping) else None
    if isinstance(profiles, list):
        for profile in profiles:
            if isinstance(profile, str):
                if any(h in profile for h in _R5_PROFILE_HINTS):
                    return 100
                if any(h in profile for h in _R4_PROFILE_HINTS):
                    return -100
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return 0
    type_evidence, r4_only, r5_only = _version_markers(resource_type)
    if type_evidence:
        return type_evidence
    score = 0
    for key in resource:
        if key in r5_only:
            score += 1
        elif key in r4_only:
            score -= 1
    if resource_type == "Encounter" and "class" in resource:
        score += 1 if isinstance(resource["class"], list) else -1
    return score
