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

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from medledger.contracts import queries
from medledger.contracts.records import Register
from medledger.interop.errors import InputError
from medledger.node import Node, registrations
from medledger.node.indexing import commitment, seal_meta
from medledger.node.registrations import RegistrationFailed, RegistrationPending
from medledger.node.wallet import TxRejected
from medledger.vault import Vault
from medledger.vault.errors import VaultError

log = logging.getLogger(__name__)

CHUNK = 1000  # resources per chain tx for NDJSON bulk files (a Bundle is never split)
_HL7_SUFFIXES = (".hl7", ".hl7v2", ".er7")
MAX_BYTES = 20 * 1024 * 1024  # a 50 MB Bundle took 446 MB of memory to validate
MAX_RESOURCES = 10_000


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
        self.pseudonym_key = node.config.pseudonym_key()
        limits = node.config.ingest
        self.max_bytes = max_bytes or limits.max_bytes or MAX_BYTES
        self.max_resources = max_resources or limits.max_resources or MAX_RESOURCES

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
        self, inputs: Iterable[tuple[bytes, str] | UnitResult], workers: int = 2
    ) -> Iterator[UnitResult]:
        """Ingest several inputs, validating them in `workers` processes ahead of storing.

        Validation (fhir.resources) is most of the work and needs nothing of this hospital, so
        it runs in parallel, a bounded number of inputs ahead; storing and registering stay in
        this process, in input order. An input that does not validate on its own (say, it
        refers to a patient stored earlier) is validated again here, where references to this
        hospital's records resolve.
        """
        if workers <= 1:
            for given in inputs:
                yield given if isinstance(given, UnitResult) else self.ingest_bytes(*given)
            return
        import multiprocessing
        from collections import deque
        from concurrent.futures import Future, ProcessPoolExecutor

        ctx = multiprocessing.get_context("forkserver")
        window: deque[UnitResult | tuple[bytes, str, Future[_Alone | None] | None]]
        window = deque()

        def settle(
            item: UnitResult | tuple[bytes, str, Future[_Alone | None] | None],
        ) -> UnitResult:
            if isinstance(item, UnitResult):
                return item  # refused before reading (a file too large, unreadable)
            data, source, future = item
            parsed = None
            if future is not None:
                try:
                    alone = future.result()
                except Exception:  # noqa: BLE001 - a worker crash: validate again here
                    alone = None
                if alone is not None:
                    parsed, asked = alone
                    if any(self._resolve(reference) is not None for reference in asked):
                        parsed = None  # this hospital's records resolve more: parse here
            return self.ingest_bytes(data, source, parsed=parsed)

        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for given in inputs:
                if isinstance(given, UnitResult):
                    window.append(given)
                else:
                    data, source = given
                    # Too large or too many: refused by ingest_bytes, not shipped to a worker.
                    ahead = self._precheck(data, source) is None
                    future = pool.submit(_parse_alone, data, source) if ahead else None
                    window.append((data, source, future))
                if len(window) > workers * 4:
                    yield settle(window.popleft())
            while window:
                yield settle(window.popleft())

    def ingest_bytes(
        self, data: bytes, source: str, parsed: list[Any] | None = None, author: str = ""
    ) -> UnitResult:
        """Ingest one input (a file's bytes); every problem comes back as a `Rejection`.

        `author` names who wrote the records (the API's caller, see `records.register`);
        "" for the hospital's own feeds."""
        result = UnitResult(source)
        try:
            if parsed is None:
                refused = self._precheck(data, source)
                if refused is not None:
                    raise refused
                parsed = _parse(data, source, self._resolve)
            if len(parsed) > self.max_resources:
                raise _too_many(source, len(parsed), self.max_resources)
        except InputError as exc:
            result.rejections = [
                Rejection(source, p.location().removeprefix(source).lstrip(", "), p.message)
                for p in exc.problems
            ]
            return result
        except Exception as exc:  # noqa: BLE001 - any input gets an answer, never a traceback
            # Only the type: a library's message may quote the input (a name, an INS).
            log.error("ingesting %s: unexpected %s while reading it", source, type(exc).__name__)
            reason = f"the file could not be read ({type(exc).__name__}); nothing of it stored"
            result.rejections = [Rejection(source, "", reason)]
            return result
        bundle_like = not source.lower().endswith((".ndjson", ".jsonl"))
        chunks = [parsed] if bundle_like else list(_chunks(parsed, CHUNK))
        for chunk in chunks:
            try:
                self._store_unit(chunk, source, result, author)
            except InputError as exc:
                where = exc.location().removeprefix(source).lstrip(", ")
                result.rejections.append(Rejection(source, where, exc.message))
            except TxRejected as exc:
                result.rejections.append(Rejection(source, "", f"refused by the ledger: {exc}"))
            except RegistrationPending as exc:
                result.rejections.append(Rejection(source, "", f"registration pending: {exc}"))
            except RegistrationFailed as exc:
                result.rejections.append(Rejection(source, "", f"not registered: {exc}"))
            except (ConnectionError, VaultError):
                raise  # the node or the vault is down: no file can go in, say so once
            except Exception as exc:  # noqa: BLE001 - the batch goes on with the next file
                # The vault batch rolled back; a unit already held is settled by reconcile.
                kind = type(exc).__name__
                log.error("ingesting %s: unexpected %s while storing it", source, kind)
                reason = f"could not be stored ({kind}); see the node's log"
                result.rejections.append(Rejection(source, "", reason))
        return result

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
    def _resolve(self, reference: str) -> str | None:
        """A reference to a resource stored earlier at this hospital (e.g. `Patient/<rid>`)."""
        from medledger.vault.errors import RecordNotFound

        kind, _, rid = reference.partition("/")
        if not rid or "/" in rid:
            return None
        try:
            info = self.vault.info(rid)
        except RecordNotFound:
            return None
        return f"{kind}/{rid}" if info.resource_type == kind else None

    def _patient_pids(self, parsed: list[Any], source: str) -> dict[str, str]:
        """rid of each Patient (in this unit or stored before) -> pid."""
        from medledger.interop.pseudonym import NoPatientIdentifier, patient_pid
        from medledger.vault.errors import RecordNotFound

        pids: dict[str, str] = {}
        for item in parsed:
            if item.resource_type == "Patient":
                try:
                    pids[item.id] = patient_pid(self.pseudonym_key, item.resource)
                except (NoPatientIdentifier, ValueError) as exc:
                    raise InputError(
                        source, item.entry_index, "identifier", str(exc), resource_type="Patient"
                    ) from None
        for item in parsed:
            ref = item.patient_ref
            if ref and ref not in pids:
                with contextlib.suppress(RecordNotFound):
                    pids[ref] = self.vault.info(ref).pid
        return pids

    def _epoch(self, pid: str) -> int:
        """The patient's metadata epoch now, on this node's replica (authorize.meta_epoch)."""
        epoch = self.node.engine.query(
            "authorize/epoch", {"pid": pid, "at_ms": int(time.time() * 1000)}
        )
        return int(epoch)

    def _existing_patient(self, pid: str) -> str | None:
        for info in self.vault.records_of(pid, include_copies=False):
            if info.resource_type == "Patient":
                return info.rid
        return None

    def _store_unit(
        self, parsed: list[Any], source: str, result: UnitResult, author: str = ""
    ) -> None:
        from medledger.interop.metadata import extract_metadata

        pids = self._patient_pids(parsed, source)
        items, replaced = self._honour_conditional_patients(parsed, pids)
        entries: list[dict[str, Any]] = []
        disclosures = _Disclosures(self.node, self.org)
        unit_rids: list[str] = []
        unit_pids: set[str] = set()
        held: list[tuple[str, int]] = []
        epochs: dict[str, int] = {}
        with self.vault.batch():
            for item in items:
                pid = pids.get(item.patient_ref or "")
                if pid is None:
                    raise InputError(
                        source,
                        item.entry_index,
                        "subject",
                        "the resource belongs to no known patient (no Patient in this input "
                        "and none stored before)",
                        resource_type=item.resource_type,
                    )
                data = item.json_bytes
                for old, new in replaced.items():
                    data = data.replace(f"Patient/{old}".encode(), f"Patient/{new}".encode())
                rid, version = item.id, 1
                if item.request_method == "PUT" and item.resource_type == "Patient":
                    existing = self._existing_patient(pid)
                    if existing is not None:
                        rid = existing
                        version = max(self.vault.versions(rid)) + 1
                        data = _with_id(data, rid)
                stored = self.vault.put(
                    pid, rid, version, data, resource_type=item.resource_type, custodian=self.org
                )
                meta = extract_metadata(orjson.loads(data))
                disclosures.add(pid, rid, meta)
                if pid not in epochs:  # sealed in the patient's epoch (indexing.py)
                    epochs[pid] = self._epoch(pid)
                sealed = seal_meta(self.vault.metadata_key(pid), rid, version, meta, epochs[pid])
                digest = commitment(stored.salt, data)
                entries.append(
                    {"rid": rid, "pid": pid, "commitment": digest, "meta_ct": sealed}
                    | ({"version": version} if version > 1 else {})
                )
                unit_rids.append(rid)
                unit_pids.add(pid)
                held.append((rid, version))
            unit = self.vault.hold(held) if held else None
        # The chain decides, in one tx for the whole unit (new records and new versions
        # alike), after the vault committed: the vault lock is not held while it decides.
        if unit is not None:
            msg = Register(entries, disclosures.as_body(), author)  # defaults left out
            registrations.register(self.node.wallet, self.vault, unit, msg)
        result.accepted += len(items)
        result.rids += unit_rids
        result.pids |= unit_pids

    def _honour_conditional_patients(
        self, parsed: list[Any], pids: dict[str, str]
    ) -> tuple[list[Any], dict[str, str]]:
        """A conditional create (HL7 A01/A04/R01) of a patient we already hold reuses it."""
        keep: list[Any] = []
        replaced: dict[str, str] = {}
        for item in parsed:
            if item.resource_type == "Patient" and item.if_none_exist:
                existing = self._existing_patient(pids[item.id])
                if existing is not None:
                    replaced[item.id] = existing
                    pids[existing] = pids[item.id]
                    continue
            keep.append(item)
        keep = [
            dataclasses.replace(item, patient_ref=replaced[item.patient_ref])
            if item.patient_ref in replaced
            else item
            for item in keep
        ]
        return keep, replaced


