"""Compile the ledger's hot path with mypyc, in place, and record what was compiled.

    .venv/bin/python scripts/build_native.py          # `make native` (and `make setup`) run it
    .venv/bin/python scripts/build_native.py --clean  # remove the compiled modules

The modules are `medledger._native.COMPILED`. The extension modules land beside their sources
(`src/medledger/ledger/*.so`, plus the shared `src/medledger_native__mypyc.*.so`); the C and
object files under `build/native`. Last, `src/medledger/_native.json` records a digest of the
sources compiled: `medledger._native.guard()` imports the sources instead whenever they no
longer match it. The digest is taken before compiling and checked again after, so an edit
made during the build leaves a build the guard refuses, never a wrong record.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from medledger import _native  # noqa: E402


def clean() -> None:
    _native.MANIFEST.unlink(missing_ok=True)
    for module in _native.COMPILED:
        for path in _native.extension_paths(module):
            path.unlink()
    for path in SRC.glob("medledger_native__mypyc*"):
        path.unlink()
    shutil.rmtree(ROOT / "build" / "native", ignore_errors=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    clean()
    before = _native.source_digest()
    paths = [str(_native.source_path(m).relative_to(ROOT)) for m in _native.COMPILED]
    os.chdir(ROOT)
    extensions = mypycify(
        paths, opt_level="3", group_name="medledger_native", target_dir="build/native"
    )
    dist = Distribution({"ext_modules": extensions, "package_dir": {"": "src"}})
    command = dist.get_command_obj("build_ext")
    command.inplace = True  # type: ignore[attr-defined]
    command.build_temp = "build/native/temp"  # type: ignore[attr-defined]
    dist.run_command("build_ext")
    if _native.source_digest() != before:
        raise SystemExit("build_native: a source changed while compiling; run it again")
    record = {"modules": list(_native.COMPILED), "sources_sha256": before}
    _native.MANIFEST.write_text(json.dumps(record, indent=2) + "\n")
    print(f"build_native: compiled {len(_native.COMPILED)} modules ({before[:12]})")


if __name__ == "__main__":
    clean() if "--clean" in sys.argv[1:] else build()
