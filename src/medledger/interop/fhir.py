"""FHIR JSON input: single resources, Bundles and NDJSON bulk files, R4 or R5.

`parse_fhir(data, source)` turns the bytes of one input file into the resources medledger will
store, each with the id it will be stored under and its JSON bytes. It is pure: no I/O, no
knowledge of the vault or the ledger; what is already stored is reached through the `resolve`
callback given by the caller.

Why the JSON bytes are ours and not the models': the vault stores what the hospital sent, and
re-serialising through pydantic models would drop or reshape content (extensions order,
formatting, empty-looking but meaningful elements). The models are used to *validate* only.
A resource given alone (or as one NDJSON line) keeps its exact bytes unless its id or one of
its references had to change; bundle entries have no bytes of their own, so each is
`orjson.dumps` of the entry's original dict after its id and references are rewritten.
Decimals keep the digits they were sent with (`7.10` stays `7.10`, see `_loads`).

References resolve inside the input first (fullUrl, `Type/id`, `urn:uuid:`, `urn:oid:`, an
absolute fullUrl's `Type/id` tail, a conditional `Type?identifier=...`, a logical reference's
identifier), then through the caller's `resolve` (what the hospital already holds), and are
rewritten to `Type/<stored id>`. Which reference is a resource's *patient link* comes from the
FHIR Patient compartment (`compartment.py`): a clinical resource whose patient does not resolve
is refused, with the field and the reference; any other reference that does not resolve is
kept as sent and reported in `ParsedResource.warnings`. Types outside the compartment
(Practitioner, Organization, Medication...) are *supporting* resources: `patient_ref` None.

One input is all or nothing: every problem of every entry is collected, then one `InputError`
is raised carrying them all (`InputError.problems`), and nothing is returned. This is what a
transaction Bundle means, and it keeps a file's resources and their references consistent.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from medledger.interop.compartment import is_supporting, patient_links
from medledger.interop.errors import InputError, raise_all
from medledger.interop.validate import (
    FhirVersion,
    FoundReference,
    Problem,
    model_class,
    problems_from_validation_error,
    validate_resource,
    version_evidence,
)

#: `id_factory(resource_type, original_id) -> new id`: the id a resource is stored under.
IdFactory = Callable[[str, str | None], str]
#: `resolve(reference) -> "Type/id" | None`: a reference to something outside the input,
#: mapped to a stored resource. Asked with `Type/id` (a stored id or the sender's id), an
#: absolute `https://host/base/Type/id`, or a search `Type?identifier=system|value` (system and
#: value percent-encoded where they hold `|`, `&`, `%`, `#`...; other searches are passed as
#: sent and may be answered None).
Resolver = Callable[[str], str | None]

SUPPORTED_BUNDLE_TYPES = ("transaction", "batch", "collection", "document", "searchset")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?$")
_ABSOLUTE = re.compile(
    r"^(https?://.+)/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?$"
)
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
_NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.txt")
_INDEX = re.compile(r"\[\d+\]")


@dataclass(frozen=True, slots=True)
class ParsedResource:
    """One resource ready to store: its new id, its JSON bytes and the patient it belongs to.

    `patient_ref` is the id (as stored, after rewriting) of the Patient this resource belongs
    to: its own id for a Patient, else taken from subject / patient / beneficiary... as the
    patient compartment defines; None when the resource points at no Patient.
    `entry_index` is the position in the input (Bundle entry or NDJSON line, 0-based), None for
    a single resource. `source_ref` is how the input named the resource (fullUrl or Type/id).
    `request_*` mirror a transaction/batch entry's request, for the caller to honour
    (conditional create: `if_none_exist`; update: method PUT and its url). `resource` is the
    dict `json_bytes` was made from (do not mutate it; the bytes are authoritative).
    `source_system` is whose id space `source_id` is in: the resource's `meta.source` (without
    its `#request` fragment), else the base of an absolute fullUrl (`https://h.example/fhir`),
    else "" (the caller knows the sender). `source_id` is the id the sender gave it (its `id`,
    or a PUT's url id), None if none. `warnings` are references kept as sent because they
    resolve to nothing here (`field performer[0]: reference 'Practitioner/x' matches nothing
    here; kept as sent`). A `document` Bundle also yields one ParsedResource of type Bundle,
    last: the document's bytes as received, `patient_ref` its Composition's patient.
    """

    resource_type: str
    id: str
    json_bytes: bytes = field(repr=False)
    patient_ref: str | None
    entry_index: int | None
    fhir_version: FhirVersion = "R4"
    source_ref: str | None = None
    request_method: str | None = None
    request_url: str | None = field(default=None, repr=False)
    if_none_exist: str | None = field(default=None, repr=False)
    resource: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    source_system: str = ""
    source_id: str | None = None
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- id factories


def uuid_ids(resource_type: str, original_id: str | None) -> str:
    """Default id factory: a fresh random UUID for every resource."""
    return str(uuid.uuid4())


def keep_ids(resource_type: str, original_id: str | None) -> str:
    """Keep the sender's id when there is one (single resources then keep their exact bytes)."""
    return original_id if original_id else str(uuid.uuid4())


def sequential_ids(prefix: str = "r") -> IdFactory:
    """A deterministic factory (`r1`, `r2`...), for tests and reproducible demos."""
    counter = 0

    def factory(resource_type: str, original_id: str | None) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}{counter}"

    return factory


