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
(orjson reads JSON decimals as doubles, so `7.10` comes back as `7.1` in rewritten entries.)

One input is all or nothing: every problem of every entry is collected, then one `InputError`
is raised carrying them all (`InputError.problems`), and nothing is returned. This is what a
transaction Bundle means, and it keeps a file's resources and their references consistent.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from medledger.interop.errors import InputError, raise_all
from medledger.interop.validate import (
    FhirVersion,
    Problem,
    model_class,
    problems_from_validation_error,
    validate_resource,
    version_evidence,
)

#: `id_factory(resource_type, original_id) -> new id`: the id a resource is stored under.
IdFactory = Callable[[str, str | None], str]
#: `resolve(reference) -> "Type/id" | None`: a reference to something outside the input
#: (`Patient/123` as the sender knows it, `Patient?identifier=...`), mapped to a stored resource.
Resolver = Callable[[str], str | None]

SUPPORTED_BUNDLE_TYPES = ("transaction", "batch", "collection", "document", "searchset")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?$")
_ABSOLUTE = re.compile(
    r"^(https?://.+)/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?$"
)
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
_NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.txt")
#: Where a resource points at its patient, in priority order (patient compartment, R4 and R5).
_PATIENT_FIELDS = ("subject", "patient", "beneficiary", "for", "individual")


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


#: Resources that belong to no patient but that documents and messages carry (who acted, where,
#: with what): stored as the hospital's own, not as a patient's record.
SUPPORTING_TYPES = frozenset(
    {
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "OrganizationAffiliation",
        "Location",
        "HealthcareService",
        "Endpoint",
        "Medication",
        "MedicationKnowledge",
        "Device",
        "DeviceDefinition",
        "Substance",
    }
)


def is_supporting(resource_type: str) -> bool:
    """Whether a resource of this type belongs to no patient (see `SUPPORTING_TYPES`)."""
    return resource_type in SUPPORTING_TYPES


def _source_system(item: _Item) -> str:
    """Whose id space the sender's id is in: meta.source, else the base of an absolute fullUrl."""
    meta = item.resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("source"), str) and meta["source"]:
        return str(meta["source"])
    absolute = _ABSOLUTE.match(item.full_url or "")
    return absolute.group(1) if absolute else ""


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
    references: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    changed: bool = False

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType"))


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


