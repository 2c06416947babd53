"""`medledger bench`: run the benchmarks in the source checkout's bench/ folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, fail


def _bench_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "bench").is_dir() and (parent / "pyproject.toml").exists():
            return parent / "bench"
    fail("benchmarks run from a source checkout (bench/ was not found)")


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        name: Annotated[
            str, typer.Argument(help="Which benchmark: a file bench/bench_NAME.py, or 'list'.")
        ] = "ledger",
        options: Annotated[
            list[str] | None, typer.Option("--set", help="Arguments for run(), KEY=INT.")
        ] = None,
    ) -> None:
        """Run a benchmark and print its figures as JSON (see docs/benchmarks.md)."""
        folder = _bench_dir()
        if name == "list":
            for path in sorted(folder.glob("bench_*.py")):
                console.print(path.stem.removeprefix("bench_"))
            return
        path = folder / f"bench_{name}.py"
        if not path.exists():
            fail(f"{path}: no such benchmark (try `medledger bench list`)")
        kwargs: dict[str, int] = {}
        for item in options or []:
            key, _, value = item.partition("=")
            if not value.lstrip("-").isdigit():
                fail(f"--set {item}: expected KEY=INTEGER")
            kwargs[key] = int(value)
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses in the module look themselves up there
        spec.loader.exec_module(module)
        console.print(f"running {path.name} ...")
        result = module.run(**kwargs)
        console.print_json(json.dumps(result))
