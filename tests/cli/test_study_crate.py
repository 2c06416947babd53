"""A release packaged as an RO-Crate, and `study crate verify` checking it against the chain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medledger.contracts import queries
from medledger.contracts.records import META_CT_SIZES
from medledger.contracts.research import member_token
from medledger.ledger import merkle
from medledger.node import Node
from tests.contracts.test_cli_care import run

PIDS = [hashlib.sha256(f"crate patient {i}".encode()).hexdigest() for i in range(3)]


@pytest.fixture
def released(tmp_path: Path) -> tuple[str, Path, Path]:
    """A study at chu-lyon with three enrolled patients, released with --crate."""
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "2")
    lyon = str(net / "hospitals" / "chu-lyon")
    run("practitioner", "add", "-H", lyon, "--id", "dr-martin", "--roles", "physician")
    with Node.open(Path(lyon)) as node:  # what `ingest` would register
        entries = [
            {
                "rid": f"r-{i}",
                "pid": pid,
                "commitment": hashlib.sha256(pid.encode()).digest(),
                "meta_ct": b"c" * META_CT_SIZES[0],
            }
            for i, pid in enumerate(PIDS)
        ]
        node.wallet.send("records.register", {"entries": entries})
    protocol = tmp_path / "protocol.pdf"
    protocol.write_bytes(b"protocol v1")
    form = tmp_path / "form.pdf"
    form.write_bytes(b"signed enrolment form")
    run(
        "study", "register", "-H", lyon, "--id", "s-crate", "--protocol", str(protocol),
        "--ethics", "CPP-2026-7", "--categories", "labs", "--min-cohort", "2",
    )  # fmt: skip
    for pid in PIDS:
        run("study", "enrol", "-H", lyon, "--id", "s-crate", "--patient", pid,
            "--evidence-file", str(form), "--practitioner", "dr-martin")  # fmt: skip
    pids = tmp_path / "pids.txt"
    pids.write_text("\n".join(PIDS) + "\n")
    dataset = tmp_path / "cohort.csv"
    dataset.write_bytes(b"token,hba1c\na,7.1\nb,6.4\nc,8.0\n")
    crate = tmp_path / "crate"
    out = run(
        "study", "release", "-H", lyon, "--id", "s-crate", "--dataset", str(dataset),
        "--patients", str(pids), "--records", "3", "--crate", str(crate),
    ).output  # fmt: skip
    assert "release 1 of s-crate: 3 patients" in out and "crate written" in out
    return lyon, crate, dataset


def _metadata(crate: Path) -> dict:  # type: ignore[type-arg]
    found: dict = json.loads((crate / "ro-crate-metadata.json").read_text())  # type: ignore[type-arg]
    return found


def test_a_release_crate_carries_its_chain_references_and_verifies(
    released: tuple[str, Path, Path],
) -> None:
    lyon, crate, dataset = released
    assert (crate / "cohort.csv").read_bytes() == dataset.read_bytes()
    graph = {e["@id"]: e for e in _metadata(crate)["@graph"]}
    root = graph["./"]
    with Node.open(Path(lyon)) as node:
        (release,) = queries.study_releases(node.engine, "s-crate")
        location = queries.tx_location(node.engine, release["tx"])
        chain_id = node.config.chain_id
    assert root["medledgerKind"] == "study-release" and root["chainId"] == chain_id
    assert root["releaseSeq"] == 1 and root["membersRoot"] == release["members_root"].hex()
    assert graph[root["about"]["@id"]]["identifier"] == "s-crate"
    (act,) = [graph[m["@id"]] for m in root["mentions"]]
    assert act["name"] == "research.release" and act["txId"] == release["tx"].hex()
    assert location is not None and act["blockHeight"] == location["height"]
    assert graph[act["agent"]["@id"]]["identifier"] == "chu-lyon"
    assert graph["cohort.csv"]["sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    tokens = (crate / "members.txt").read_text().split()
    assert sorted(tokens) == sorted(member_token("s-crate", p).hex() for p in PIDS)
    out = run("study", "crate", "verify", "-H", lyon, str(crate)).output
    assert "agrees with the chain" in out and "1 txs, 2 files" in out


def test_verify_names_each_difference_with_the_chain(released: tuple[str, Path, Path]) -> None:
    lyon, crate, _ = released
    # A dataset swapped, its hash in the metadata updated to match: only the chain tells.
    metadata = _metadata(crate)
    (crate / "cohort.csv").write_bytes(b"token,hba1c\na,5.0\n")
    for entity in metadata["@graph"]:
        if entity["@id"] == "cohort.csv":
            entity["sha256"] = hashlib.sha256(b"token,hba1c\na,5.0\n").hexdigest()
    # A member dropped from the list, the same way.
    tokens = (crate / "members.txt").read_text().split()[:2]
    (crate / "members.txt").write_text("".join(f"{t}\n" for t in tokens))
    for entity in metadata["@graph"]:
        if entity["@id"] == "members.txt":
            entity["sha256"] = hashlib.sha256((crate / "members.txt").read_bytes()).hexdigest()
        if entity.get("name") == "research.release":
            entity["blockHeight"] += 100
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "cohort.csv: not the dataset the chain's release 1 names" in out
    assert "members.txt: 2 members, the chain's release has 3" in out
    assert "members.txt: its Merkle root is not the chain's members root" in out
    assert "research.release tx" in out and "the crate says" in out
    assert merkle.root(sorted(bytes.fromhex(t) for t in tokens))  # what was checked


def test_verify_catches_a_file_changed_behind_the_metadata(
    released: tuple[str, Path, Path],
) -> None:
    lyon, crate, _ = released
    edited = (crate / "cohort.csv").read_bytes().replace(b"7.1", b"9.9")  # the same size
    (crate / "cohort.csv").write_bytes(edited)
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "cohort.csv: its SHA-256 is not the one the metadata gives" in out


def test_a_crate_of_another_chain_or_no_crate_at_all_is_refused(
    released: tuple[str, Path, Path], tmp_path: Path
) -> None:
    lyon, crate, dataset = released
    metadata = _metadata(crate)
    for entity in metadata["@graph"]:
        if entity["@id"] == "./":
            entity["chainId"] = "another-chain"
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "chainId" in out and "another-chain" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run("study", "crate", "verify", "-H", lyon, str(empty), code=1).output
    assert "no ro-crate-metadata.json" in out
    # A crate is written into a new directory only, and refused before anything is signed.
    pids = tmp_path / "pids.txt"
    out = run(
        "study", "release", "-H", lyon, "--id", "s-crate", "--dataset", str(dataset),
        "--patients", str(pids), "--crate", str(crate), code=1,
    ).output  # fmt: skip
    assert "not empty" in out
    with Node.open(Path(lyon)) as node:
        assert len(queries.study_releases(node.engine, "s-crate")) == 1


def test_an_existing_release_is_packaged_afterwards(
    released: tuple[str, Path, Path], tmp_path: Path
) -> None:
    lyon, _, dataset = released
    later = tmp_path / "later"
    run(
        "study", "crate", "release", "-H", lyon, "--id", "s-crate", "--release", "1",
        "--dataset", str(dataset), "--patients", str(tmp_path / "pids.txt"),
        "--crate", str(later),
    )  # fmt: skip
    assert "agrees with the chain" in run("study", "crate", "verify", "-H", lyon, str(later)).output
    out = run(
        "study", "crate", "release", "-H", lyon, "--id", "s-crate", "--release", "2",
        "--dataset", str(dataset), "--patients", str(tmp_path / "pids.txt"),
        "--crate", str(tmp_path / "nope"), code=1,
    ).output  # fmt: skip
    assert "has no release 2" in out


def test_a_crate_naming_a_file_outside_itself_or_missing_one_is_refused_or_reported(
    released: tuple[str, Path, Path],
) -> None:
    lyon, crate, _ = released
    (crate / "members.txt").unlink()
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "members.txt: cannot be read" in out
    metadata = _metadata(crate)
    for entity in metadata["@graph"]:
        if entity["@id"] == "./":
            entity["hasPart"].append({"@id": "../../etc/hostname"})
    metadata["@graph"].append({"@id": "../../etc/hostname", "@type": "File", "sha256": "00"})
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "'../../etc/hostname' is outside the crate" in out


def test_a_crate_whose_file_is_a_link_out_of_it_or_a_fifo_is_not_read(
    released: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """A crate is someone else's folder (unpacked from an archive, links kept): a file of
    it that links to this machine's files is never read, nor a FIFO (it would hang)."""
    import os

    lyon, crate, _ = released
    secret = tmp_path / "org.key"
    secret.write_bytes(b"the verifier's own secret")
    (crate / "cohort.csv").unlink()
    (crate / "cohort.csv").symlink_to(secret)
    (crate / "members.txt").unlink()
    os.mkfifo(crate / "members.txt")
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    assert "cohort.csv: a link to outside the crate" in out
    assert "members.txt: not a regular file" in out
    assert "its SHA-256 is not the one" not in out  # nothing was hashed