def _read_items(data: bytes, source: str) -> tuple[dict[str, Any] | None, list[_Item]]:
    """(bundle dict or None, items) of an input; raises InputError for broken JSON."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise InputError(source, None, None, "the file is empty")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if not _looks_ndjson(data, source):
            raise _json_error(source, None, error) from None
        document = None
    if document is None or source.lower().endswith(_NDJSON_SUFFIXES):
        return None, _ndjson_items(data, source)
    if not isinstance(document, dict):
        raise InputError(source, None, None, "expected a JSON object (a FHIR resource)")
    if document.get("resourceType") == "Bundle":
        return document, []
    return None, [_Item(None, None, document, data)]


def _ndjson_items(data: bytes, source: str) -> list[_Item]:
    items: list[_Item] = []
    problems: list[InputError] = []
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        label = f"line {number + 1}"
        try:
            resource = orjson.loads(line)
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
    items: list[_Item], source: str, version: FhirVersion
) -> tuple[list[InputError], list[list[tuple[dict[str, Any], str]]]]:
    problems: list[InputError] = []
    references: list[list[tuple[dict[str, Any], str]]] = []
    for item in items:
        found, refs = validate_resource(item.resource, version)
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
            system, bar, code = urllib.parse.unquote(value).partition("|")
            wanted.append((system, code) if bar else (None, system))
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


def _resolve_reference(
    reference: str, index: _Index, resolve: Resolver | None
) -> tuple[str | None, str | None]:
    """(new reference, error message) for one literal reference of the input."""
    known, target = index.find(reference)
    if not known:
        relative = _RELATIVE.match(reference)
        if relative:
            known, target = index.find(f"{relative.group(1)}/{relative.group(2)}")
    if known:
        if target is None:
            return None, f"reference {reference!r} is ambiguous (several entries match)"
        return f"{target.resource_type}/{target.new_id}", None
    conditional = _CONDITIONAL.match(reference)
    if conditional:
        matches = index.by_identifier(conditional.group(1), conditional.group(2))
        if len(matches) == 1:
            return f"{matches[0].resource_type}/{matches[0].new_id}", None
        if len(matches) > 1:
            return None, f"conditional reference to {conditional.group(1)} matches several entries"
    replacement = resolve(reference) if resolve is not None else None
    if replacement is not None:
        if not _RELATIVE.match(replacement):
            raise ValueError("the resolver must return a 'Type/id' reference")
        return replacement, None
    if conditional:
        # The search may contain an identifier (an INS): name the type only.
        return None, (
            f"conditional reference to {conditional.group(1)} matches no entry of the input "
            "and no stored resource"
        )
    return (
        None,
        f"reference {reference!r} does not match any entry of the input nor a stored resource",
    )


def _patient_ref(item: _Item) -> str | None:
    if item.resource_type == "Patient":
        return item.new_id
    resource = item.resource
    for name in _PATIENT_FIELDS:
        value = resource.get(name)
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, dict):
                target = ref.get("reference")
                if isinstance(target, str) and target.startswith("Patient/"):
                    return target[len("Patient/") :]
    if item.resource_type == "Appointment":
        for participant in resource.get("participant") or []:
            actor = participant.get("actor") if isinstance(participant, dict) else None
            target = actor.get("reference") if isinstance(actor, dict) else None
            if isinstance(target, str) and target.startswith("Patient/"):
                return target[len("Patient/") :]
    return None


# --------------------------------------------------------------------------- entry point


def parse_fhir(
    data: bytes,
    source: str,
    *,
    fhir_version: FhirVersion | None = None,
    id_factory: IdFactory = uuid_ids,
    resolve: Resolver | None = None,
) -> list[ParsedResource]:
    """Validate one FHIR JSON input and prepare its resources for storage.

    `data` is a single resource, a Bundle (transaction, batch, collection, document, searchset)
    or NDJSON (one resource per line; detected from a `.ndjson`/`.jsonl` name or the content).
    `source` names the input in error messages (usually the file name).
    `fhir_version` forces R4 or R5; by default it is detected (meta.profile, version-specific
    fields) and is R4 when nothing says otherwise; an undecided input that fails as R4 but
    passes as R5 is taken as R5.
    `id_factory` gives each resource the id it will be stored under; every reference inside the
    input (`urn:uuid:` fullUrls, relative `Type/id`, absolute URLs equal to a fullUrl,
    `Type?identifier=system|value`) is rewritten to `Type/<new id>`. Other references go to
    `resolve`; one that neither matches nor resolves is an error. Contained (`#id`) references
    are left alone.

    Raises `InputError` (with every problem of the input in `.problems`); returns nothing
    partial.
    """
    bundle, items = _read_items(data, source)
    return _parse_document(bundle, items, source, fhir_version, id_factory, resolve)


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
        return _parse_document(document, [], source, fhir_version, id_factory, resolve, labels)
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

    problems, attempt_items, references = _attempt(bundle, items, source, version, labels)
    if problems and not decided:
        retry = _attempt(bundle, items, source, "R5", labels)
        if not retry[0]:
            version = "R5"
            problems, attempt_items, references = retry
    raise_all(problems)
    for item, refs in zip(attempt_items, references, strict=True):
        item.references = refs
    return _finish(attempt_items, source, version, id_factory, resolve)


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
) -> tuple[list[InputError], list[_Item], list[list[tuple[dict[str, Any], str]]]]:
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
    found, references = _validate_items(items, source, version)
    return problems + found, items, references


def _finish(
    items: list[_Item],
    source: str,
    version: FhirVersion,
    id_factory: IdFactory,
    resolve: Resolver | None,
) -> list[ParsedResource]:
    problems: list[InputError] = []
    source_ids: dict[int, str | None] = {}
    for item in items:
        original = item.resource.get("id")
        original_id = original if isinstance(original, str) else None
        if item.url and item.method == "PUT":
            put = _RELATIVE.match(item.url)
            if put and original_id is None:
                original_id = put.group(2)
        source_ids[id(item)] = original_id
        new_id = id_factory(item.resource_type, original_id)
        if not isinstance(new_id, str) or not _FHIR_ID.match(new_id):
            raise ValueError("the id factory must return a FHIR id ([A-Za-z0-9-.]{1,64})")
        item.new_id = new_id
        if new_id != original:
            item.changed = True
    index = _build_index(items, source, problems)
    for item in items:
        for holder, path in item.references:
            reference = holder["reference"]
            if reference.startswith("#"):
                continue
            new_reference, error = _resolve_reference(reference, index, resolve)
            if error is not None:
                problems.append(
                    InputError(source, item.label, path, error, resource_type=item.resource_type)
                )
            elif new_reference != reference:
                holder["reference"] = new_reference
                item.changed = True
    raise_all(problems)
    out: list[ParsedResource] = []
    for item in items:
        source_ref = item.full_url
        if source_ref is None and isinstance(item.resource.get("id"), str):
            source_ref = f"{item.resource_type}/{item.resource['id']}"
        item.resource["id"] = item.new_id
        if item.raw is not None and not item.changed:
            json_bytes = item.raw
        else:
            try:
                json_bytes = orjson.dumps(item.resource)
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
                patient_ref=_patient_ref(item),
                entry_index=item.index,
                fhir_version=version,
                source_ref=source_ref,
                request_method=item.method,
                request_url=item.url,
                if_none_exist=item.if_none_exist,
                resource=item.resource,
                source_system=_source_system(item),
                source_id=source_ids[id(item)],
            )
        )
    raise_all(problems)
    return out


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
    "sequential_ids",
    "uuid_ids",
]
