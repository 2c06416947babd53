"""`medledger demo`: a four-hospital network plays the scenario, then keeps serving.

On CometBFT (the default) it starts every hospital's CometBFT and node processes on loopback;
with `--solo` the whole sandbox runs in this process on the solo engine. Then it loads
synthetic patients and plays the scenario of `medledger.cli._scenario`, prints each hospital's URLs
and demo tokens, and serves until Ctrl-C (`--no-serve` stops after the scenario).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from medledger.cli._common import console, user_errors


def say(text: str) -> None:
    console.print(f"[bold cyan]>[/] {text}")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        solo: Annotated[bool, typer.Option("--solo", help="The in-process solo engine.")] = False,
        no_serve: Annotated[
            bool, typer.Option("--no-serve", help="Exit after the scenario.")
        ] = False,
        directory: Annotated[
            Path, typer.Option(help="Where the demo consortium lives (made afresh).")
        ] = Path("demo-net"),
        block_time: Annotated[str, typer.Option(help="CometBFT block time.")] = "1s",
        patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 6,
    ) -> None:
        """Start a 4-hospital network, load synthetic patients and play the scenario."""
        from medledger.cli.init import parse_duration_ms

        with user_errors():
            if directory.exists():
                _stop_previous(directory)
                shutil.rmtree(directory)
            engine = "solo" if solo else "cometbft"
            say(f"Creating a consortium of 4 hospitals on the {engine} engine in {directory}/.")
            homes = demo_consortium(directory, engine, parse_duration_ms(block_time))
            if solo:
                _run_solo(homes, patients, serve=not no_serve)
            else:
                _run_cometbft(directory, homes, patients, serve=not no_serve)


def demo_consortium(directory: Path, engine: str, block_time_ms: int = 1000) -> list[Path]:
    """The demo's four hospitals (the browser tests play the story on the same)."""
    from medledger.provisioning import create_consortium

    return create_consortium(
        directory,
        4,
        engine=engine,
        chain_id=f"medledger-demo-{engine}",
        block_time_ms=block_time_ms,
        genesis_time_ms=int(time.time() * 1000),
        # The demo's records are minutes old: its consortium lets a custodian bind a patient's
        # first key at once (24 h elsewhere), so the story can show a patient signing with
        # their own key.
        params={"custody_min_age_ms": 0},
    )


def demo_token(home: Path, org: str, subject: str, scope: str, patient: str | None = None) -> str:
    """A sign-in token of the demo (12 h), minted by the hospital's own issuer."""
    from medledger.api.services import issuer_key
    from medledger.api.tokens import mint

    now = int(time.time())
    claims: dict[str, object] = {
        "iss": f"urn:medledger:{org}:issuer",
        "aud": f"urn:medledger:{org}:fhir",
        "sub": subject,
        "scope": scope,
        "iat": now,
        "exp": now + 12 * 3600,
    }
    if patient:
        claims["patient"] = patient
    return mint(issuer_key(home), claims)


#: What the demo's patient may do in the portal: read everything of theirs, grant and revoke
#: consents, ask for erasure.
PORTAL_SCOPES = "patient/*.rs patient/Consent.cu patient/Patient.d"


def _stop_previous(directory: Path) -> None:
    """A previous demo's CometBFT processes, if any are still running there."""
    if (directory / "hospitals").exists() and any(directory.glob("hospitals/*/cometbft")):
        from medledger.consensus.cometbft import processes

        processes.down(directory)


def _hospitals(nodes: list[Any]) -> list[Any]:
    from medledger.cli._scenario import Hospital
    from medledger.vault import Vault

    return [Hospital(n, Vault.open(n.config.vault_config())) for n in nodes]


def _run_solo(homes: list[Path], patients: int, serve: bool) -> None:
    from medledger.cli._runtime import Sandbox
    from medledger.cli._scenario import Hospital, play

    with Sandbox(homes) as sandbox:
        hospitals = [Hospital(r.node, r.vault) for r in sandbox.runtimes]
        story = play(hospitals, say, patients=patients)
        _summary(story, hospitals, [r.api_url for r in sandbox.runtimes], serve)
        if serve:
            _serve_until_interrupted()


def _run_cometbft(directory: Path, homes: list[Path], patients: int, serve: bool) -> None:
    from medledger.cli._scenario import eventually, play
    from medledger.consensus.cometbft import processes
    from medledger.node import Node

    say("Starting each hospital's CometBFT validator and node (ledger, gateway, sync agent, API).")
    processes.up(directory)
    hospitals = []
    try:
        nodes = [Node.open(h) for h in homes]
        if not eventually(lambda: all(n.engine.height() >= 1 for n in nodes), timeout=60):
            raise TimeoutError("the network made no block within 60 s (see demo-net/logs)")
        hospitals = _hospitals(nodes)
        story = play(hospitals, say, patients=patients)
        urls = []
        for n in nodes:
            host, port = n.config.api.address
            urls.append(f"http://{host}:{port}")
        _summary(story, hospitals, urls, serve)
        if serve:
            console.print(f"(logs in {directory}/logs; `medledger net status {directory}`)")
            _serve_until_interrupted()
    finally:
        for h in hospitals:
            h.vault.close()
        say("Stopping the network.")
        processes.down(directory)


def _summary(story: Any, hospitals: list[Any], urls: list[str], serving: bool) -> None:
    if not serving:  # the servers stop with the story: no URL to hand out
        console.rule("The story is over")
        console.print(
            "The network stopped with it (--no-serve). `make demo` (or `medledger demo`, "
            "`--solo` for one process) keeps every hospital serving, and prints their URLs and "
            "sign-in tokens."
        )
        return
    console.rule("The network is yours")
    for h, url in zip(hospitals, urls, strict=True):
        console.print(
            f"[bold]{h.name}[/] ({h.org}): {url}/  ·  FHIR {url}/fhir  ·  {url}/explorer"
            f"  ·  {url}/research"
        )
        home = h.node.config.home
        for practitioner in story.practitioners.get(h.org, []):
            if practitioner != "dpo":
                tok = demo_token(home, h.org, f"Practitioner/{practitioner}", "user/*.cruds")
                console.print(f"  clinician {practitioner}: {tok}", soft_wrap=True)
        if h is hospitals[0] and story.patient_pid:
            pid = story.patient_pid
            tok = demo_token(home, h.org, f"Patient/{pid}", PORTAL_SCOPES, pid)
            console.print(
                f"  patient (INS {story.patient_ins}) for the portal: {tok}", soft_wrap=True
            )
    console.print(
        "Paste a token into a page's sign-in form, or send it as `Authorization: Bearer`."
    )


def _serve_until_interrupted() -> None:
    console.print("[bold]Serving until Ctrl-C.[/]")
    stop = threading.Event()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        console.print("stopping…")
