"""`medledger synth`: write synthetic patients' FHIR bundles to disk, one file per patient per
hospital, for the demo, the benchmarks and anyone trying medledger without real data."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `synth` command to the `medledger` CLI."""

    @app.command("synth")
    def synth(
        patients: int = typer.Option(10, "--patients", min=0, help="Number of patients."),
        hospitals: str = typer.Option(
            "hopital-a,hopital-b,hopital-c",
            "--hospitals",
            help="Comma-separated hospital names; each patient is followed in 2 or 3 of them.",
        ),
        seed: int = typer.Option(1, "--seed", help="Same seed, same files, byte for byte."),
        out: Path = typer.Option(
            Path("synth"), "--out", help="Output folder: OUT/<hospital>/patient-NNNN.json."
        ),
    ) -> None:
        """Generate realistic synthetic chronic patients as FHIR R4 transaction bundles."""
        import orjson
        from rich.console import Console
        from rich.table import Table

        from medledger.interop.synth import bundle_label, generate, summarise

        names = [h.strip() for h in hospitals.split(",") if h.strip()]
        bad = [h for h in names if "/" in h or h in (".", "..")]
        if bad or not names:
            raise typer.BadParameter("hospital names must be non-empty and contain no '/'")
        try:
            result = generate(patients, names, seed)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        for hospital, bundles in result.items():
            folder = out / hospital
            folder.mkdir(parents=True, exist_ok=True)
            for bundle in bundles:
                data = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
                (folder / f"{bundle_label(bundle)}.json").write_bytes(data)
        summary = summarise(result)
        summary["seed"] = seed
        (out / "summary.json").write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )

        console = Console()
        table = Table(title=f"{summary['patients']} synthetic patients (seed {seed})")
        table.add_column("hospital")
        table.add_column("bundles", justify="right")
        table.add_column("resources", justify="right")
        for hospital, counts in summary["hospitals"].items():
            table.add_row(hospital, str(counts["bundles"]), str(counts["resources"]))
        console.print(table)
        by_type = ", ".join(f"{k} {v}" for k, v in summary["by_type"].items())
        console.print(f"{summary['resources']} resources: {by_type}")
        console.print(
            f"{summary['duplicated_exams']} exams repeated in another hospital within "
            "6 weeks (on purpose)."
        )
        console.print(f"Written to {out}/ (summary in {out / 'summary.json'})")
