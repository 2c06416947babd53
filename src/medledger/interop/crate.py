"""RO-Crate packages of what a study published, with the chain references that let a reader
check it (the `rocrate` package writes and reads them).

One crate is one published thing: a dataset release (`study-release`) or a federated query's
result (`study-query-result`). Its `ro-crate-metadata.json` carries

- on the root dataset: the kind, the chain id, the study (a contextual entity), and the
  release number or the query id and hash;
- each file (`hasPart`) with its `sha256` and size;
- each act on the chain that made it (`mentions`): an action entity per tx, with the tx id,
  its block height, who signed it (an Organization) and, for an answer, how many patients
  that hospital answered for (`patientsAnswered`); the last answer, whose tx published the
  result, names `result.json` as its `result`.

The terms medledger adds are declared in the metadata's context under `urn:medledger:terms#`.

`verify(directory, engine, chain_id)` checks every reference against the chain (each tx at
its height, the release's dataset hash and members root, the query's document, hash,
result and contributors) and every file against its hash, and returns what differs: an
empty list means the crate is what the chain says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mimetypes
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from medledger.contracts import queries, study_query
from medledger.interop import study_results
from medledger.ledger import merkle
from medledger.ledger.errors import TxError

TERMS_BASE = "urn:medledger:terms#"
TERMS = {
    name: TERMS_BASE + name
    for name in (
        "medledgerKind",
        "chainId",
        "txId",
        "blockHeight",
        "sha256",
        "releaseSeq",
        "membersRoot",
        "queryId",
        "queryHash",
        "ageOn",
        "patientsAnswered",
        "approvalRole",
    )
}
RELEASE = "study-release"
QUERY_RESULT = "study-query-result"
MEMBERS_FILE = "members.txt"
QUERY_FILE = "query.json"
RESULT_FILE = "result.json"
#: The most verify loads of a file it parses (members.txt: 65 bytes a member; the query,
#: the result and its tables: kilobytes); a dataset is only hashed, CHUNK bytes at a time.
MAX_READ = 64 * 1024 * 1024
CHUNK = 1024 * 1024


class CrateError(ValueError):
    """A directory that is not a medledger crate, or one this code cannot write."""


@dataclass(frozen=True)
class ChainAct:
    """A tx the crate refers to: what it did, who signed it, where it is on the chain."""

    kind: str  # the message kind, e.g. research.query_answer
    tx: bytes
    height: int
    agent: str  # the signing org
    action: str = "CreateAction"  # schema.org action type
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. patientsAnswered, approvalRole

    @property
    def id(self) -> str:
        return f"urn:medledger:tx:{self.tx.hex()}"


@dataclass(frozen=True)
class CrateFile:
    path: str  # relative to the crate's root
    data: bytes
    media_type: str
    description: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _org(org: str) -> str:
    return f"urn:medledger:org:{org}"


def _study(study: str) -> str:
    return f"urn:medledger:study:{study}"


def write(
    directory: Path,
    *,
    kind: str,
    name: str,
    description: str,
    chain_id: str,
    study: str,
    about: dict[str, Any],
    files: list[CrateFile],
    acts: list[ChainAct],
) -> Path:
    """Write a crate into `directory` (created; refused if it holds anything already)."""
    from rocrate.rocrate import ROCrate

    if directory.exists() and any(directory.iterdir()):
        raise CrateError(f"{directory}: not empty; a crate is written into a new directory")
    crate = ROCrate()
    crate.metadata.extra_terms = TERMS
    crate.name = name
    crate.description = description
    crate.root_dataset["medledgerKind"] = kind
    crate.root_dataset["chainId"] = chain_id
    for key, value in about.items():
        crate.root_dataset[key] = value
    crate.add_jsonld(
        {"@id": _study(study), "@type": "ResearchProject", "identifier": study, "name": study}
    )
    crate.root_dataset["about"] = {"@id": _study(study)}
    with tempfile.TemporaryDirectory(prefix="medledger-crate-") as staging:
        for i, f in enumerate(files):
            source = Path(staging) / str(i)
            source.write_bytes(f.data)
            crate.add_file(
                source,
                dest_path=f.path,
                properties={
                    "name": f.path,
                    "description": f.description,
                    "encodingFormat": f.media_type,
                    "contentSize": str(len(f.data)),
                    "sha256": sha256(f.data),
                },
            )
        for org in sorted({a.agent for a in acts}):
            crate.add_jsonld({"@id": _org(org), "@type": "Organization", "identifier": org})
        for act in acts:
            crate.add_jsonld(
                {
                    "@id": act.id,
                    "@type": act.action,
                    "name": act.kind,
                    "agent": {"@id": _org(act.agent)},
                    "txId": act.tx.hex(),
                    "blockHeight": act.height,
                    **act.extra,
                }
            )
        crate.root_dataset["mentions"] = [{"@id": a.id} for a in acts]
        directory.mkdir(parents=True, exist_ok=True)
        crate.write(directory)
    return directory / "ro-crate-metadata.json"


# -- reading and checking ---------------------------------------------------------------------


@dataclass
class Crate:
    """What a crate's metadata says (read back with the `rocrate` package)."""

    directory: Path
    root: dict[str, Any]
    entities: dict[str, dict[str, Any]]

    @property
    def kind(self) -> str:
        return str(self.root.get("medledgerKind", ""))

    @property
    def study(self) -> str:
        about = self.root.get("about") or {}
        entity = self.entities.get(str(about.get("@id", ""))) or {}
        return str(entity.get("identifier", ""))

    def files(self) -> list[dict[str, Any]]:
        return [self.entities[p["@id"]] for p in _list(self.root.get("hasPart"))]

    def acts(self) -> list[dict[str, Any]]:
        return [self.entities[m["@id"]] for m in _list(self.root.get("mentions"))]

    def read(self, path: str) -> bytes:
        """A file of the crate that verify parses (members.txt, the query, the result, its
        tables: small); CrateError when it is missing, not one of its own, or over
        MAX_READ bytes."""
        with self._open(path) as (f, _):
            data = f.read(MAX_READ + 1)
        if len(data) > MAX_READ:
            raise CrateError(f"{path}: more than the {MAX_READ} bytes read to check it")
        return data

    def digest(self, path: str) -> tuple[int, str]:
        """(size, SHA-256 hex) of a file of the crate, read a chunk at a time: a dataset
        may be large, and a crate saying so (or a sparse file) must not fill the memory."""
        h = hashlib.sha256()
        with self._open(path) as (f, size):
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return size, h.hexdigest()

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[tuple[BinaryIO, int]]:
        if path not in {str(f["@id"]) for f in self.files()}:
            raise CrateError(f"{path}: not a file this crate describes")
        try:
            # A crate comes from someone else: a link in it may point at this machine's
            # files (a key: its hash compared is an oracle) or at /dev/zero or a FIFO (the
            # verifier hangs). Only a regular file inside the crate's folder is read: the
            # one opened (no link followed, not blocking on a FIFO) is the one checked.
            target = (self.directory / path).resolve(strict=True)
            if not target.is_relative_to(self.directory.resolve()):
                raise CrateError(f"{path}: a link to outside the crate")
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise CrateError(f"{path}: not a regular file")
                yield f, info.st_size
        except OSError as exc:
            raise CrateError(f"{path}: cannot be read ({exc.strerror})") from None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def load(directory: Path) -> Crate:
    """A crate read back (CrateError naming what is missing)."""
    from rocrate.rocrate import ROCrate

    if not (directory / "ro-crate-metadata.json").is_file():
        raise CrateError(f"{directory}: no ro-crate-metadata.json (not an RO-Crate)")
    try:
        crate = ROCrate(directory)
    except (ValueError, KeyError) as exc:
        raise CrateError(f"{directory}/ro-crate-metadata.json: {exc}") from None
    entities = {e.id: e.properties() for e in crate.get_entities()}
    root = crate.root_dataset.properties()
    if root.get("medledgerKind") not in (RELEASE, QUERY_RESULT):
        raise CrateError(f"{directory}: not a medledger crate (no medledgerKind on ./)")
    for ref in _list(root.get("hasPart")) + _list(root.get("mentions")):
        if ref.get("@id") not in entities:
            raise CrateError(f"{directory}: ./ names {ref.get('@id')!r}, which is not described")
    for ref in _list(root.get("hasPart")):
        path = Path(str(ref["@id"]))
        if path.is_absolute() or ".." in path.parts or ":" in str(path):
            raise CrateError(f"{directory}: file {str(path)!r} is outside the crate")
    return Crate(directory, root, entities)


