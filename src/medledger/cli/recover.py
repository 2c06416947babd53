"""`medledger recover propose|run` and `medledger backup escrow`: a wiped hospital comes back.

    medledger backup escrow --home H            split H's vault KEK and backup key among its
                                                peers (also done by the running node)
    medledger recover propose --home M --org X --request join-request.json
                                                a member proposes binding X to the new keys
    medledger member vote N --home M2             the other members approve (two thirds)
    medledger recover run --home NEW --from https://member:port
                                                shares, keys, pseudonym key, vault, new escrow

See docs/recovery.md for the day of the attack, step by step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medledger.cli._common import HomeOption, console, fail, user_errors

if TYPE_CHECKING:
    from medledger.exchange.client import ExchangeClient
    from medledger.node import Node


def _backup_group(app: typer.Typer) -> typer.Typer:
    """The `backup` command group, shared with the replicas' commands (whichever module
    registers first makes it)."""
    for group in app.registered_groups:
        if group.name == "backup" and group.typer_instance is not None:
            return group.typer_instance
    backup = typer.Typer(help="Backups at peers: replicas and key escrow.", no_args_is_help=True)
    app.add_typer(backup, name="backup")
    return backup


@contextlib.contextmanager
def _client(node: Node) -> Iterator[ExchangeClient]:
    from medledger.exchange.client import ExchangeClient

    client = ExchangeClient(node)
    try:
        yield client
    finally:
        client.close()


def _keys(node: Node) -> tuple[bytes, bytes]:
    from medledger.vault import load_kek

    kek = load_kek(node.config.home / "keys" / "vault.kek")
    backup_key = load_kek(node.config.home / "keys" / "backup.key")
    return kek, backup_key


def register(app: typer.Typer) -> None:
    backup = _backup_group(app)

    @backup.command("escrow")
    def escrow_cmd(
        home: HomeOption,
        force: Annotated[bool, typer.Option(help="Deposit even if the escrow is current.")] = False,
    ) -> None:
        """Split this hospital's vault KEK and backup key k of n among its peers (sealed to
        each one's box key), and record the holders and the shares' hashes on the chain;
        say what is there when it is current."""
        from medledger.consensus.solo_shared import SoloClient
        from medledger.contracts import queries
        from medledger.exchange import escrow
        from medledger.node.reader import open_node
        from medledger.vault import Vault

        with user_errors(), open_node(home) as node:
            org = node.config.org
            status = queries.escrow_status(node.engine, org)
            record = status["record"]
            if record is None:
                console.print(f"{org}: no key escrow on the chain yet")
            else:
                state = (
                    "current" if status["current"] else "NOT current (members or params changed)"
                )
                console.print(
                    f"escrow epoch {record['epoch']} is {state}: any {record['threshold']} of "
                    + ", ".join(h["org"] for h in record["holders"])
                )
            if isinstance(node.engine, SoloClient) and not node.engine.submits:
                console.print("the solo ledger is held by a one-shot command: run this again")
                return
            if status["rebind"] is not None:
                with Vault.open(node.config.vault_config()) as vault:
                    restored = bool(vault.patients())
                if not restored:
                    fail(
                        f"{org} was rebound by proposal {status['rebind']} and its vault is "
                        "empty: `medledger recover run` first (these keys are not the "
                        "escrowed ones)"
                    )
            elif status["current"] and not force:
                return
            with _client(node) as client:
                try:
                    done = escrow.deposit(node, client, *_keys(node))
                except Exception as exc:  # noqa: BLE001 - ExchangeError, EscrowError: one line
                    fail(f"escrow not changed: {exc}")
            console.print(
                f"keys escrowed: epoch {done.epoch}, any {done.threshold} of "
                + ", ".join(done.holders)
            )

    recover = typer.Typer(
        help="Bring back a hospital wiped out: rebind by vote, keys and records from peers.",
        no_args_is_help=True,
    )
    app.add_typer(recover, name="recover")

    @recover.command("propose")
    def propose(
        home: HomeOption,
        org: Annotated[str, typer.Option(help="The member that lost its machine.")],
        request: Annotated[
            Path, typer.Option(help="The join-request.json its new machine's keygen wrote.")
        ],
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose binding ORG's identity to the new machine's keys (`rebind_member`, as
        `member propose rebind`); the other members vote it with `medledger member vote`
        (two thirds of them; ORG's lost key does not count)."""
        from medledger.cli.governance import propose_rebind

        propose_rebind(home, org, request, note)

    @recover.command("run")
    def run(
        home: HomeOption,
        from_: Annotated[
            str,
            typer.Option(
                "--from", help="A member's gateway, https://host:port, to configure a new home."
            ),
        ] = "",
        genesis_hash: Annotated[
            str, typer.Option(help="The genesis hash the consortium gave you (joining).")
        ] = "",
        sandbox: Annotated[
            Path | None,
            typer.Option(help="A solo consortium: its sandbox folder on this machine (joining)."),
        ] = None,
        timeout: Annotated[
            float, typer.Option(help="Seconds to wait for the sync and the rebinding vote.")
        ] = 600.0,
    ) -> None:
        """On the new machine: wait for the rebinding, get the key shares from their holders,
        rebuild the keys, restore the vault from the replicas, check every record against the
        chain, escrow the keys again, and print what was restored and what is missing."""
        with user_errors():
            report = _run(home, from_, genesis_hash or None, timeout, sandbox)
        for line in report.lines():
            console.print(line, highlight=False)
        if not report.complete:
            raise typer.Exit(1)


def _run(
    home: Path, from_url: str, genesis_hash: str | None, timeout: float, sandbox: Path | None
) -> Any:
    """Configure the home if it is not yet (from a member's bootstrap answer), serve its
    replica while recovering (CometBFT block-syncs it; solo: the sandbox's ledger is read
    beside its producer, which takes the txs), then `provisioning.recovery`."""
    from medledger.node import Node
    from medledger.node.config import ConfigError, load_config
    from medledger.provisioning.recovery import recover

    if not (home / "config.json").exists():
        if not from_url:
            raise ConfigError(f"{home}: not configured yet: give --from https://member:port")
        from medledger.provisioning.join import configure_from

        configure_from(home, from_url, genesis_hash=genesis_hash, sandbox=sandbox)
    config = load_config(home)
    if config.engine == "cometbft":
        from medledger.node.run_app import engine_for_home, open_application

        app = open_application(home)
        engine = engine_for_home(home, app).start()
        try:
            _wait_for_chain(engine, home, timeout)
            node = Node(config, app, engine)
            with _client(node) as client:
                return recover(node, client, timeout=timeout)
        finally:
            engine.close()
            engine.close_app()
    # solo: the process that holds the sandbox's ledger takes our txs (consensus/solo_shared);
    # beside a one-shot writer, the new escrow's tx is left to this hospital's node
    from medledger.node.reader import open_node

    with open_node(home) as node, _client(node) as client:
        return recover(node, client, timeout=timeout)


def _wait_for_chain(engine: Any, home: Path, timeout: float) -> None:
    """Until CometBFT has handed this fresh replica its first block (InitChain, then block
    sync): before that it has no state to ask who the members are."""
    import time

    from medledger.provisioning.recovery import RecoveryError

    deadline = time.monotonic() + timeout
    while engine.height() < 1:
        if time.monotonic() >= deadline:
            raise RecoveryError(
                f"after {timeout:.0f} s this home has no block yet: start its CometBFT "
                f"(cometbft start --home {home / 'cometbft'}) once `recover run` serves"
            )
        time.sleep(0.5)
