"""The ledger's hot path runs compiled after `make setup`, and never as a stale build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medledger.ledger.app  # noqa: F401  (imports every compiled module)
from medledger import _native

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import medledger.ledger.app, medledger._native as n; "
    "print(n.status(), all(n.imported_compiled().values()), "
    "not any(n.imported_compiled().values()))"
)


def _probe(src: Path, **env: str) -> list[str]:
    """`status`, all compiled, none compiled, in a fresh interpreter importing from `src`."""
    environ = {k: v for k, v in os.environ.items() if k != _native.ENV}
    environ.update(env, PYTHONPATH=str(src))
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True
    )
    return done.stdout.split() + ([done.stderr.strip()] if done.stderr.strip() else [])


@pytest.mark.skipif(
    os.environ.get(_native.ENV, "") not in ("", "0"), reason="MEDLEDGER_INTERPRETED is set"
)
def test_the_compiled_modules_are_the_ones_imported() -> None:
    assert _native.status() == "compiled", "run `make native` (or `make setup`)"
    assert _native.imported_compiled() == dict.fromkeys(_native.COMPILED, True)


def test_the_makefile_compiles_and_watches_the_same_modules() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"NATIVE_SRC := \$\(addprefix src/medledger/ledger/,(.*)\)", makefile)
    assert listed is not None
    names = [f"medledger.ledger.{n.removesuffix('.py')}" for n in listed.group(1).split()]
    assert names == list(_native.COMPILED)


def _copy_of_the_build(tmp_path: Path) -> Path:
    """The package, its compiled modules and record, copied: a tree to edit."""
    if _native.status() != "compiled":
        pytest.skip("needs the compiled modules (`make native`)")
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", str(ROOT / "src"), str(src)], check=True)
    return src


def test_an_edited_source_runs_interpreted_all_of_them_and_says_so(tmp_path: Path) -> None:
    src = _copy_of_the_build(tmp_path)
    assert _probe(src) == ["compiled", "True", "False"]
    codec = src / "medledger" / "ledger" / "codec.py"
    codec.write_text(codec.read_text() + "\n# edited after the build\n")
    status, all_compiled, none_compiled, warning = _probe(src)
    assert (status, all_compiled, none_compiled) == ("stale", "False", "True")
    assert "older than their sources" in warning


def test_a_build_without_its_record_is_never_trusted(tmp_path: Path) -> None:
    src = _copy_of_the_build(tmp_path)
    (src / "medledger" / "_native.json").unlink()
    assert _probe(src)[:3] == ["stale", "False", "True"]


def test_medledger_interpreted_runs_the_sources(tmp_path: Path) -> None:
    src = _copy_of_the_build(tmp_path)
    assert _probe(src, MEDLEDGER_INTERPRETED="1") == ["interpreted", "False", "True"]