def namespaced_ids(namespace: str) -> IdFactory:
    """Stable ids: the same (namespace, type, original id) always gives the same UUID.

    For re-ingesting a hospital's export idempotently; resources without an id get a random one.
    """
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"medledger:{namespace}")

    def factory(resource_type: str, original_id: str | None) -> str:
        if not original_id:
            return str(uuid.uuid4())
        return str(uuid.uuid5(base, f"{resource_type}/{original_id}"))

    return factory


# --------------------------------------------------------------------------- input items


@dataclass(slots=True, eq=False)  # items are compared by identity
class _Item:
    """One resource of the input, before and after id assignment."""

    index: int | None
    label: str | int | None  # InputError.entry
    resource: dict[str, Any]
    raw: bytes | None  # exact bytes, for a single resource or an NDJSON line
    full_url: str | None = None
    method: str | None = None
    url: str | None = None
    if_none_exist: str | None = None
    new_id: str = ""
    references: list[FoundReference] = field(default_factory=list)
    changed: bool = False
    patient_ref: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType"))


class _Decimal(float):
    """A JSON number as it was written (`7.10`, `1e2`): a float to validate, its text to write.

    FHIR decimals carry their precision in their digits; a double would turn `7.10` into `7.1`.
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _Decimal:
        number = super().__new__(cls, text)
        number.text = text
        return number


#: A number in value position whose double may print otherwise: a fraction or an exponent.
_FRACTION = re.compile(rb"[:,\[]\s*(-?\d+(?:\.\d+(?:[eE][-+]?\d+)?|[eE][-+]?\d+))(?=\s*[,}\]])")


def _loads(data: bytes) -> Any:
    """JSON as orjson reads it, unless a decimal would lose its digits: then as written.

    orjson is fast and strict; a second, slower read with `_Decimal` numbers happens only for
    inputs with a number such as `7.10` (a string that merely looks like one costs a re-read,
    never a wrong value).
    """
    document = orjson.loads(data)
    for match in _FRACTION.finditer(data):
        text = match.group(1)
        if orjson.dumps(float(text)) != text:
            return json.loads(data, parse_float=_Decimal)
    return document


def _number_as_written(value: Any) -> Any:
    if isinstance(value, _Decimal):
        return orjson.Fragment(value.text)
    raise TypeError


def _dumps(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(resource, default=_number_as_written)


def _json_error(source: str, entry: str | int | None, error: orjson.JSONDecodeError) -> InputError:
    where = (
        f"line {error.lineno}, column {error.colno}" if entry is None else f"column {error.colno}"
    )
    return InputError(source, entry, None, f"broken JSON at {where}: {error.msg}")


def _looks_ndjson(data: bytes, source: str) -> bool:
    if source.lower().endswith(_NDJSON_SUFFIXES):
        return True
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        first = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        return False
    return isinstance(first, dict) and "resourceType" in first


def _read_items(data: bytes, source: str) -> tuple[dict[str, Any] | None, list[_Item], bytes]:
    """(bundle dict or None, items, the bytes without a BOM) of an input; raises InputError
    for broken JSON."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise InputError(source, None, None, "the file is empty")
    try:
        document = _loads(data)
    except orjson.JSONDecodeError as error:
        if not _looks_ndjson(data, source):
            raise _json_error(source, None, error) from None
        document = None
    if document is None or source.lower().endswith(_NDJSON_SUFFIXES):
        return None, _ndjson_items(data, source), data
    if not isinstance(document, dict):
        raise InputError(source, None, None, "expected a JSON object (a FHIR resource)")
    if document.get("resourceType") == "Bundle":
        return document, [], data
    return None, [_Item(None, None, document, data)], data