Check = Callable[[Crate, Any], list[str]]


def verify(directory: Path, engine: queries.Queryable, chain_id: str) -> list[str]:
    """What differs between the crate, its files and the chain (empty: it all agrees)."""
    crate = load(directory)
    differences = []
    if crate.root.get("chainId") != chain_id:
        differences.append(
            f"chainId: the crate says {crate.root.get('chainId')!r}, this ledger is {chain_id!r}"
        )
        return differences  # nothing else can be checked against another chain
    for entity in crate.files():
        path = str(entity["@id"])
        try:
            size, digest = crate.digest(path)
        except CrateError as exc:
            differences.append(str(exc))
            continue
        if str(size) != str(entity.get("contentSize", size)):
            differences.append(
                f"{path}: {size} bytes, the metadata gives {entity.get('contentSize')}"
            )
        elif digest != entity.get("sha256"):
            differences.append(f"{path}: its SHA-256 is not the one the metadata gives")
    for act in crate.acts():
        tx_hex = str(act.get("txId", ""))
        try:
            location = queries.tx_location(engine, bytes.fromhex(tx_hex))
        except ValueError:
            differences.append(f"{act['@id']}: txId {tx_hex!r} is not hex")
            continue
        if location is None:
            differences.append(f"{act.get('name')} tx {tx_hex[:16]}: not on this chain")
        elif location["height"] != act.get("blockHeight"):
            differences.append(
                f"{act.get('name')} tx {tx_hex[:16]}: at height {location['height']}, "
                f"the crate says {act.get('blockHeight')}"
            )
    check = _release_differences if crate.kind == RELEASE else _query_differences
    try:
        return differences + check(crate, engine)
    except CrateError as exc:  # a file the chain's record needs is missing: said once above
        return differences + [f"{exc}: the chain's record cannot be checked"]


