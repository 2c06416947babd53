"""The package layers of pyproject's [tool.importlinter], and that `make lint` enforces them.

`lint-imports` (run by `make lint`) checks the contracts; these tests check the contracts
themselves: every package sits on a layer, and a wrong-way import does break the build.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "medledger"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]  # type: ignore[no-any-return]


def _layers() -> list[set[str]]:
    (layers,) = [c["layers"] for c in _config()["contracts"] if c["type"] == "layers"]
    return [{name.strip() for name in layer.split("|")} for layer in layers]


def _packages() -> set[str]:
    return {f"medledger.{p.name}" for p in SRC.iterdir() if (p / "__init__.py").exists()}


def test_every_package_sits_on_exactly_one_layer() -> None:
    placed = [name for layer in _layers() for name in layer]
    assert sorted(placed) == sorted(_packages())


def test_no_package_outside_contracts_imports_their_private_helpers() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "contracts"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "medledger.contracts"
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {private}")
    assert offenders == []


def _lint_copy(tmp_path: Path, wrong_way: str | None) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over a copy of the package, with `wrong_way` added to ledger/store.py."""
    copy = tmp_path / "src" / "medledger"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "proto"))
    if wrong_way is not None:
        store = copy / "ledger" / "store.py"
        store.write_text(store.read_text() + f"\n{wrong_way}\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_lint_imports_keeps_the_layers_of_the_code_as_it_is(tmp_path: Path) -> None:
    result = _lint_copy(tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_way_import_fails_lint(tmp_path: Path) -> None:
    result = _lint_copy(tmp_path, "from medledger.node import config as _wrong_way  # noqa")
    assert result.returncode != 0
    assert "medledger.ledger.store -> medledger.node.config" in result.stdout
