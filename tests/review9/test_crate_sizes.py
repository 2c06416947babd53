"""Review 9: `study crate verify` on a crate whose files are not the size they claim.

A crate is someone else's folder: its dataset may be a sparse file of gigabytes. Verify
compared hashes of whole files read into memory (twice for a release's dataset); it now
reports a size the metadata does not give without reading the file, hashes a chunk at a
time, and loads at most `crate.MAX_READ` bytes of a file it parses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import medledger.interop.crate as crate_module
from tests.cli.test_study_crate import released  # noqa: F401 (the fixture)
from tests.contracts.test_cli_care import run


def test_a_dataset_larger_than_its_metadata_says_is_reported_not_read(
    released: tuple[str, Path, Path],  # noqa: F811
) -> None:
    lyon, crate, dataset = released
    with open(crate / "cohort.csv", "r+b") as f:  # sparse: no disk, 256 MiB to a reader
        f.truncate(256 * 1024 * 1024)
    out = run("study", "crate", "verify", "-H", lyon, str(crate), code=1).output
    declared = len(dataset.read_bytes())
    assert f"cohort.csv: 268435456 bytes, the metadata gives {declared}" in out


def test_a_file_verify_parses_is_loaded_only_up_to_a_bound(
    released: tuple[str, Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, crate, _ = released
    monkeypatch.setattr(crate_module, "MAX_READ", 64)
    loaded = crate_module.load(crate)
    assert loaded.read("cohort.csv").startswith(b"token,hba1c")  # 31 bytes: read
    assert os.path.getsize(crate / "members.txt") > 64  # three tokens of 65 bytes
    with pytest.raises(crate_module.CrateError, match="members.txt: more than the 64 bytes"):
        loaded.read("members.txt")