def _ndjson_items(data: bytes, source: str) -> list[_Item]:
    items: list[_Item] = []
    problems: list[InputError] = []
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        label = f"line {number + 1}"
        try:
            resource = _loads(line)
        except orjson.JSONDecodeError as error:
            problems.append(_json_error(source, label, error))
            continue
        if not isinstance(resource, dict):
            problems.append(InputError(source, label, None, "expected a JSON object per line"))
            continue
        items.append(_Item(number, label, resource, line.strip()))
    raise_all(problems)
    if not items:
        raise InputError(source, None, None, "the file has no resource")
    return items


def _bundle_items(
    bundle: dict[str, Any], source: str, version: FhirVersion, problems: list[InputError]
) -> list[_Item]:
    """Check the Bundle envelope and list the entries to store."""
    bundle_type = bundle.get("type")
    if bundle_type not in SUPPORTED_BUNDLE_TYPES:
        what = f"Bundle type {bundle_type!r}" if isinstance(bundle_type, str) else "Bundle type"
        message = (
            f"{what} is not supported (supported: {', '.join(SUPPORTED_BUNDLE_TYPES)})"
            if bundle_type is not None
            else "required field is missing"
        )
        problems.append(InputError(source, None, "type", message, resource_type="Bundle"))
        return []
    entries = bundle.get("entry")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        problems.append(
            InputError(source, None, "entry", "expected a JSON array", resource_type="Bundle")
        )
        return []
    # The envelope (without the resources, validated one by one below) through the Bundle model.
    envelope = {k: v for k, v in bundle.items() if k != "entry"}
    envelope["entry"] = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
        for e in entries
    ]
    bundle_model = model_class(version, "Bundle")
    try:
        bundle_model.model_validate(envelope)  # type: ignore[union-attr]
    except Exception as error:  # noqa: BLE001
        for p in _envelope_problems(error, bundle_model, envelope):
            problems.append(_entry_problem(source, p))
    items: list[_Item] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue  # reported by the envelope validation
        if bundle_type == "searchset":
            search = entry.get("search")
            if isinstance(search, dict) and search.get("mode") == "outcome":
                continue  # an OperationOutcome about the search, not data
        resource = entry.get("resource")
        raw_request = entry.get("request")
        request: dict[str, Any] = raw_request if isinstance(raw_request, dict) else {}
        method = request.get("method") if isinstance(request.get("method"), str) else None
        if bundle_type in ("transaction", "batch"):
            if method is None:
                problems.append(InputError(source, index, "request", "required field is missing"))
                continue
            if method not in ("POST", "PUT"):
                problems.append(
                    InputError(
                        source,
                        index,
                        "request.method",
                        f"{method} entries cannot be ingested (only POST and PUT)",
                    )
                )
                continue
        if not isinstance(resource, dict):
            problems.append(
                InputError(
                    source,
                    index,
                    "resource",
                    "required field is missing" if resource is None else "expected a JSON object",
                )
            )
            continue
        if resource.get("resourceType") == "Bundle":
            # Its entries would be stored as one opaque resource of nobody: send it on its own.
            message = "a Bundle inside a Bundle is not ingested; send it as a file of its own"
            problems.append(InputError(source, index, "resource", message, resource_type="Bundle"))
            continue
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        url = request.get("url") if isinstance(request.get("url"), str) else None
        if_none_exist = request.get("ifNoneExist")
        items.append(
            _Item(
                index,
                index,
                resource,
                None,
                full_url=full_url,
                method=method,
                url=url,
                if_none_exist=if_none_exist if isinstance(if_none_exist, str) else None,
            )
        )
    if bundle_type == "document" and items and items[0].resource_type != "Composition":
        problems.append(
            InputError(
                source, 0, "resource", "the first entry of a document Bundle must be a Composition"
            )
        )
    return items


def _envelope_problems(error: Exception, model: Any, envelope: dict[str, Any]) -> list[Problem]:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return problems_from_validation_error(error, model, envelope)
    return [Problem(None, f"invalid Bundle ({type(error).__name__})")]


def _entry_problem(source: str, problem: Problem) -> InputError:
    """A Bundle-envelope problem: `entry[3].request.method` becomes entry 3, request.method."""
    match = re.match(r"^entry\[(\d+)\]\.?(.*)$", problem.field or "")
    if match:
        return InputError(source, int(match.group(1)), match.group(2) or None, problem.message)
    return InputError(source, None, problem.field, problem.message, resource_type="Bundle")


# --------------------------------------------------------------------------- versions