def _acts_of(crate: Crate, kind: str) -> dict[str, dict[str, Any]]:
    return {str(a.get("txId")): a for a in crate.acts() if a.get("name") == kind}


def _position(engine: queries.Queryable, tx_hex: str) -> tuple[int, int]:
    """Where a committed tx is: (height, index in its block)."""
    found = queries.tx_location(engine, bytes.fromhex(tx_hex)) or {}
    return int(found.get("height", 0)), int(found.get("index", 0))


def _agent(act: dict[str, Any]) -> str:
    return str((act.get("agent") or {}).get("@id", "")).removeprefix("urn:medledger:org:")


# -- a release ----------------------------------------------------------------------------------


def release_crate(
    directory: Path,
    *,
    chain_id: str,
    release: dict[str, Any],
    height: int,
    dataset_name: str,
    dataset: bytes,
    members: list[bytes],
) -> Path:
    """A crate of a committed release: the dataset, its members' study tokens, the release tx."""
    if dataset_name in (MEMBERS_FILE, "ro-crate-metadata.json", "ro-crate-preview.html"):
        raise CrateError(f"{dataset_name}: a crate's own file name; rename the dataset")
    tokens = "".join(f"{t.hex()}\n" for t in sorted(members)).encode()
    media_type = mimetypes.guess_type(dataset_name)[0] or "application/octet-stream"
    return write(
        directory,
        kind=RELEASE,
        name=f"Release {release['seq']} of study {release['study']}",
        description=(
            "A pseudonymised dataset released under a study. The chain holds its SHA-256, its "
            "counts and the Merkle root of its members' study tokens (members.txt)."
        ),
        chain_id=chain_id,
        study=str(release["study"]),
        about={"releaseSeq": release["seq"], "membersRoot": bytes(release["members_root"]).hex()},
        files=[
            CrateFile(dataset_name, dataset, media_type, "the released dataset"),
            CrateFile(MEMBERS_FILE, tokens, "text/plain", "the members' study tokens, sorted"),
        ],
        acts=[ChainAct("research.release", bytes(release["tx"]), height, release["custodian"])],
    )