class _Disclosures:
    """Which other hospitals are entitled (for treatment) to each new record, by `authorize`.

    Their disclosure is logged in the registration's own tx, so that an entitled hospital's
    sync agent is served the record as soon as it sees it (see `records.register`).
    """

    def __init__(self, node: Node, org: str) -> None:
        self.node = node
        self.org = org
        self.now = int(time.time() * 1000)
        members = queries.members(node.engine)
        self.others = [str(m["org"]) for m in members if m["org"] != org]
        self._decided: dict[tuple[str, str, str, str], str] = {}
        self.found: dict[tuple[str, str], list[str]] = {}  # (org, basis) -> rids

    def add(self, pid: str, rid: str, meta: dict[str, Any]) -> None:
        for other in self.others:
            key = (pid, other, str(meta.get("category")), str(meta.get("type")))
            if key not in self._decided:
                decision = self.node.engine.query(
                    "authorize/check",
                    {
                        "actor": other,
                        "pid": pid,
                        "meta": {
                            "custodian": self.org,
                            "category": meta.get("category"),
                            "type": meta.get("type") or "",
                        },
                        "purpose": "treatment",
                        "at_ms": self.now,
                    },
                )
                self._decided[key] = str(decision["basis"]) if decision["allowed"] else ""
            basis = self._decided[key]
            if basis:
                self.found.setdefault((other, basis), []).append(rid)

    def as_body(self) -> list[dict[str, Any]]:
        return [
            {"org": org, "basis": basis, "rids": rids}
            for (org, basis), rids in sorted(self.found.items())
        ]


def _parse(data: bytes, source: str, resolve: Callable[[str], str | None] | None) -> list[Any]:
    from medledger.interop.fhir import parse_fhir
    from medledger.interop.hl7v2 import parse_hl7v2

    if _is_hl7(data, source):
        return parse_hl7v2(data, source, resolve=resolve)
    return parse_fhir(data, source, resolve=resolve)


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


#: A worker's parse and the references it would have asked this hospital about.
_Alone = tuple[list[Any], list[str]]


def _parse_alone(data: bytes, source: str) -> _Alone | None:
    """In a worker process: validate without this hospital's records (None: redo at home)."""
    asked: list[str] = []

    def unknown(reference: str) -> None:
        asked.append(reference)  # answered at home: if any resolves there, it parses again

    try:
        return _parse(data, source, unknown), asked
    except Exception:  # noqa: BLE001 - an InputError, or worse: decided again at home
        return None


def _with_id(data: bytes, rid: str) -> bytes:
    resource = orjson.loads(data)
    resource["id"] = rid
    return orjson.dumps(resource)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
