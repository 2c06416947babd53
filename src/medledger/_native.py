"""The ledger's hot path compiled with mypyc, and the guard that never runs a stale build.

`make setup` (`scripts/build_native.py`) compiles the modules of `COMPILED` into extension
modules beside their sources (`src/medledger/ledger/*.cpython-311-*.so`, and the shared
`src/medledger_native__mypyc.*.so`), and writes `_native.json` with a digest of the sources it
compiled. Python imports an extension module before the `.py` beside it, so a source edited
since the build would silently run the old code. Before any of them is imported
(`medledger/__init__.py` calls `guard()`), the digest of the sources on disk is compared with
the build's: if they differ, or `MEDLEDGER_INTERPRETED=1` is set, **all** of them are imported
from their `.py` instead, with one line on stderr when it is staleness. All, not just the
edited one: compiled modules call each other's compiled code directly, so a fresh `.py`
beside a stale sibling would not be what runs. The sources are the truth; the build is only
a faster copy of them (docs/architecture.md, "Compiled modules").
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The modules compiled, in the order the build hashes them. They are the ledger's own work
# on every tx (decode, the app's CheckTx/ProcessProposal/FinalizeBlock/Commit, the state
# views, the message parser, the app hash); docs/benchmarks.md, "Session 13 (mypyc13)".
COMPILED = (
    "medledger.ledger.codec",
    "medledger.ledger.tx",
    "medledger.ledger.merkle",
    "medledger.ledger.contract",
    "medledger.ledger.app",
    "medledger.ledger.store",
)
ENV = "MEDLEDGER_INTERPRETED"  # set to 1: import the sources, never the compiled modules
PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE / "_native.json"


def source_path(module: str) -> Path:
    return PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_paths(module: str) -> list[Path]:
    """The compiled module's files that exist beside its source (any ABI suffix)."""
    py = source_path(module)
    return [
        py.with_name(py.stem + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if py.with_name(py.stem + suffix).exists()
    ]


def source_digest() -> str:
    """SHA-256 over every compiled module's name and source bytes, in `COMPILED`'s order."""
    digest = hashlib.sha256()
    for module in COMPILED:
        data = source_path(module).read_bytes()
        digest.update(f"{module}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def built_digest() -> str | None:
    """The digest `scripts/build_native.py` recorded, or None if there is no (readable) build."""
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("modules") != list(COMPILED):
        return None
    digest = recorded.get("sources_sha256")
    return digest if isinstance(digest, str) else None


def status() -> str:
    """`compiled`; `absent` (nothing built); `interpreted` (asked for by `MEDLEDGER_INTERPRETED`);
    `stale` (the sources changed since the build)."""
    if not any(extension_paths(m) for m in COMPILED):
        return "absent"
    if os.environ.get(ENV, "") not in ("", "0"):
        return "interpreted"
    return "compiled" if built_digest() == source_digest() else "stale"


class _SourceFinder:
    """A meta-path finder that imports the compiled modules from their `.py` files."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(name, source_path(name))


_FINDER = _SourceFinder()


def guard() -> str:
    """Called by `medledger/__init__.py` before any compiled module can be imported."""
    state = status()
    if state in ("interpreted", "stale") and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
        if state == "stale":
            print(
                "medledger: the compiled ledger modules are older than their sources; running "
                "the sources (slower). `make native` rebuilds them.",
                file=sys.stderr,
            )
    return state


def imported_compiled() -> dict[str, bool]:
    """Whether each compiled module, as imported now, is its extension module."""
    out = {}
    for module in COMPILED:
        loaded = sys.modules.get(module)
        origin = getattr(getattr(loaded, "__spec__", None), "origin", None) or ""
        out[module] = origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return out
