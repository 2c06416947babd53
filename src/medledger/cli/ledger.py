"""Ledger commands: `verify`, `ledger show`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from medledger.cli._common import HomeOption, console, fail, short, user_errors

if TYPE_CHECKING:
    from medledger.ledger.store import Store
    from medledger.node.config import HospitalConfig


def _open_store(home: Path) -> tuple[HospitalConfig, Store]:
    from medledger.ledger.store import Store
    from medledger.node.config import load_config

    config = load_config(home)
    if not config.ledger_db.exists():
        fail(f"{config.ledger_db}: no ledger yet (nothing was committed)")
    return config, Store(config.ledger_db)


def register(app: typer.Typer) -> None:
    ledger_app = typer.Typer(help="Read the ledger's blocks and txs.", no_args_is_help=True)
    app.add_typer(ledger_app, name="ledger")

    @app.command("verify")
    def verify(home: HomeOption) -> None:
        """Replay the chain from genesis and check every signature, nonce, link and app hash."""
        from medledger.contracts import default_registry
        from medledger.ledger.replay import VerifyError, verify_history

        with user_errors():
            config, store = _open_store(home)
            genesis = config.genesis()
            try:
                # A snapshot: a running node may keep committing while we replay.
                with store.snapshot(), Progress(console=console, transient=True) as progress:
                    task = progress.add_task("replaying", total=store.height or 1)
                    report = verify_history(
                        store,
                        genesis,
                        default_registry(),
                        progress=lambda h, top: progress.update(task, completed=h, total=top),
                    )
            except VerifyError as exc:
                fail(f"verify failed at {exc}", code=2)
            extra = ""
            if config.engine == "cometbft":
                from medledger.consensus.cometbft.verify import check_home

                mismatches = check_home(config, store)
                if mismatches:
                    fail("; ".join(mismatches), code=2)
                extra = ", app hashes match CometBFT's headers"
        console.print(
            f"ok: height {report.height}, {report.txs} txs, app hash {report.app_hash.hex()}"
            + extra
        )

    @ledger_app.command("show")
    def show(
        home: HomeOption,
        height: Annotated[int | None, typer.Option(help="One block; default the last 20.")] = None,
    ) -> None:
        """Blocks and their txs, readable (no personal data is on the chain to show)."""
        from medledger.ledger.tx import decode_tx

        with user_errors():
            _, store = _open_store(home)
            top = store.height
            heights = [height] if height is not None else list(range(max(1, top - 19), top + 1))
            for h in heights:
                record = store.block(h)
                if record is None:
                    fail(f"no block at height {h} (last is {top})")
                hd = record.header
                when = datetime.fromtimestamp(hd.time_ms / 1000, UTC).isoformat(
                    timespec="milliseconds"
                )
                console.print(
                    f"[bold]block {h}[/] {when} hash {short(record.hash)} "
                    f"prev {short(hd.prev_hash)} app {short(hd.app_hash)} txs {len(record.txs)}"
                )
                table = Table(show_edge=False, box=None, padding=(0, 1))
                for col in ("#", "tx id", "kind", "signer", "nonce", "result"):
                    table.add_column(col)
                for i, (raw, result) in enumerate(zip(record.txs, record.results, strict=True)):
                    tx = decode_tx(raw)
                    verdict = "ok" if result.ok else f"[red]{result.code}[/] {result.log}"
                    table.add_row(
                        str(i), short(tx.id), tx.kind, short(tx.signer), str(tx.nonce), verdict
                    )
                if record.txs:
                    console.print(table)

    @ledger_app.command("proof")
    def proof(
        home: HomeOption,
        tx: Annotated[str, typer.Option(help="The tx id (hex), e.g. of an access entry.")],
    ) -> None:
        """Print an inclusion proof of a committed tx, as JSON, checkable offline."""
        import json

        from medledger.ledger.proofs import prove_tx

        with user_errors():
            _, store = _open_store(home)
            try:
                prefix = bytes.fromhex(tx)
            except ValueError:
                fail("--tx: not hex (an even number of hex digits)")
            matches = store.tx_ids_with_prefix(prefix)
            if len(matches) > 1:
                fail(f"--tx: {tx} is ambiguous, give more digits")
            found = prove_tx(store, matches[0]) if matches else None
            if found is None:
                fail(f"tx {tx} is not in a committed block")
        console.print_json(json.dumps(found.to_json()))

    @ledger_app.command("check-proof")
    def check_proof(
        proof_file: Annotated[
            Path, typer.Argument(help="A proof from `ledger proof` or the portal.")
        ],
        genesis: Annotated[Path, typer.Option(help="The consortium's genesis.json.")],
    ) -> None:
        """Check a tx inclusion proof offline against the consortium's genesis."""
        import json

        from medledger.ledger.genesis import Genesis
        from medledger.ledger.proofs import TxProof, check_tx_proof

        with user_errors():
            g = Genesis.load(genesis)
            try:
                data = json.loads(proof_file.read_text())
                found = TxProof.from_json(data)
            except (OSError, ValueError, KeyError) as exc:
                fail(f"{proof_file}: not a proof: {exc}")
            problem = check_tx_proof(found, g.chain_id, g.solo_key)
        if problem:
            fail(f"proof does not hold: {problem}", code=2)
        console.print(
            f"ok: tx {data.get('tx_id', '')[:16]} is in block {found.height} of {g.chain_id}"
        )
