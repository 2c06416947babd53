"""The corpus: third-party-shaped files ingested in order into one hospital, each with its outcome.

`tests/data/corpus/manifest.json` lists the files in the order a hospital receives them (IPS
documents, FHIR specification examples, Epic, Cerner, Synthea and HAPI exports, HL7 v2 from an
admission system and labs) and, for each, what ingesting it must give and what the hospital
holds right after; its `$comment` documents the format. The whole corpus is ingested once, in
order, before any case is checked (a module fixture), so that each file meets the state the
files before it left, whichever cases are selected; each file is then its own test case.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from medledger.interop.pseudonym import pseudonymise
from medledger.node import Node
from medledger.node.ingest import Ingestor, UnitResult
from medledger.provisioning import create_consortium
from medledger.vault import Vault

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_bytes())
FILES: list[dict[str, Any]] = MANIFEST["files"]
EXPECT_KEYS = {
    "accepted",
    "new",
    "unchanged",
    "updated",
    "warnings",
    "warning_contains",
    "rejections",
    "refused",
    "never_mentions",
}
AFTER_KEYS = {"patients", "records", "resolves"}


@dataclass
class Seen:
    """What ingesting one file gave, and what the hospital held right after."""

    result: UnitResult | None = None
    crash: str = ""  # the ingestion raised instead of answering
    patients: int | str = 0
    records: dict[str, dict[str, int] | str] = field(default_factory=dict)
    resolves: list[dict[str, Any] | str] = field(default_factory=list)


@dataclass
class Played:
    """The corpus ingested: each file's `Seen`, and each manifest person's pid at this hospital."""

    seen: dict[str, Seen]
    pids: dict[str, str]


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    """Every corpus file ingested in order into one hospital."""
    homes = create_consortium(
        tmp_path_factory.mktemp("corpus") / "net",
        2,
        engine="solo",
        genesis_time_ms=int(time.time() * 1000),
    )
    with Node.open(homes[0]) as node, Vault.open(node.config.vault_config()) as vault:
        ingestor = Ingestor(node, vault)
        key = node.config.pseudonym_key()
        pids = {
            name: pseudonymise(key, person["system"], person["value"])
            for name, person in MANIFEST["patients"].items()
        }
        seen = {entry["file"]: _play(ingestor, vault, pids, entry) for entry in FILES}
        yield Played(seen, pids)


def _play(ingestor: Ingestor, vault: Vault, pids: dict[str, str], entry: dict[str, Any]) -> Seen:
    seen = Seen()
    path = CORPUS / entry["file"]
    try:
        if "sender" in entry:
            read = ingestor.read_file(path)
            assert not isinstance(read, UnitResult), read.rejections
            sender: dict[str, Any] = {"sender": entry["sender"]}
            seen.result = ingestor.ingest_bytes(*read, **sender)
        else:
            seen.result = ingestor.ingest_path(path)
    except Exception as exc:  # noqa: BLE001 - reported by this file's case; the others go on
        seen.crash = f"{type(exc).__name__}: {exc}"
    after = entry.get("after", {})
    if "patients" in after:
        seen.patients = _observe(lambda: _patient_count(vault))
    for name in after.get("records", {}):
        seen.records[name] = _observe(partial(_records, vault, pids[name]))
    for check in after.get("resolves", []):
        seen.resolves.append(_observe(partial(_resolved, ingestor, vault, check)))
    return seen


def _observe(look: Callable[[], Any]) -> Any:
    """`look()`, or the error it raised as text (the file's case then fails, showing it)."""
    try:
        return look()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def _patient_count(vault: Vault) -> int:
    """Patient records stored at the hospital (distinct rids, whatever their pid)."""
    return len(
        {
            info.rid
            for pid in vault.patients()
            for info in vault.records_of(pid, include_copies=False)
            if info.resource_type == "Patient"
        }
    )


def _records(vault: Vault, pid: str) -> dict[str, int]:
    """A patient's records by resource type (distinct rids: versions are not counted)."""
    rids = {(i.rid, i.resource_type) for i in vault.records_of(pid, include_copies=False)}
    return dict(Counter(kind for _rid, kind in rids))


def _resolved(ingestor: Ingestor, vault: Vault, check: dict[str, Any]) -> dict[str, Any]:
    found = ingestor._resolve(check["reference"])
    out: dict[str, Any] = {"found": found}
    if found is not None and {"patient", "versions", "contains"} & set(check):
        rid = found.partition("/")[2]
        out["pid"] = vault.info(rid).pid
        out["versions"] = len(vault.versions(rid))
        out["json"] = vault.get(rid).decode()  # the latest version
    return out


def _count(result: UnitResult, name: str) -> int:
    """`result.unchanged` or `result.updated`, by the manifest's key."""
    return int(getattr(result, name))


def _texts(items: list[Any]) -> list[str]:
    return [f"{item.where}: {item.reason}" for item in items]


def _case(entry: dict[str, Any]) -> Any:
    return pytest.param(entry, id=entry["file"])


@pytest.mark.parametrize("entry", [_case(e) for e in FILES])
def test_each_corpus_file_has_its_expected_outcome(played: Played, entry: dict[str, Any]) -> None:
    seen = played.seen[entry["file"]]
    assert not seen.crash, f"ingestion raised {seen.crash}"
    assert seen.result is not None
    _check_outcome(seen.result, entry["expect"])
    _check_state(seen, played.pids, entry.get("after", {}))


def _check_outcome(result: UnitResult, expect: dict[str, Any]) -> None:
    """The file's UnitResult against the manifest's `expect`."""
    rejections = _texts(result.rejections)
    if expect.get("accepted", 1) > 0:
        assert rejections == [], "refused"
    if "accepted" in expect:
        assert result.accepted == expect["accepted"], rejections
    for name in ("unchanged", "updated"):
        if name in expect:
            assert _count(result, name) == expect[name], name
    if "new" in expect:
        existing = _count(result, "unchanged") + _count(result, "updated")
        assert result.accepted - existing == expect["new"], "new"
    warns = {"warnings", "warning_contains", "never_mentions"} & set(expect)
    warnings = _texts(getattr(result, "warnings")) if warns else []  # noqa: B009 - issue 12 adds it
    if "warnings" in expect:
        wanted = expect["warnings"]
        low, high = wanted if isinstance(wanted, list) else (wanted, wanted)
        assert low <= len(warnings) <= high, warnings
    for text in expect.get("warning_contains", []):
        assert any(text.lower() in w.lower() for w in warnings), (text, warnings)
    if "rejections" in expect:
        assert len(rejections) == expect["rejections"], rejections
    for refusal in expect.get("refused", []):
        words = [w.lower() for w in refusal["contains"]]
        assert any(all(w in r.lower() for w in words) for r in rejections), (words, rejections)
    for secret in expect.get("never_mentions", []):
        assert not any(secret in text for text in rejections + warnings), "an identifier is quoted"


def _check_state(seen: Seen, pids: dict[str, str], after: dict[str, Any]) -> None:
    """What the hospital held right after the file against the manifest's `after`."""
    if "patients" in after:
        assert seen.patients == after["patients"], "Patient records at the hospital"
    for name, records in after.get("records", {}).items():
        assert seen.records[name] == records, f"records of {name}"
    for check, got in zip(after.get("resolves", []), seen.resolves, strict=True):
        reference = check["reference"]
        assert isinstance(got, dict), (reference, got)
        assert got["found"] is not None, f"{reference} resolves to nothing"
        assert got["found"].startswith(check["type"] + "/"), (reference, got["found"])
        if "patient" in check:
            assert got["pid"] == pids[check["patient"]], f"{reference}: another patient's"
        if "versions" in check:
            assert got["versions"] == check["versions"], f"{reference}: versions"
        for text in check.get("contains", []):
            assert text in got["json"], f"{reference}: its latest version lacks {text!r}"


def test_the_manifest_lists_every_corpus_file_once_and_nothing_else() -> None:
    listed = [entry["file"] for entry in FILES]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = sorted(p.name for p in CORPUS.iterdir() if p.name != "manifest.json")
    assert sorted(listed) == on_disk


def test_the_manifest_says_only_what_the_test_checks() -> None:
    """A misspelt key would be a check silently not made: every key must be one we check."""
    people = set(MANIFEST["patients"])
    for person in MANIFEST["patients"].values():
        assert set(person) == {"system", "value", "who"}, person
    for entry in FILES:
        name = entry["file"]
        assert set(entry) <= {"file", "copy_of", "shape", "rule", "sender", "expect", "after"}, name
        assert entry["shape"] and entry["rule"], name
        assert set(entry["expect"]) <= EXPECT_KEYS, name
        after = entry.get("after", {})
        assert set(after) <= AFTER_KEYS, name
        assert set(after.get("records", {})) <= people, name
        for check in after.get("resolves", []):
            assert set(check) <= {"reference", "type", "patient", "versions", "contains"}, name
            assert check.get("patient") in people | {None}, name
        for refusal in entry["expect"].get("refused", []):
            assert set(refusal) == {"contains"} and refusal["contains"], name


def test_a_resent_file_is_byte_for_byte_the_file_it_resends() -> None:
    """A re-send must be the same bytes (same MSH-10...), or it would test something else."""
    copies = [entry for entry in FILES if "copy_of" in entry]
    assert copies, "the corpus has re-sends"
    for entry in copies:
        original = (CORPUS / entry["copy_of"]).read_bytes()
        assert (CORPUS / entry["file"]).read_bytes() == original, entry["file"]
