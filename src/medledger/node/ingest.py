"""Ingestion: FHIR or HL7 v2 files into a hospital's vault and onto the shared index.

For each input unit (a file; NDJSON in chunks), all or nothing: the resources are validated,
pseudonymised to their patient's pid, encrypted into the vault and held provisional in one
vault transaction, then their index entries (commitment + sealed metadata) are registered on
the chain in one tx. The unit is confirmed once that tx commits; if the chain refuses it, its
records are withdrawn and nothing of the unit remains anywhere. `registrations` says how a
crash in between loses nothing.

Limits: an input larger than `max_bytes` (20 MiB by default) is refused before it is read
(files) or parsed (bytes), and one with more than `max_resources` resources (10,000) before
it is validated; both are set per hospital in config.json (`ingest.max_bytes`,
`ingest.max_resources`). Every refusal names the input and, where it can, the entry and field;
an input that breaks the parser in an unforeseen way is refused too, and the batch goes on.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from medledger.contracts import queries
from medledger.contracts.authorize import MAX_CHECKS
from medledger.contracts.records import Register
from medledger.host.secretfile import SecretFileError
from medledger.interop.errors import InputError
from medledger.interop.fhir import is_supporting, repoint_references
from medledger.interop.hl7v2 import CodeMaps
from medledger.node import Node, registrations
from medledger.node.aliases import Aliases
from medledger.node.indexing import commitment, seal_meta
from medledger.node.registrations import RegistrationFailed, RegistrationPending
from medledger.node.wallet import TxRejected
from medledger.vault import NewRecord, Vault
from medledger.vault.errors import PatientErased, VaultError

log = logging.getLogger(__name__)

CHUNK = 1000  # resources per chain tx for NDJSON bulk files (a Bundle is never split)
_HL7_SUFFIXES = (".hl7", ".hl7v2", ".er7")
MAX_BYTES = 20 * 1024 * 1024  # a 50 MB Bundle took 446 MB of memory to validate
MAX_RESOURCES = 10_000
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?$")
_ABSOLUTE = re.compile(
    r"^(https?://.+)/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?$"
)
_CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
_REFERENCE_MEMBER = re.compile(rb'"reference":"([^"\\]*)"')  # compact JSON, no escapes
#: A parser's warning about the patient link (passed on as the refusal's reason).
_PATIENT_FIELD_WARNINGS = tuple(
    f"field {name}" for name in ("subject", "patient", "beneficiary", "for", "individual")
)


@dataclass
class Rejection:
    source: str
    where: str
    reason: str


@dataclass
class UnitResult:
    source: str
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    rids: list[str] = field(default_factory=list)
    pids: set[str] = field(default_factory=set)
    warnings: list[Rejection] = field(default_factory=list)
    unchanged: int = 0  # already stored with the same content: nothing done
    updated: int = 0  # stored as a new version of a resource stored before


class Ingestor:
    """Ingests files for one hospital: its node (to reach the chain) and its vault."""

    def __init__(
        self,
        node: Node,
        vault: Vault,
        max_bytes: int | None = None,
        max_resources: int | None = None,
    ) -> None:
        self.node = node
        self.vault = vault
        self.org = node.config.org
        self._planning = threading.Lock()
        self._inflight = _Inflight()
        #: Whether `ingest_many` registers each unit in a thread of its own while it stores
        #: the next: when blocks are made by another process (CometBFT: the registration
        #: mostly waits for a block, ≈ 1 s). The solo engine executes the block in the
        #: registering thread, and that thread only contends with the storing one for the GIL
        #: (measured slower, docs/benchmarks.md).
        self.register_in_background = not _in_process(node.engine)
        limits = node.config.ingest
        self.max_bytes = max_bytes or limits.max_bytes or MAX_BYTES
        self.max_resources = max_resources or limits.max_resources or MAX_RESOURCES
        self.hl7_codes = node.config.hl7.codes()  # the hospital's HL7 v2 code tables

    @functools.cached_property
    def pseudonym_key(self) -> bytes:
        """Read when first needed: a joining node runs (block sync, gateway) before `join`
        has fetched the key from a member, and only ingestion needs it."""
        return self.node.config.pseudonym_key()

    @functools.cached_property
    def aliases(self) -> Aliases:
        return Aliases(self.pseudonym_key, self.org)

    # -- entry points ----------------------------------------------------------------------
    def ingest_path(self, path: Path) -> UnitResult:
        read = self.read_file(path)
        return read if isinstance(read, UnitResult) else self.ingest_bytes(*read)

    def read_file(self, path: Path) -> tuple[bytes, str] | UnitResult:
        """(bytes, name) of a file, or its refusal when unreadable or above `max_bytes`.

        A file too large is refused on its size, before a byte of it is read.
        """
        source = path.name
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes:
                    return self._too_large(source, size)
                data = f.read(self.max_bytes + 1)  # the file may have grown since
        except OSError as exc:
            reason = f"cannot read: {exc.strerror or type(exc).__name__}"
            return UnitResult(source, rejections=[Rejection(source, "", reason)])
        if len(data) > self.max_bytes:
            return self._too_large(source, None)
        return data, source

    def read_files(self, paths: Iterable[Path]) -> Iterator[tuple[bytes, str] | UnitResult]:
        """`read_file` for each path, lazily: the input of `ingest_many`."""
        for path in paths:
            yield self.read_file(path)

    def _too_large(self, source: str, size: int | None) -> UnitResult:
        what = f"{size} bytes" if size is not None else "larger"
        reason = (
            f"the file is too large: {what}, more than the ingestion limit of {self.max_bytes} "
            "bytes (ingest.max_bytes); split it"
        )
        return UnitResult(source, rejections=[Rejection(source, "", reason)])

    def ingest_many(
        self,
        inputs: Iterable[tuple[bytes, str] | UnitResult],
        workers: int = 2,
        sender: str = "",
    ) -> Iterator[UnitResult]:
        """Ingest several inputs, validating them in `workers` processes ahead of storing.

        Validation (fhir.resources) is most of the work and needs nothing of this hospital, so
        it runs in parallel, a bounded number of inputs ahead; storing stays in this process,
        in input order. An input that does not validate on its own (say, it refers to a
        patient stored earlier) is validated again here, where references to this hospital's
        records resolve. With `register_in_background`, each unit's registration on the chain
        runs in a thread of its own while the next input is stored (see `_Registrar`); a
        result is yielded once its registration ended, in input order.
        """
        from collections import deque

        registrar = None
        if self.register_in_background:
            registrar = _Registrar(self.node, self.vault, self._inflight)
        done: deque[_Ingesting] = deque()
        try:
            for ingesting in self._store_many(inputs, workers, sender, registrar):
                done.append(ingesting)
                if len(done) > 1:  # the one before is registered by now, or nearly
                    yield done.popleft().result()
            while done:
                yield done.popleft().result()
        finally:
            if registrar is not None:
                registrar.close()

    def _store_many(
        self,
        inputs: Iterable[tuple[bytes, str] | UnitResult],
        workers: int,
        sender: str,
        registrar: _Registrar | None,
    ) -> Iterator[_Ingesting]:
        """Each input stored (its registration under way), in input order."""
        from collections import deque

        if workers <= 1:
            for given in inputs:
                if isinstance(given, UnitResult):
                    yield _Ingesting(given)
                else:
                    yield self._ingest(*given, sender=sender, registrar=registrar)
            return
        pool = _validation_pool(workers)
        window: deque[UnitResult | tuple[bytes, str, Future[_Alone | str | None] | None]]
        window = deque()

        def settle(
            item: UnitResult | tuple[bytes, str, Future[_Alone | str | None] | None],
        ) -> _Ingesting:
            if isinstance(item, UnitResult):
                return _Ingesting(item)  # refused before reading (too large, unreadable)
            data, source, future = item
            parsed = None
            if future is not None:
                try:
                    alone = future.result()
                except Exception:  # noqa: BLE001 - a worker crash: validate again here
                    alone = None
                if isinstance(alone, str):  # valid; its references resolve only here
                    return self._ingest(
                        data, source, sender=sender, registrar=registrar, validated_as=alone
                    )
                if alone is not None:
                    parsed, asked, metadata = alone
                    unique = dict.fromkeys(asked)  # a Bundle names one reference many times
                    if any(self._resolve(ref, sender=sender) is not None for ref in unique):
                        # This hospital's records resolve more: resolve again here, without
                        # re-running the models over bytes the worker validated (FHIR JSON).
                        if not _is_hl7(data, source) and parsed:
                            checked = parsed[0].fhir_version
                            return self._ingest(
                                data,
                                source,
                                sender=sender,
                                registrar=registrar,
                                validated_as=checked,
                            )
                        parsed = None
            if parsed is None:
                return self._ingest(data, source, sender=sender, registrar=registrar)
            known = {id(item): meta for item, meta in zip(parsed, metadata, strict=True)}
            return self._ingest(
                data, source, parsed, sender=sender, registrar=registrar, metadata=known
            )

        for given in inputs:
            if isinstance(given, UnitResult):
                window.append(given)
            else:
                data, source = given
                # Too large or too many: refused by ingest_bytes, not shipped to a worker.
                ahead = self._precheck(data, source) is None
                future = _submit(pool, data, source, self.hl7_codes) if ahead else None
                window.append((data, source, future))
            if len(window) > workers * 4:
                yield settle(window.popleft())
        while window:
            yield settle(window.popleft())

    def ingest_bytes(
        self,
        data: bytes,
        source: str,
        parsed: list[Any] | None = None,
        author: str = "",
        sender: str = "",
    ) -> UnitResult:
        """Ingest one input (a file's bytes); every problem comes back as a `Rejection`.

        `author` names who wrote the records (the API's caller, see `records.register`);
        "" for the hospital's own feeds. `sender` is the id space of the sender's ids that
        say nothing of theirs (no `meta.source`, no absolute fullUrl): a resource sent again
        with the same id by the same sender is the same resource (unchanged, or a new
        version), and `Type/<id>` references to what it sent before resolve."""
        return self._ingest(data, source, parsed, author, sender).result()

    def _ingest(
        self,
        data: bytes,
        source: str,
        parsed: list[Any] | None = None,
        author: str = "",
        sender: str = "",
        registrar: _Registrar | None = None,
        metadata: dict[int, dict[str, Any]] | None = None,
        validated_as: str | None = None,
    ) -> _Ingesting:
        """`ingest_bytes`; with a `registrar`, its units' registrations still running.
        `metadata`: the index metadata of resources of `parsed`, by `id()`, where a
        validation worker extracted it already (`_parse_alone`). `validated_as`: a worker
        validated these FHIR bytes as that version; only the resolution runs again."""
        result = UnitResult(source)
        ingesting = _Ingesting(result)
        try:
            if parsed is None:
                refused = self._precheck(data, source)
                if refused is not None:
                    raise refused
                resolve = functools.partial(self._resolve, sender=sender)
                parsed = _parse(data, source, resolve, self.hl7_codes, validated_as)
            if len(parsed) > self.max_resources:
                raise _too_many(source, len(parsed), self.max_resources)
        except InputError as exc:
            result.rejections = [
                Rejection(source, p.location().removeprefix(source).lstrip(", "), p.message)
                for p in exc.problems
            ]
            return ingesting
        except SecretFileError as exc:  # the pseudonym key, before `join` has fetched it
            result.rejections = [Rejection(source, "", f"{exc}; nothing of it stored")]
            return ingesting
        except Exception as exc:  # noqa: BLE001 - any input gets an answer, never a traceback
            # Only the type: a library's message may quote the input (a name, an INS).
            log.error("ingesting %s: unexpected %s while reading it", source, type(exc).__name__)
            reason = f"the file could not be read ({type(exc).__name__}); nothing of it stored"
            result.rejections = [Rejection(source, "", reason)]
            return ingesting
        bundle_like = not source.lower().endswith((".ndjson", ".jsonl"))
        chunks = [parsed] if bundle_like else list(_chunks(parsed, CHUNK))
        moved: dict[str, str] = {}  # across the chunks of one file (see _store_unit)
        for chunk in chunks:
            try:
                held = self._store_unit(chunk, source, author, sender, moved, metadata)
                ingesting.registering.append((held, self._register(held, registrar)))
            except InputError as exc:
                where = exc.location().removeprefix(source).lstrip(", ")
                result.rejections.append(Rejection(source, where, exc.message))
            except (TxRejected, RegistrationPending, RegistrationFailed) as exc:
                result.rejections.append(_not_registered(source, exc))
            except PatientErased:
                reason = (
                    "the patient was erased here; nothing stored (`medledger vault reinstate` "
                    "first, if they came back)"
                )
                result.rejections.append(Rejection(source, "", reason))
            except (ConnectionError, VaultError):
                raise  # the node or the vault is down: no file can go in, say so once
            except Exception as exc:  # noqa: BLE001 - the batch goes on with the next file
                # The vault batch rolled back; a unit already held is settled by reconcile.
                kind = type(exc).__name__
                log.error("ingesting %s: unexpected %s while storing it", source, kind)
                reason = f"could not be stored ({kind}); see the node's log"
                result.rejections.append(Rejection(source, "", reason))
        return ingesting

    def _precheck(self, data: bytes, source: str) -> InputError | None:
        """The refusal of an input too large or with too many resources, known before parsing."""
        if len(data) > self.max_bytes:
            return InputError(
                source,
                None,
                None,
                f"the file is too large: {len(data)} bytes, more than the ingestion limit of "
                f"{self.max_bytes} bytes (ingest.max_bytes); split it",
            )
        count = _count_resources(data, source)
        if count > self.max_resources:
            return _too_many(source, count, self.max_resources)
        return None

    # -- internals ---------------------------------------------------------------------------
    def _resolve(self, reference: str, sender: str = "") -> str | None:
        """A reference to a resource stored earlier at this hospital, as `Type/<rid>`.

        The forms the parser hands over (interop.fhir.Resolver): `Type/<rid>`, `Type/<id>` in
        the sender's id space (`sender`), an absolute URL (its base is the id space),
        `Type?identifier=system|value`. None when nothing, or more than one resource, matches
        (other searches included: they are not resolved here).
        """
        conditional = _CONDITIONAL.match(reference)
        if conditional:
            kind = conditional.group(1)
            alias = self.aliases.search(kind, conditional.group(2))
            return self._one_named(kind, [alias] if alias else [])
        absolute = _ABSOLUTE.match(reference)
        if absolute:
            base, kind, sid = absolute.groups()
            return self._one_named(kind, [self.aliases.source(base, kind, sid)])
        relative = _RELATIVE.match(reference)
        if relative is None:
            return None
        kind, rid = relative.groups()
        if self._stored_type(rid) == kind:
            return f"{kind}/{rid}"
        return self._one_named(kind, [self.aliases.source(sender, kind, rid)])

    def _stored_type(self, rid: str) -> str | None:
        """The type of a readable record stored here under `rid`, else None."""
        from medledger.vault.errors import PatientErased, RecordNotFound

        self._inflight.wait(rid=rid)
        try:
            return self.vault.info(rid).resource_type
        except (RecordNotFound, PatientErased, ValueError):
            return None

    def _one_named(self, kind: str, aliases: list[bytes]) -> str | None:
        rids = {rid for found in self.vault.recall(aliases).values() for rid in found}
        rids = {rid for rid in rids if self._stored_type(rid) == kind}
        return f"{kind}/{rids.pop()}" if len(rids) == 1 else None

    def _existing_patient(self, pid: str) -> str | None:
        self._inflight.wait(pid=pid)
        for info in self.vault.records_of(pid, include_copies=False):
            if info.resource_type == "Patient":
                return info.rid
        return None

    def _plan(self, parsed: list[Any], source: str, sender: str) -> list[_Step]:
        """Where each resource of a unit goes: a new rid, or a resource stored before (the same
        sender's id, the same identifiers for a Patient, `PUT`, `If-None-Exist`)."""
        steps = [_Step(item, item.id, "", self._names(item, sender)) for item in parsed]
        unit: dict[bytes, str] = {}  # alias -> rid, for what this unit brings
        by_rid: dict[str, _Step] = {}
        # The stored rids of every alias of the unit, in one query (not one per resource);
        # each is checked again (`_stored_type`) where it is used.
        names = [alias for step in steps for alias in step.aliases]
        stored: dict[bytes, list[str]] = dict.fromkeys(names, []) | self.vault.recall(names)
        # Patients first: the others take their pid.
        for step in sorted(steps, key=lambda s: s.item.resource_type != "Patient"):
            item = step.item
            found = self._matches(item, step.aliases, unit, source, sender, stored)
            if item.resource_type == "Patient":
                step.pid, found = self._patient_match(item, found, by_rid, source)
            elif found:
                found = found[:1]
            if found:
                rid = found[0]
                step.rid = rid
                step.stored = by_rid[rid].stored if rid in by_rid else True
                step.kept = item.if_none_exist is not None
            for alias in step.aliases:
                unit.setdefault(alias, step.rid)
            by_rid.setdefault(step.rid, step)
        return steps

    def _names(self, item: Any, sender: str) -> list[bytes]:
        """The aliases a resource is remembered by: its sender's id, its identifiers."""
        names: list[bytes] = []
        if item.source_id:
            system = item.source_system or sender
            names.append(self.aliases.source(system, item.resource_type, item.source_id))
        names += self.aliases.identifiers(item.resource)
        return names

    def _matches(
        self,
        item: Any,
        names: list[bytes],
        unit: dict[bytes, str],
        source: str,
        sender: str,
        stored: dict[bytes, list[str]],
    ) -> list[str]:
        """Stored (or earlier in this unit) rids this resource is the same as, best first.

        A sender's id says "the same resource" for any type; identifiers only for a Patient
        (one Patient per person), a supporting resource, or a conditional create or update.
        `stored`: the rids of aliases recalled already (the unit's), others are recalled here.
        """
        kind = item.resource_type
        found: list[str] = []
        wanted: list[bytes] = []
        url = item.request_url or ""
        if item.request_method == "PUT" and url:
            relative, conditional = _RELATIVE.match(url), _CONDITIONAL.match(url)
            if relative and self._stored_type(relative.group(2)) == kind:
                found.append(relative.group(2))
            elif relative:
                system = item.source_system or sender
                wanted.append(self.aliases.source(system, kind, relative.group(2)))
            elif conditional:
                alias = self.aliases.search(kind, conditional.group(2))
                if alias is None:
                    raise _refusal(
                        item,
                        source,
                        "request.url",
                        "a conditional update is taken only by identifier=system|value",
                    )
                wanted.append(alias)
        if item.if_none_exist is not None:
            alias = self.aliases.search(kind, item.if_none_exist)
            if alias is None:
                raise _refusal(
                    item,
                    source,
                    "request.ifNoneExist",
                    "a conditional create is taken only by identifier=system|value",
                )
            wanted.append(alias)
        by_source = names[:1] if item.source_id else []
        wanted += by_source
        if kind == "Patient" or is_supporting(kind):
            wanted += names[len(by_source) :]
        missing = [n for n in wanted if n not in unit and n not in stored]
        recalled = stored | self.vault.recall(missing) if missing else stored
        for name in wanted:
            for rid in [unit[name]] if name in unit else recalled.get(name, []):
                if rid not in found and (name in unit or self._stored_type(rid) == kind):
                    found.append(rid)
        return found

    def _patient_match(
        self, item: Any, found: list[str], by_rid: dict[str, _Step], source: str
    ) -> tuple[str, list[str]]:
        """(pid, [rid of the stored Patient it is] or []) for a Patient: the person its
        identifiers or sender's id found, else its pseudonym's; refused when it matches two."""
        from medledger.interop.pseudonym import NoPatientIdentifier, patient_pid

        pids: dict[str, str] = {}
        for rid in found:
            pid = by_rid[rid].pid if rid in by_rid else self.vault.info(rid).pid
            pids.setdefault(pid, rid)
        if len(pids) > 1:
            raise _refusal(
                item,
                source,
                "identifier",
                f"its identifiers match {len(pids)} different "
                "patients stored here; not merged (correct the identifiers, or merge the "
                "patients first)",
            )
        if pids:
            [(pid, rid)] = pids.items()
            return pid, [rid]
        try:
            pid = patient_pid(self.pseudonym_key, item.resource)
        except (NoPatientIdentifier, ValueError) as exc:
            raise _refusal(item, source, "identifier", str(exc)) from None
        same = [
            s.rid for s in by_rid.values() if s.pid == pid and s.item.resource_type == "Patient"
        ]
        existing = same[:1] or [r for r in [self._existing_patient(pid)] if r is not None]
        return pid, existing

    def _store_unit(
        self,
        parsed: list[Any],
        source: str,
        author: str = "",
        sender: str = "",
        moved: dict[str, str] | None = None,
        metadata: dict[int, dict[str, Any]] | None = None,
    ) -> _Held:
        """Store one unit (a file, or a chunk of an NDJSON file) in one vault transaction,
        held provisional; the returned `_Held` registers it in one chain tx (`_register`).
        `moved` (parser's `Type/id` -> stored `Type/rid`, for resources found stored before)
        is extended for the next chunks of the same file, whose references were made to the
        parser's ids."""
        from medledger.interop.metadata import document_categories

        # One unit of this ingestor at a time from planning to the vault's commit: two
        # threads (API calls) sending the same new resource cannot both create it.
        with self._planning:
            steps = self._plan(parsed, source, sender)
            self._settle_earlier(steps, source)
            moved = {} if moved is None else moved
            moved.update(
                (f"{s.item.resource_type}/{s.item.id}", f"{s.item.resource_type}/{s.rid}")
                for s in steps
                if s.rid != s.item.id
            )
            patients = {s.rid: s.pid for s in steps if s.item.resource_type == "Patient"}
            # What the batch reads of earlier units must be settled: never wait inside it.
            for step in steps:
                if step.stored:
                    self._inflight.wait(rid=step.rid)
                if step.item.patient_ref is not None:
                    ref = f"Patient/{step.item.patient_ref}"
                    self._inflight.wait(rid=moved.get(ref, ref).removeprefix("Patient/"))
            entries: list[dict[str, Any]] = []
            disclosures = _Disclosures(self.node, self.org)
            held: list[tuple[str, int]] = []
            latest: dict[str, bytes] = {}  # rid -> the content this unit leaves it with
            epochs: dict[str, int] = {}
            meta_keys: dict[str, bytes] = {}  # pid -> its metadata key (read once per unit)
            derived: dict[tuple[bytes, str, int], bytes] = {}  # category keys (seal_meta)
            updated = unchanged = 0
            # The unit's new versions are written together (Vault.put_many); a resource met
            # again in the unit first writes what precedes it, so that it reads it back.
            writing: list[tuple[_Step, bytes, int]] = []

            def write() -> None:
                records = [
                    NewRecord(
                        s.pid, s.rid, v, d, s.item.resource_type, self.org, aliases=tuple(s.aliases)
                    )
                    for s, d, v in writing
                ]
                for (step, data, version), stored in zip(
                    writing, self.vault.put_many(records), strict=True
                ):
                    held.append((step.rid, version))
                    if step.pid == self.vault.hospital_pid:
                        continue  # the hospital's own: not a patient's record, not on the chain
                    meta = (metadata or {}).get(id(step.item)) or _metadata(step.item)
                    whole = (
                        document_categories(step.item.resource)
                        if step.item.resource_type == "Bundle"
                        else []
                    )
                    disclosures.add(step.pid, step.rid, meta, whole)
                    if step.pid not in epochs:  # sealed in the patient's epoch (indexing.py)
                        epochs[step.pid] = self._epoch(step.pid)
                        meta_keys[step.pid] = self.vault.metadata_key(step.pid)
                    key = meta_keys[step.pid]
                    sealed = seal_meta(key, step.rid, version, meta, epochs[step.pid], derived)
                    digest = commitment(stored.salt, data)
                    entries.append(
                        {"rid": step.rid, "pid": step.pid, "commitment": digest, "meta_ct": sealed}
                        | ({"version": version} if version > 1 else {})
                    )
                writing.clear()

            # Not durable at its commit: the claim of its unit (registrations.register), a
            # durable commit that follows it before anything leaves, makes it durable (one
            # disk sync per unit less); a unit with nothing to register syncs here.
            with self.vault.batch(durable=False):
                for step in steps:
                    item = step.item
                    step.pid = step.pid or self._owner(item, moved, patients, source)
                    data = _rewritten(item, step.rid, moved)
                    if step.rid in latest:
                        write()  # met before in this unit: read back what it wrote
                    before = latest.get(step.rid)
                    if before is None and step.stored:
                        if self.vault.info(step.rid).pid != step.pid:
                            raise _refusal(
                                item,
                                source,
                                None,
                                "it was stored before (same sender's id) for "
                                "another patient, or as no patient's; a record never moves between "
                                "patients: send it under a new id",
                            )
                        before = self.vault.get(step.rid)
                    if before is not None and (step.kept or _same_content(before, data)):
                        unchanged += 1
                        self.vault.remember(step.rid, step.aliases)
                        continue
                    version = 1
                    if before is not None:
                        version = max(self.vault.versions(step.rid)) + 1
                        updated += 1
                    writing.append((step, data, version))
                    latest[step.rid] = data
                write()
                unit = self.vault.hold(held) if entries else None
            if unit is None:
                self.vault.sync()
        # The chain decides, in one tx for the whole unit (new records and new versions
        # alike), after the vault committed: the vault lock is not held while it decides.
        msg = Register(entries, disclosures.as_body(), author) if unit else None
        return _Held(source, unit, msg, steps, updated, unchanged, self.vault.hospital_pid)

    def _register(self, held: _Held, registrar: _Registrar | None) -> Future[Any] | None:
        """Register a held unit: here and now, or in `registrar`'s thread (its future)."""
        if held.unit is None or held.msg is None:
            return None
        if registrar is not None:
            return registrar.submit(held)
        registrations.register(self.node.wallet, self.vault, held.unit, held.msg)
        return None

    def _owner(
        self, item: Any, moved: dict[str, str], patients: dict[str, str], source: str
    ) -> str:
        """The pid a resource is stored under: its patient's, or the hospital's own."""
        from medledger.vault.errors import PatientErased, RecordNotFound

        if item.patient_ref is None:
            if is_supporting(item.resource_type):
                return self.vault.hospital_pid
            named = [w for w in item.warnings if w.startswith(_PATIENT_FIELD_WARNINGS)]
            reason = (
                named[0]
                if named
                else f"a {item.resource_type} belongs to a patient, and this one names none "
                "(subject or patient)"
            )
            raise _refusal(item, source, None, reason)
        ref = moved.get(f"Patient/{item.patient_ref}", f"Patient/{item.patient_ref}")
        rid = ref.removeprefix("Patient/")
        if rid in patients:
            return patients[rid]
        try:
            return self.vault.info(rid).pid
        except (RecordNotFound, PatientErased):
            raise _refusal(
                item,
                source,
                "subject",
                "the resource belongs to no known patient (no Patient "
                "in this input and none stored before)",
            ) from None

    def _settle_earlier(self, steps: list[_Step], source: str) -> None:
        """A resource found stored, still waiting for its registration (a retried file after
        "registration pending"): settle that unit first, or refuse rather than store twice."""
        stored = {s.rid for s in steps if s.stored}
        if not stored:
            return
        for rid in stored:
            self._inflight.wait(rid=rid)
        for unit in self.vault.provisional():
            if not stored.intersection(rid for rid, _ in unit.records):
                continue
            fate = registrations.settle(self.node.engine, self.vault, unit)
            if fate == "failed":
                raise InputError(
                    source,
                    None,
                    None,
                    "an earlier ingestion of these resources could not be "
                    "registered and was withdrawn just now; nothing was stored: send the file "
                    "again",
                )
            if fate != "committed":
                raise InputError(
                    source,
                    None,
                    None,
                    "an earlier ingestion of these resources is still waiting "
                    "for its registration (`medledger records pending`); nothing was stored "
                    "twice: send the file again once it is settled",
                )

    def _epoch(self, pid: str) -> int:
        """The patient's metadata epoch now, on this node's replica (authorize.meta_epoch)."""
        epoch = self.node.engine.query(
            "authorize/epoch", {"pid": pid, "at_ms": int(time.time() * 1000)}
        )
        return int(epoch)


@dataclass
class _Step:
    """What becomes of one parsed resource: the rid and pid it goes to."""

    item: Any  # interop.fhir.ParsedResource
    rid: str
    pid: str  # "" until known; the vault's hospital_pid for a supporting resource
    aliases: list[bytes] = field(default_factory=list)
    stored: bool = False  # `rid` is a resource stored before this unit
    kept: bool = False  # a conditional create that found it: left as it is


@dataclass
class _Held:
    """A unit stored and held provisional: what registers it, and what it adds to its
    input's result once registered."""

    source: str
    unit: str | None  # the vault's provisional unit; None: nothing to register
    msg: Register | None
    steps: list[_Step]
    updated: int
    unchanged: int
    hospital_pid: str

    def apply(self, result: UnitResult) -> None:
        steps = self.steps
        result.accepted += len(steps)
        result.updated += self.updated
        result.unchanged += self.unchanged
        result.rids += list(dict.fromkeys(s.rid for s in steps))
        result.pids |= {s.pid for s in steps if s.pid != self.hospital_pid}
        for step in steps:
            where = _where(step.item)
            result.warnings += [Rejection(self.source, where, w) for w in step.item.warnings]


@dataclass
class _Ingesting:
    """One input stored, its units' registrations perhaps still running in a `_Registrar`."""

    unit_result: UnitResult
    registering: list[tuple[_Held, Future[Any] | None]] = field(default_factory=list)

    def result(self) -> UnitResult:
        """The input's result, once every registration of its units ended."""
        result = self.unit_result
        for held, future in self.registering:
            if future is not None:
                try:
                    future.result()
                except (TxRejected, RegistrationPending, RegistrationFailed) as exc:
                    result.rejections.append(_not_registered(result.source, exc))
                    continue
                except (ConnectionError, VaultError):
                    raise  # the node or the vault is down, as in ingest_bytes
                except Exception as exc:  # noqa: BLE001 - reconcile settles the unit
                    kind = type(exc).__name__
                    log.error("registering %s: unexpected %s", result.source, kind)
                    reason = f"could not be registered ({kind}); see the node's log"
                    result.rejections.append(Rejection(result.source, "", reason))
                    continue
            held.apply(result)
        self.registering = []
        return result


class _Inflight:
    """Records (and patients) of units whose registration runs in a `_Registrar`'s thread.

    A lookup that finds one waits for that registration to end first: a refused one
    withdraws the records, and nothing must be planned on them (a later unit's resource
    attached to a Patient that is then withdrawn)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rids: dict[str, Future[Any]] = {}
        self._pids: dict[str, Future[Any]] = {}

    def add(self, held: _Held, future: Future[Any]) -> None:
        rids = [s.rid for s in held.steps]
        pids = [s.pid for s in held.steps]
        with self._lock:
            self._rids.update(dict.fromkeys(rids, future))
            self._pids.update(dict.fromkeys(pids, future))
        future.add_done_callback(lambda done: self._forget(rids, pids, done))

    def _forget(self, rids: list[str], pids: list[str], done: Future[Any]) -> None:
        with self._lock:
            for table, keys in ((self._rids, rids), (self._pids, pids)):
                for key in keys:
                    if table.get(key) is done:
                        del table[key]

    def wait(self, rid: str | None = None, pid: str | None = None) -> None:
        """Return once no registration of `rid` (or of a unit with `pid`) is running."""
        from concurrent.futures import wait

        with self._lock:
            future = self._rids.get(rid) if rid is not None else self._pids.get(pid or "")
        if future is not None:
            wait([future])  # its outcome is reported with its own input


class _Registrar:
    """Registers held units in a thread of its own, one after the other (the wallet's nonces
    stay in order), while the caller stores the next input.

    The crash guarantees are `registrations`': a unit is stored and held before its
    registration is sent, so a crash leaves a provisional unit that `reconcile` settles."""

    def __init__(self, node: Node, vault: Vault, inflight: _Inflight) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.node = node
        self.vault = vault
        self.inflight = inflight
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="register")

    def submit(self, held: _Held) -> Future[Any]:
        assert held.unit is not None and held.msg is not None
        future = self._thread.submit(
            registrations.register, self.node.wallet, self.vault, held.unit, held.msg
        )
        self.inflight.add(held, future)
        return future

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def _in_process(engine: Any) -> bool:
    """Whether the engine makes its blocks in this process, in the caller's thread (solo)."""
    from medledger.consensus.solo import SoloEngine

    return isinstance(engine, SoloEngine)


def _not_registered(
    source: str, exc: TxRejected | RegistrationPending | RegistrationFailed
) -> Rejection:
    if isinstance(exc, TxRejected):
        return Rejection(source, "", f"refused by the ledger: {exc}")
    if isinstance(exc, RegistrationPending):
        return Rejection(source, "", f"registration pending: {exc}")
    return Rejection(source, "", f"not registered: {exc}")


class _Disclosures:
    """Which other hospitals are entitled (for treatment) to each new record, by `authorize`.

    Their disclosure is logged in the registration's own tx, so that an entitled hospital's
    sync agent is served the record as soon as it sees it (see `records.register`). The
    decisions, one per (patient, hospital, category, type), are asked at once when the unit
    is complete (`authorize/check_many`, a query per `MAX_CHECKS`).
    """

    def __init__(self, node: Node, org: str) -> None:
        self.node = node
        self.org = org
        self.now = int(time.time() * 1000)
        members = queries.members(node.engine)
        self.others = [str(m["org"]) for m in members if m["org"] != org]
        self._decided: dict[tuple[str, str, str, str], str] = {}
        self._records: list[tuple[str, str, str, list[str]]] = []  # pid, rid, type, categories

    def add(self, pid: str, rid: str, meta: dict[str, Any], also: Iterable[str] = ()) -> None:
        """Disclose the record to each hospital entitled to it; with `also` (a document's
        entries' categories), only to one entitled to each of those categories too."""
        categories = [str(meta.get("category")), *also]
        self._records.append((pid, rid, str(meta.get("type") or ""), categories))

    def _decide(self) -> None:
        """Ask `authorize` the decisions the unit needs: each record's own category, then a
        document's entries' categories for the hospitals entitled to the document's."""
        own = [
            (pid, o, categories[0], kind)
            for pid, _, kind, categories in self._records
            for o in self.others
        ]
        self._ask(own)
        self._ask(
            [
                (pid, o, category, kind)
                for pid, _, kind, categories in self._records
                for o in self.others
                if self._decided[(pid, o, categories[0], kind)]
                for category in categories[1:]
            ]
        )

    def _ask(self, keys: list[tuple[str, str, str, str]]) -> None:
        """The decisions not known yet, in as few queries as it takes."""
        asked = [key for key in dict.fromkeys(keys) if key not in self._decided]
        for i in range(0, len(asked), MAX_CHECKS):
            part = asked[i : i + MAX_CHECKS]
            checks = [
                {
                    "actor": other,
                    "pid": pid,
                    "meta": {"custodian": self.org, "category": category, "type": kind},
                    "purpose": "treatment",
                    "at_ms": self.now,
                }
                for pid, other, category, kind in part
            ]
            decisions = self.node.engine.query("authorize/check_many", {"checks": checks})
            for key, decision in zip(part, decisions, strict=True):
                self._decided[key] = str(decision["basis"]) if decision["allowed"] else ""

    def as_body(self) -> list[dict[str, Any]]:
        """The disclosures of the unit: per (hospital, basis), the rids it is entitled to
        (the basis of the record's own category)."""
        self._decide()
        found: dict[tuple[str, str], list[str]] = {}
        for pid, rid, kind, categories in self._records:
            for other in self.others:
                basis = self._decided[(pid, other, categories[0], kind)]
                if basis and all(self._decided[(pid, other, c, kind)] for c in categories[1:]):
                    found.setdefault((other, basis), []).append(rid)
        return [
            {"org": org, "basis": basis, "rids": rids}
            for (org, basis), rids in sorted(found.items())
        ]


def _parse(
    data: bytes,
    source: str,
    resolve: Callable[[str], str | None] | None,
    hl7_codes: CodeMaps | None = None,
    validated_as: str | None = None,
) -> list[Any]:
    from medledger.interop.fhir import parse_fhir
    from medledger.interop.hl7v2 import HL7_TABLES, parse_hl7v2

    if _is_hl7(data, source):
        return parse_hl7v2(data, source, resolve=resolve, codes=hl7_codes or HL7_TABLES)
    version: Any = validated_as  # "R4" or "R5", as the worker's ParsedResource says
    return parse_fhir(data, source, resolve=resolve, validated_as=version)


def _is_hl7(data: bytes, source: str) -> bool:
    return source.lower().endswith(_HL7_SUFFIXES) or data.lstrip().startswith(b"MSH")


def _count_resources(data: bytes, source: str) -> int:
    """An upper bound of the resources an input holds, counted without parsing it.

    NDJSON: its lines; a Bundle: its `"resource"` keys; HL7 v2: its segments (each PID, PV1,
    OBR or OBX becomes at most one resource). The exact count is checked again after parsing.
    """
    if _is_hl7(data, source):
        return max(data.count(b"\r"), data.count(b"\n")) + 1
    if source.lower().endswith((".ndjson", ".jsonl")):
        return data.count(b"\n") + 1
    return data.count(b'"resource"') or 1


def _too_many(source: str, count: int, limit: int) -> InputError:
    return InputError(
        source,
        None,
        None,
        f"too many resources: {count}, more than the ingestion limit of {limit} "
        "(ingest.max_resources); split the file",
    )


#: A worker's parse, the references it would have asked this hospital about, and the index
#: metadata of each resource parsed (extracted there: it needs nothing of the hospital).
_Alone = tuple[list[Any], list[str], list[dict[str, Any]]]


#: Imported once by the forkserver, so that each validation worker starts with them loaded
#: (fhir.resources builds a model's validators when its module is imported: ≈ 1 s of CPU
#: per worker for the types every input carries).
_WORKER_PRELOAD = [
    "__main__",
    "medledger.node.ingest",
    *(
        f"fhir.resources.R4B.{name}"
        for name in [
            "bundle",
            "allergyintolerance",
            "composition",
            "condition",
            "encounter",
            "immunization",
            "medication",
            "medicationrequest",
            "medicationstatement",
            "observation",
            "organization",
            "patient",
            "practitioner",
            "practitionerrole",
            "procedure",
            "diagnosticreport",
        ]
    ),
]
_pools: dict[int, Any] = {}
_pools_lock = threading.Lock()


@atexit.register
def _close_pools() -> None:
    """Shut the kept pools down while the interpreter is whole: left to module teardown, their
    manager threads' callbacks run against half-cleared modules and print tracebacks."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _validation_pool(workers: int) -> Any:
    """The process pool of `workers` validation workers, started once and kept for the
    process's life: starting a worker costs more than validating a few hundred resources."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None or getattr(pool, "_broken", False):
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_WORKER_PRELOAD)  # no effect once the server runs
            pool = _pools[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        return pool


def _submit(pool: Any, data: bytes, source: str, codes: CodeMaps) -> Any:
    """A worker's validation of one input, or None (validated at home) if the pool is broken
    (a worker died: the next `ingest_many` starts a new pool)."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return pool.submit(_parse_alone, data, source, codes)
    except (BrokenProcessPool, RuntimeError):
        return None


def _parse_alone(data: bytes, source: str, hl7_codes: CodeMaps) -> _Alone | str | None:
    """In a worker process: validate without this hospital's records (None: redo at home; a
    FHIR version: the FHIR JSON is valid as that version, only its references need the home's
    records, say a resource naming a patient stored earlier)."""
    asked: list[str] = []

    def unknown(reference: str) -> None:
        asked.append(reference)  # answered at home: if any resolves there, it parses again

    try:
        parsed = _parse(data, source, unknown, hl7_codes)
        return parsed, asked, [_metadata(item) for item in parsed]
    except InputError as exc:
        return exc.validated_as if exc.validated_as and not _is_hl7(data, source) else None
    except Exception:  # noqa: BLE001 - worse: decided again at home
        return None


def _refusal(item: Any, source: str, field_name: str | None, message: str) -> InputError:
    return InputError(
        source, item.entry_index, field_name, message, resource_type=item.resource_type
    )


def _where(item: Any) -> str:
    if item.entry_index is None:
        return str(item.resource_type)
    return f"entry {item.entry_index} ({item.resource_type})"


def _rewritten(item: Any, rid: str, moved: dict[str, str]) -> bytes:
    """The resource's bytes, stored under `rid`, its references to resources found stored
    before (`moved`: parser's `Type/id` -> stored `Type/rid`) pointing at them. A document
    Bundle is kept as it was received."""
    data: bytes = item.json_bytes
    if item.resource_type == "Bundle":
        return data
    hits = [old for old in moved if old.encode() in data]
    if not hits and rid == item.id:
        return data
    if rid == item.id:
        repointed = _repointed(data, {old: moved[old] for old in hits})
        if repointed is not None:
            return repointed
    resource = orjson.loads(data)
    if hits:
        repoint_references(resource, moved)
    resource["id"] = rid
    return orjson.dumps(resource)


def _repointed(data: bytes, targets: dict[str, str]) -> bytes | None:
    """`data` with each reference in `targets` (`Type/id`, no character JSON escapes)
    repointed, in its bytes; None unless each occurrence of each is a whole `"reference"`
    member in compact form (the parser's output): the caller then decodes the resource.

    A `"reference":"<old>"` in the bytes is always a member: within a JSON string, quotes are
    escaped. The other bytes stay as they were (numbers as written, key order)."""
    encoded = {old.encode(): new.encode() for old, new in targets.items()}
    for old in encoded:
        if data.count(b'"reference":"' + old + b'"') != data.count(old):
            return None

    def repoint(member: re.Match[bytes]) -> bytes:
        return b'"reference":"' + encoded.get(member[1], member[1]) + b'"'

    return _REFERENCE_MEMBER.sub(repoint, data)


def _same_content(stored: bytes, new: bytes) -> bool:
    """Whether two versions say the same, `id` and `meta` (lastUpdated, source...) aside."""
    if stored == new:
        return True
    a, b = orjson.loads(stored), orjson.loads(new)
    for doc in (a, b):
        doc.pop("id", None)
        doc.pop("meta", None)
    return bool(a == b)


def _metadata(item: Any) -> dict[str, Any]:
    """The index metadata of a record; a document Bundle's is its Composition's (category
    `documents`), see interop.metadata.document_categories for who may read it whole."""
    from medledger.interop.metadata import extract_metadata

    # The parsed dict: the stored bytes differ from it by references and id at most, which
    # the metadata does not read.
    resource = item.resource or orjson.loads(item.json_bytes)
    if item.resource_type != "Bundle":
        return extract_metadata(resource)
    entries = resource.get("entry") or []
    first = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    about = first if isinstance(first, dict) else resource
    return extract_metadata(about) | {"type": "Bundle", "category": "documents"}


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