def detect_version(resources: list[Mapping[str, Any]]) -> tuple[FhirVersion, bool]:
    """(version, decided): R5 if the evidence says so, else R4 (production default).

    `decided` is False when nothing pointed either way, which allows a second try with R5
    when R4 validation fails.
    """
    score = sum(version_evidence(r) for r in resources)
    if score > 0:
        return "R5", True
    return "R4", score < 0


def _validate_items(
    items: list[_Item], source: str, version: FhirVersion, checked: bool = False
) -> tuple[list[InputError], list[list[FoundReference]]]:
    problems: list[InputError] = []
    references: list[list[FoundReference]] = []
    for item in items:
        found, refs = validate_resource(item.resource, version, checked=checked)
        references.append(refs)
        resource_type = item.resource.get("resourceType")
        label_type = resource_type if isinstance(resource_type, str) else None
        for p in found:
            problems.append(
                InputError(source, item.label, p.field, p.message, resource_type=label_type)
            )
    return problems, references


# --------------------------------------------------------------------------- references


class _Index:
    """Where each way of naming an input resource leads: fullUrl, Type/id, request url."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.targets: dict[str, _Item | None] = {}  # None: ambiguous

    def add(self, key: str | None, item: _Item) -> None:
        if not key:
            return
        if key in self.targets and self.targets[key] is not item:
            self.targets[key] = None
        else:
            self.targets[key] = item

    def find(self, key: str) -> tuple[bool, _Item | None]:
        """(known, item): known with item None means ambiguous."""
        if key in self.targets:
            return True, self.targets[key]
        return False, None

    def by_identifier(self, resource_type: str, query: str) -> list[_Item]:
        """Input resources matching a conditional reference `Type?identifier=system|value`."""
        wanted: list[tuple[str | None, str]] = []
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name != "identifier" or not value:
                return []  # only identifier searches are resolved inside an input
            wanted.append(_system_value(value))
        seen: list[_Item] = []
        for item in self.items:
            if item.resource_type != resource_type:
                continue
            identifiers = item.resource.get("identifier") or []
            ok = all(
                any(
                    isinstance(i, dict)
                    and i.get("value") == code
                    and (system is None or i.get("system") == system)
                    for i in identifiers
                )
                for system, code in wanted
            )
            if ok:
                seen.append(item)
        return seen


def _system_value(token: str) -> tuple[str | None, str]:
    """`system|value` (either part percent-encoded, or the bar itself as %7C) -> parts."""
    unquote = urllib.parse.unquote
    if "|" in token:
        system, _, value = token.partition("|")
        return unquote(system), unquote(value)
    system, bar, value = unquote(token).partition("|")
    return (system, value) if bar else (None, system)


def _search_token(text: str) -> str:
    return urllib.parse.quote(text, safe=":/.-_~@!$'()*+,;=")


def _build_index(items: list[_Item], source: str, problems: list[InputError]) -> _Index:
    index = _Index(items)
    full_urls: dict[str, int | None] = {}
    for item in items:
        if item.full_url:
            if item.full_url in full_urls:
                problems.append(
                    InputError(
                        source,
                        item.label,
                        "fullUrl",
                        f"duplicate fullUrl (also entry {full_urls[item.full_url]})",
                        resource_type=item.resource_type,
                    )
                )
            full_urls[item.full_url] = item.index
            index.add(item.full_url, item)
            absolute = _ABSOLUTE.match(item.full_url)
            if absolute:
                index.add(f"{absolute.group(2)}/{absolute.group(3)}", item)
        original_id = item.resource.get("id")
        if isinstance(original_id, str):
            index.add(f"{item.resource_type}/{original_id}", item)
        if item.url and _RELATIVE.match(item.url):
            index.add(item.url.split("/_history/")[0], item)
    return index


_NOTHING = "matches nothing here"


@dataclass(slots=True)
class _Outcome:
    """What became of one Reference: its new target, or why it has none."""

    ref: FoundReference
    target: str | None  # "Type/<stored id>"; None: unresolved (or a contained `#id`)
    what: str = ""  # how messages name it: never an identifier's value
    reason: str = _NOTHING
    types: tuple[str, ...] = ()  # what an unresolved reference may point at
    contained: bool = False

    @property
    def element(self) -> str:
        """The element path without indices: `performer[0]` -> `performer`."""
        return _INDEX.sub("", self.ref.path)

    @property
    def field(self) -> str:
        literal = isinstance(self.ref.holder.get("reference"), str)
        return f"{self.ref.path}.{'reference' if literal else 'identifier'}"


def _resolver_forms(reference: str, base: str) -> list[str]:
    """What to ask the resolver about a literal reference not found in the input."""
    relative = _RELATIVE.match(reference)
    if relative:
        plain = f"{relative.group(1)}/{relative.group(2)}"
        # Relative to the entry's server first (FHIR: resolve against the fullUrl's base).
        return [f"{base}/{plain}", plain] if base.startswith(("http://", "https://")) else [plain]
    absolute = _ABSOLUTE.match(reference)
    if absolute:
        return [f"{absolute.group(1)}/{absolute.group(2)}/{absolute.group(3)}"]
    if _CONDITIONAL.match(reference):
        return [reference]
    return []  # urn:uuid:, urn:oid: and the like name input entries only


def _ask(resolve: Resolver | None, forms: list[str]) -> str | None:
    if resolve is None:
        return None
    for form in forms:
        replacement = resolve(form)
        if replacement is not None:
            if not _RELATIVE.match(replacement):
                raise ValueError("the resolver must return a 'Type/id' reference")
            return replacement
    return None


def _in_input(target: _Item) -> str:
    return f"{target.resource_type}/{target.new_id}"


def _literal(
    ref: FoundReference, reference: str, base: str, index: _Index, resolve: Resolver | None
) -> _Outcome:
    """A `reference` string: in the input (a relative one against the entry's `base` first),
    else asked of the resolver."""
    outcome = _Outcome(ref, None, what=f"reference {reference!r}")
    keys = [reference]
    relative = _RELATIVE.match(reference)
    if relative:
        plain = f"{relative.group(1)}/{relative.group(2)}"
        keys = [f"{base}/{plain}", reference, plain] if base else [reference, plain]
        outcome.types = (relative.group(1),)
    for key in keys:
        known, target = index.find(key)
        if known:
            if target is None:
                outcome.reason = "is ambiguous (several entries match)"
                return outcome
            outcome.target = _in_input(target)
            return outcome
    conditional = _CONDITIONAL.match(reference)
    if conditional:
        outcome.what = f"conditional reference to {conditional.group(1)}"
        outcome.types = (conditional.group(1),)
        matches = index.by_identifier(conditional.group(1), conditional.group(2))
        if len(matches) == 1:
            outcome.target = _in_input(matches[0])
            return outcome
        if len(matches) > 1:
            outcome.reason = "matches several entries of the input"
            return outcome
    absolute = _ABSOLUTE.match(reference)
    if absolute:
        outcome.types = (absolute.group(2),)
    if not outcome.types:
        declared = ref.holder.get("type")
        outcome.types = (declared,) if isinstance(declared, str) else ref.targets
    outcome.target = _ask(resolve, _resolver_forms(reference, base))
    return outcome


def _logical(
    ref: FoundReference, index: _Index, resolve: Resolver | None, named: str | None = None
) -> _Outcome:
    """`{"type": "Patient", "identifier": {"system": s, "value": v}}`: found by identifier.

    The type is `type`, else the one a literal reference beside it names (`named`), else the
    one its field allows."""
    declared = ref.holder.get("type")
    resource_type = declared.rsplit("/", 1)[-1] if isinstance(declared, str) else named
    if resource_type is None and len(ref.targets) == 1:
        resource_type = ref.targets[0]
    what = f"logical reference to {resource_type or 'a resource'} (by identifier)"
    outcome = _Outcome(ref, None, what=what, types=(resource_type,) if resource_type else ())
    identifier = ref.holder["identifier"]
    system, value = identifier.get("system"), identifier.get("value")
    if resource_type is None:
        outcome.reason = "names no type (and its field allows several)"
        return outcome
    if not isinstance(value, str):
        outcome.reason = "has no identifier value"
        return outcome
    token = _search_token(value)
    if isinstance(system, str):
        token = f"{_search_token(system)}|{token}"
    query = f"identifier={token}"
    matches = index.by_identifier(resource_type, query)
    if len(matches) == 1:
        outcome.target = _in_input(matches[0])
    elif len(matches) > 1:
        outcome.reason = "matches several entries of the input"
    else:
        outcome.target = _ask(resolve, [f"{resource_type}?{query}"])
    return outcome


def _resolve_item(item: _Item, index: _Index, resolve: Resolver | None) -> list[_Outcome]:
    """Resolve every Reference of one resource, rewriting those that resolve."""
    contained = {c.get("id") for c in item.resource.get("contained") or [] if isinstance(c, dict)}
    base = _source_system(item)
    outcomes: list[_Outcome] = []
    for ref in item.references:
        holder = ref.holder
        reference = holder.get("reference")
        if isinstance(reference, str) and reference.startswith("#"):
            outcome = _Outcome(ref, None, what=f"reference {reference!r}", contained=True)
            if reference != "#" and reference[1:] not in contained:
                outcome.contained = False
                outcome.reason = "matches no contained resource"
            outcomes.append(outcome)
            continue
        if isinstance(reference, str):
            outcome = _literal(ref, reference, base, index, resolve)
            if outcome.target is None and isinstance(holder.get("identifier"), dict):
                # Both given (Epic does): the identifier may find what the sender's id did not.
                named = outcome.types[0] if len(outcome.types) == 1 else None
                by_identifier = _logical(ref, index, resolve, named)
                if by_identifier.target is not None:
                    outcome = by_identifier
        else:
            outcome = _logical(ref, index, resolve)
        if outcome.target is not None and outcome.target != reference:
            holder["reference"] = outcome.target
            item.changed = True
        outcomes.append(outcome)
    return outcomes


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "AEIOU" else f"a {word}"


def _settle_patient(
    item: _Item, outcomes: list[_Outcome], version: FhirVersion, source: str
) -> InputError | None:
    """Find the patient of a clinical resource (its compartment links, in order); warn about
    every other reference that did not resolve. A refusal when the patient is not found."""
    refusal: InputError | None = None
    refused: _Outcome | None = None
    resource_type = item.resource_type
    if resource_type == "Patient":
        item.patient_ref = item.new_id
    elif not is_supporting(resource_type):
        links = patient_links(version, resource_type)
        candidates = [o for o in outcomes if o.element in links]
        for link in links:
            for o in candidates:
                if o.element == link and o.target and o.target.startswith("Patient/"):
                    item.patient_ref = o.target.removeprefix("Patient/")
                    break
            if item.patient_ref is not None:
                break
        if item.patient_ref is None:
            kind = _article(resource_type)
            pending = [
                o
                for o in candidates
                if o.target is None and not o.contained and (not o.types or "Patient" in o.types)
            ]
            if pending:
                refused = pending[0]
                reason = refused.reason
                if reason == _NOTHING:
                    reason = "does not match any entry of the input nor a resource stored here"
                message = (
                    f"{refused.what} {reason}; it names the patient, and {kind} cannot be "
                    "stored without its patient"
                )
                refusal = InputError(
                    source, item.label, refused.field, message, resource_type=resource_type
                )
            else:
                where = " or ".join(links) or "subject"
                message = (
                    f"no patient named in {where}: {kind} is stored as a patient's record "
                    "and must name its Patient"
                )
                field_name = links[0] if links else None
                refusal = InputError(
                    source, item.label, field_name, message, resource_type=resource_type
                )
    for o in outcomes:
        # A logical reference (an identifier alone) is complete as it is: no warning.
        literal = isinstance(o.ref.holder.get("reference"), str)
        if o.target is None and literal and not o.contained and o is not refused:
            item.warnings.append(f"field {o.ref.path}: {o.what} {o.reason}; kept as sent")
    return refusal


def _source_system(item: _Item) -> str:
    """Whose ids the item's are: meta.source (without its fragment), else its fullUrl's base."""
    meta = item.resource.get("meta")
    source = meta.get("source") if isinstance(meta, dict) else None
    if isinstance(source, str):
        system = source.split("#", 1)[0]
        if system:
            return system
    if item.full_url:
        absolute = _ABSOLUTE.match(item.full_url)
        if absolute:
            return absolute.group(1)
    return ""


# --------------------------------------------------------------------------- entry point


def parse_fhir(
    data: bytes,
    source: str,
    *,
    fhir_version: FhirVersion | None = None,
    id_factory: IdFactory = uuid_ids,
    resolve: Resolver | None = None,
    validated_as: FhirVersion | None = None,
) -> list[ParsedResource]:
    """Validate one FHIR JSON input and prepare its resources for storage.

    `data` is a single resource, a Bundle (transaction, batch, collection, document, searchset)
    or NDJSON (one resource per line; detected from a `.ndjson`/`.jsonl` name or the content).
    `source` names the input in error messages (usually the file name).
    `fhir_version` forces R4 or R5; by default it is detected (meta.profile, version-specific
    fields) and is R4 when nothing says otherwise; an undecided input that fails as R4 but
    passes as R5 is taken as R5.
    `id_factory` gives each resource the id it will be stored under; every reference that
    resolves (inside the input, else through `resolve`) is rewritten to `Type/<new id>`:
    `urn:uuid:` and `urn:oid:` fullUrls, relative `Type/id`, absolute URLs (equal to a fullUrl,
    or asked of `resolve`), conditional `Type?identifier=system|value`, and logical references
    (`identifier` with `type`, or the one type their field allows). Contained (`#id`)
    references are left alone. A clinical resource whose patient does not resolve is an error;
    any other reference that does not resolve is kept as sent, with a warning (a logical one,
    an identifier alone, is complete as it is: kept without a warning).

    `validated_as`: these very bytes already passed validation as that version (a validation
    worker parsed them without the hospital's records): the models are not run again, only
    the reference walk and the resolution, which the worker could not do.

    Raises `InputError` (with every problem of the input in `.problems`); returns nothing
    partial.
    """
    bundle, items, raw = _read_items(data, source)
    if validated_as is not None:
        fhir_version = validated_as
    return _parse_document(
        bundle,
        items,
        source,
        fhir_version,
        id_factory,
        resolve,
        raw=raw,
        checked=validated_as is not None,
    )


def parse_fhir_object(
    document: dict[str, Any],
    source: str,
    *,
    fhir_version: FhirVersion | None = None,
    id_factory: IdFactory = uuid_ids,
    resolve: Resolver | None = None,
    labels: Callable[[int], str] | None = None,
) -> list[ParsedResource]:
    """`parse_fhir` for an already-built resource or Bundle dict (HL7 v2 mapping, synthetic data).

    `labels` turns an entry index into the label used in errors (e.g. "message 2, OBX 3").
    The dict is mutated (ids and references rewritten); pass a copy if you keep it.
    """
    if document.get("resourceType") == "Bundle":
        raw = _dumps(document) if document.get("type") == "document" else None
        return _parse_document(
            document, [], source, fhir_version, id_factory, resolve, labels, raw=raw
        )
    item = _Item(None, None, document, None)
    return _parse_document(None, [item], source, fhir_version, id_factory, resolve, labels)


def _parse_document(
    bundle: dict[str, Any] | None,
    items: list[_Item],
    source: str,
    fhir_version: FhirVersion | None,
    id_factory: IdFactory,
    resolve: Resolver | None,
    labels: Callable[[int], str] | None = None,
    *,
    raw: bytes | None = None,
    checked: bool = False,
) -> list[ParsedResource]:
    if bundle is not None:
        raw_entries = bundle.get("entry")
        entries: list[Any] = raw_entries if isinstance(raw_entries, list) else []
        resources = [bundle, *(e["resource"] for e in entries if _has_resource(e))]
    else:
        resources = [item.resource for item in items]
    if fhir_version is not None:
        version, decided = fhir_version, True
    else:
        version, decided = detect_version(resources)

    problems, attempt_items, references = _attempt(bundle, items, source, version, labels, checked)
    if problems and not decided:
        retry = _attempt(bundle, items, source, "R5", labels)
        if not retry[0]:
            version = "R5"
            problems, attempt_items, references = retry
    raise_all(problems)
    for item, refs in zip(attempt_items, references, strict=True):
        item.references = refs
    try:
        parsed = _finish(attempt_items, source, version, id_factory, resolve)
    except InputError as exc:
        exc.validated_as = version  # valid as `version`; only its references failed
        raise
    if bundle is not None and bundle.get("type") == "document" and raw is not None and parsed:
        parsed.append(_document(bundle, raw, parsed[0], version, id_factory))
    return parsed


def _document(
    bundle: dict[str, Any],
    raw: bytes,
    composition: ParsedResource,
    version: FhirVersion,
    id_factory: IdFactory,
) -> ParsedResource:
    """The document Bundle itself, as received, belonging to its Composition's patient."""
    original = bundle.get("id")
    original_id = original if isinstance(original, str) else None
    meta = bundle.get("meta")
    source = meta.get("source") if isinstance(meta, dict) else None
    return ParsedResource(
        resource_type="Bundle",
        id=_new_id(id_factory, "Bundle", original_id),
        json_bytes=raw,
        patient_ref=composition.patient_ref,
        entry_index=None,
        fhir_version=version,
        source_ref=f"Bundle/{original_id}" if original_id else None,
        resource=orjson.loads(raw),
        source_system=source.split("#", 1)[0] if isinstance(source, str) else "",
        source_id=original_id,
    )


def _has_resource(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("resource"), dict)


def _label(items: list[_Item], labels: Callable[[int], str] | None) -> None:
    if labels is not None:
        for item in items:
            if item.index is not None:
                item.label = labels(item.index)


def _attempt(
    bundle: dict[str, Any] | None,
    items: list[_Item],
    source: str,
    version: FhirVersion,
    labels: Callable[[int], str] | None,
    checked: bool = False,
) -> tuple[list[InputError], list[_Item], list[list[FoundReference]]]:
    """Validate everything as `version`: (problems, items to store, their Reference objects)."""
    problems: list[InputError] = []
    if bundle is not None:
        items = _bundle_items(bundle, source, version, problems)
        _label(items, labels)
        if labels is not None:
            problems = [
                InputError(
                    p.source, labels(p.entry), p.field, p.message, resource_type=p.resource_type
                )
                if isinstance(p.entry, int)
                else p
                for p in problems
            ]
    found, references = _validate_items(items, source, version, checked)
    return problems + found, items, references


def _new_id(id_factory: IdFactory, resource_type: str, original_id: str | None) -> str:
    new_id = id_factory(resource_type, original_id)
    if not isinstance(new_id, str) or not _FHIR_ID.match(new_id):
        raise ValueError("the id factory must return a FHIR id ([A-Za-z0-9-.]{1,64})")
    return new_id


def _source_id(item: _Item) -> str | None:
    original = item.resource.get("id")
    if isinstance(original, str):
        return original
    if item.url and item.method == "PUT":
        put = _RELATIVE.match(item.url)
        if put:
            return put.group(2)
    return None


def _finish(
    items: list[_Item],
    source: str,
    version: FhirVersion,
    id_factory: IdFactory,
    resolve: Resolver | None,
) -> list[ParsedResource]:
    problems: list[InputError] = []
    source_ids = [_source_id(item) for item in items]
    for item, source_id in zip(items, source_ids, strict=True):
        item.new_id = _new_id(id_factory, item.resource_type, source_id)
        if item.new_id != item.resource.get("id"):
            item.changed = True
    index = _build_index(items, source, problems)
    for item in items:
        outcomes = _resolve_item(item, index, resolve)
        refusal = _settle_patient(item, outcomes, version, source)
        if refusal is not None:
            problems.append(refusal)
    raise_all(problems)
    out: list[ParsedResource] = []
    for item, source_id in zip(items, source_ids, strict=True):
        source_ref = item.full_url
        if source_ref is None and isinstance(item.resource.get("id"), str):
            source_ref = f"{item.resource_type}/{item.resource['id']}"
        source_system = _source_system(item)
        item.resource["id"] = item.new_id
        if item.raw is not None and not item.changed:
            json_bytes = item.raw
        else:
            try:
                json_bytes = _dumps(item.resource)
            except orjson.JSONEncodeError:
                # Validation bounds every number; this is the last line should one slip by.
                problems.append(
                    InputError(
                        source,
                        item.label,
                        None,
                        "the resource cannot be written as JSON (a number out of range?)",
                        resource_type=item.resource_type,
                    )
                )
                continue
        out.append(
            ParsedResource(
                resource_type=item.resource_type,
                id=item.new_id,
                json_bytes=json_bytes,
                patient_ref=item.patient_ref,
                entry_index=item.index,
                fhir_version=version,
                source_ref=source_ref,
                request_method=item.method,
                request_url=item.url,
                if_none_exist=item.if_none_exist,
                resource=item.resource,
                source_system=source_system,
                source_id=source_id,
                warnings=tuple(item.warnings),
            )
        )
    raise_all(problems)
    return out


def reference_holders(node: Any) -> list[dict[str, Any]]:
    """Every object of a resource (at any depth) with a `reference` string, in document
    order: one walk, for a caller that reads the references and then repoints them."""
    found: list[dict[str, Any]] = []

    def walk(item: dict[str, Any] | list[Any]) -> None:
        if isinstance(item, dict):
            if isinstance(item.get("reference"), str):
                found.append(item)
            for value in item.values():
                if isinstance(value, (dict, list)):
                    walk(value)
        else:
            for value in item:
                if isinstance(value, (dict, list)):
                    walk(value)

    if isinstance(node, (dict, list)):
        walk(node)
    return found


def repoint_references(node: Any, targets: Mapping[str, str]) -> None:
    """In place: every `reference` of a resource (at any depth) found in `targets` becomes its
    target (a stored rid after ingestion, an entry's urn:uuid inside an assembled document)."""
    for holder in reference_holders(node):
        target = targets.get(holder["reference"])
        if target is not None:
            holder["reference"] = target


__all__ = [
    "SUPPORTED_BUNDLE_TYPES",
    "IdFactory",
    "ParsedResource",
    "Resolver",
    "detect_version",
    "is_supporting",
    "keep_ids",
    "namespaced_ids",
    "parse_fhir",
    "parse_fhir_object",
    "reference_holders",
    "repoint_references",
    "sequential_ids",
    "uuid_ids",
]
