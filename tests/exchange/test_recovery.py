"""A hospital wiped out gets its keys and records back from its peers (issue 15), on a solo
sandbox whose hospitals run their gateways in this process: the home is deleted entirely, a
fresh one is keygen'd, two thirds of the others vote `rebind_member`, and
`provisioning.recovery.recover` rebuilds the keys from the escrow and the vault from the
replicas, each record checked against the chain."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from medledger.contracts import queries
from medledger.contracts.governance import Propose, Vote
from medledger.exchange import escrow as exchange_escrow
from medledger.exchange.client import ExchangeClient
from medledger.exchange.pki import TlsFiles, client_context
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.config import load_config, save_config
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium
from medledger.provisioning.keygen import keygen
from medledger.provisioning.recovery import RecoveryError, recover
from medledger.vault import Vault, load_kek
from tests.exchange.conftest import Hospital, Sandbox, close_sandbox, open_sandbox, wait_for


def _keys(home: Path) -> tuple[bytes, bytes]:
    return load_kek(home / "keys" / "vault.kek"), load_kek(home / "keys" / "backup.key")


def _ingest(sandbox: Sandbox, org: str, patients: int, seed: int = 5) -> list[str]:
    hosp = sandbox.h[org]
    ingestor = Ingestor(hosp.node, hosp.vault)
    rids: list[str] = []
    orgs = list(sandbox.h)
    for bundle in generate(patients, orgs, seed=seed)[org]:
        import orjson

        result = ingestor.ingest_bytes(orjson.dumps(bundle), "bundle.json")
        assert result.rejections == [], result.rejections
        rids += result.rids
    return rids


def _escrow(sandbox: Sandbox, org: str) -> dict[str, Any]:
    hosp = sandbox.h[org]
    done = exchange_escrow.deposit(hosp.node, sandbox.x(org).client, *_keys(hosp.node.config.home))
    status = queries.escrow_status(sandbox.root.engine, org)
    assert status["current"] and status["record"]["epoch"] == done.epoch
    return dict(status["record"])


def _wipe(sandbox: Sandbox, org: str) -> Any:
    """Stop the hospital, delete its home entirely; the config (not secret, what the
    consortium's layout gives back) is kept to be rewritten in the fresh home."""
    hosp = sandbox.h.pop(org)
    if hosp.exchange is not None:
        hosp.exchange.stop()
    hosp.vault.close()
    config = hosp.node.config
    shutil.rmtree(config.home)
    return config


def _fresh_home(config: Any) -> Any:
    """The new machine: new keys (keygen), the same org and addresses."""
    addresses = {"gateway": config.exchange.listen or "127.0.0.1:0"}
    request = keygen(config.home, config.org, config.name, addresses)
    save_config(config)
    return request


def _rebind(sandbox: Sandbox, org: str, request: Any, voters: list[str]) -> int:
    args = {
        "org": org,
        "key": request.key,
        "box_key": request.box_key,
        "tls_key": request.tls_key,
        "validator_key": request.validator_key,
        "addresses": dict(request.addresses),
    }
    proposer, *others = voters
    committed = sandbox.h[proposer].node.wallet.send_message(Propose("rebind_member", args))
    pid = int(next(e for e in committed.result.events if e.type == "proposal.created").get("id"))
    for voter in others:
        sandbox.h[voter].node.wallet.send_message(Vote(pid, True))
    assert queries.proposals(sandbox.root.engine, "executed")[-1]["id"] == pid
    return pid


def _recover(sandbox: Sandbox, home: Path, via: str, timeout: float = 30.0) -> Any:
    node = sandbox.root.sibling(home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        ssl_context = client_context(TlsFiles(node.config.tls_dir))
        return recover(
            node,
            client,
            pseudonym_from=sandbox.directory.url(via),
            ssl_context=ssl_context,
            timeout=timeout,
        )
    finally:
        client.close()


def _fhir_bytes(vault: Vault, rids: list[str]) -> dict[str, bytes]:
    return {rid: vault.get(rid) for rid in rids}


@pytest.fixture
def four(tmp_path: Path) -> Any:
    directory = tmp_path / "net"
    homes = create_consortium(directory, 4, genesis_time_ms=int(time.time() * 1000))
    sandbox = open_sandbox(directory, homes)
    try:
        for org in sandbox.h:
            sandbox.start(org)
        yield sandbox
    finally:
        close_sandbox(sandbox)