def _release_differences(crate: Crate, engine: queries.Queryable) -> list[str]:
    seq = crate.root.get("releaseSeq")
    found = [r for r in queries.study_releases(engine, crate.study) if r["seq"] == seq]
    if not found:
        return [f"release {seq} of study {crate.study!r}: not on this chain"]
    release = found[0]
    differences = []
    acts = _acts_of(crate, "research.release")
    act = acts.get(bytes(release["tx"]).hex())
    if act is None:
        differences.append(f"release {seq}: its tx on the chain is not the crate's")
    elif _agent(act) != release["custodian"]:
        differences.append(f"release {seq}: released by {release['custodian']}, not {_agent(act)}")
    datasets = [f for f in crate.files() if f["@id"] != MEMBERS_FILE]
    if len(datasets) != 1:
        differences.append(f"release {seq}: the crate should hold one dataset besides members.txt")
    else:
        _, digest = crate.digest(str(datasets[0]["@id"]))
        if digest != bytes(release["dataset_hash"]).hex():
            differences.append(
                f"{datasets[0]['@id']}: not the dataset the chain's release {seq} names"
            )
    try:
        tokens = [bytes.fromhex(t) for t in crate.read(MEMBERS_FILE).decode().split()]
    except (UnicodeDecodeError, ValueError):
        return [*differences, f"{MEMBERS_FILE}: not one hex study token a line"]
    if len(tokens) != release["members"]:
        differences.append(
            f"{MEMBERS_FILE}: {len(tokens)} members, the chain's release has {release['members']}"
        )
    if merkle.root(sorted(tokens)) != bytes(release["members_root"]):
        differences.append(f"{MEMBERS_FILE}: its Merkle root is not the chain's members root")
    return differences


# -- a federated query's result -----------------------------------------------------------------


def result_tables(
    doc: dict[str, Any], result: dict[str, Any], *, mark_clamped: bool = True
) -> dict[str, bytes]:
    """The result as CSV tables (`study_results`): "suppressed" for a suppressed cell, never 0."""
    return {
        f"tables/{t.name}.csv": t.csv()
        for t in study_results.tables(doc, result, mark_clamped=mark_clamped)
    }


def _table_differences(crate: Crate, doc: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """How the crate's tables differ from the chain's result. A crate written before clamped
    figures were marked holds them unmarked and without `tables/clamped.csv`: it agrees too,
    as long as every one of its tables is that earlier rendering."""
    current = result_tables(doc, result)
    earlier = result_tables(doc, result, mark_clamped=False)
    differences = []
    for path, data in current.items():
        try:
            if crate.read(path) != data:
                differences.append(f"{path}: not the chain's result as a table")
        except CrateError:
            differences.append(f"{path}: missing (the chain's result has this table)")
    if differences and earlier != current:
        try:
            if all(crate.read(path) == data for path, data in earlier.items()):
                return []
        except CrateError:
            pass
    return differences


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def query_crate(
    directory: Path,
    *,
    chain_id: str,
    query: dict[str, Any],
    acts: list[ChainAct],
) -> Path:
    """A crate of a done query: its document, the result (JSON and CSV tables), and the acts
    (submit, approvals, answers) with what each hospital contributed."""
    result = query["result"]
    bounded = study_results.clamped(query["doc"], result)
    clamped = (
        f" {len(bounded)} noised figure{'s' if len(bounded) > 1 else ''} clamped to the bound "
        "of what the data can give (noise carried them past it): marked "
        f"{study_results.CLAMPED!r} in the tables, listed with why in tables/clamped.csv; "
        f"{RESULT_FILE}, as the chain holds it, shows the bound as a plain number."
        if bounded
        else ""
    )
    files = [
        CrateFile(QUERY_FILE, canonical_json(query["doc"]), "application/json", "the query"),
        CrateFile(
            RESULT_FILE,
            canonical_json(result),
            "application/json",
            "the result, as the chain holds it" + (" (see tables/clamped.csv)" if bounded else ""),
        ),
    ]
    files += [
        CrateFile(f"tables/{t.name}.csv", t.csv(), "text/csv", t.title)
        for t in study_results.tables(query["doc"], result)
    ]
    return write(
        directory,
        kind=QUERY_RESULT,
        name=f"Result of query {query['id']}",
        description=(
            "A federated study query and its combined result: only aggregates, computed by "
            "the hospitals over their own records; suppressed cells are marked, never 0." + clamped
        ),
        chain_id=chain_id,
        study=str(query["study"]),
        about={
            "queryId": query["id"],
            "queryHash": bytes(query["hash"]).hex(),
            "ageOn": str(query.get("age_on", "")),  # ages were taken on this day
        },
        files=files,
        acts=acts,
    )


def _query_differences(crate: Crate, engine: queries.Queryable) -> list[str]:
    query_id = str(crate.root.get("queryId", ""))
    query = engine.query("research/query", {"query": query_id})
    if query is None:
        return [f"query {query_id!r}: not on this chain"]
    differences = []
    if bytes(query["hash"]).hex() != crate.root.get("queryHash"):
        differences.append(f"queryHash: not the chain's hash of query {query_id}")
    try:
        document = study_query.parse(json.loads(crate.read(QUERY_FILE)))
        if study_query.query_hash(document) != bytes(query["hash"]):
            differences.append(f"{QUERY_FILE}: its hash is not the chain's for {query_id}")
    except (ValueError, TxError) as exc:  # CrateError: missing, said by the caller
        if isinstance(exc, CrateError):
            raise
        differences.append(f"{QUERY_FILE}: not a query document ({exc})")
    if crate.root.get("ageOn") != str(query.get("age_on", "")):
        differences.append(f"ageOn: the chain took ages on {query.get('age_on')!r}")
    result = query.get("result")
    if result is None:
        differences.append(f"query {query_id}: has no result on the chain ({query['status']})")
        return differences
    try:
        same = json.loads(crate.read(RESULT_FILE)) == json.loads(canonical_json(result))
    except json.JSONDecodeError:
        same = False
    if not same:
        differences.append(f"{RESULT_FILE}: not the result the chain holds for {query_id}")
    differences += _table_differences(crate, query["doc"], result)
    answered = {a.tx.hex(): a for a in study_results.answers(query)}
    acts = _acts_of(crate, "research.query_answer")
    for tx_hex, answer in sorted(answered.items()):
        act = acts.get(tx_hex)
        if act is None:
            differences.append(f"the answer of {answer.org}: missing from the crate")
        elif _agent(act) != answer.org or act.get("patientsAnswered") != answer.patients:
            differences.append(
                f"the answer of {answer.org}: the crate says {_agent(act)} for "
                f"{act.get('patientsAnswered')} patients, the chain {answer.patients}"
            )
    for tx_hex in sorted(set(acts) - set(answered)):
        differences.append(f"answer tx {tx_hex[:16]}: the chain lists no such answer")
    publishing = [tx for tx, act in acts.items() if act.get("result") == {"@id": RESULT_FILE}]
    last = max(answered, key=lambda tx: _position(engine, tx), default="")
    if publishing != [last]:
        differences.append(
            f"{RESULT_FILE}: published by answer tx {last[:16]}, not as the crate says"
        )
    approved = {a.tx.hex(): a for a in study_results.approvals(query)}
    approvals = _acts_of(crate, "research.query_approve")
    for tx_hex in sorted(set(approved) ^ set(approvals)):
        differences.append(f"approval tx {tx_hex[:16]}: in the crate or the chain, not both")
    if bytes(query["tx"]).hex() not in _acts_of(crate, "research.query_submit"):
        differences.append(f"the submit tx of {query_id}: not the crate's")
    return differences
