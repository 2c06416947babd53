"""The replicator's hold on a rebound home with an empty vault (`Replicator.awaiting_recovery`),
asked every round: a rebind the chain announces is still found at the next committed height,
without listing the vault's patients or querying the chain at every round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from medledger.exchange.client import ExchangeClient
from medledger.exchange.replicator import Replicator
from medledger.ledger.results import BlockRecord, Event, TxResult
from medledger.node import Node
from medledger.vault import Vault, VaultConfig
from tests.vault.conftest import HOSPITAL, make_pid, obs


class Chain:
    """The two things the hold reads from an engine: the committed height and the escrow."""

    def __init__(self) -> None:
        self.committed = 5
        self.rebind: int | None = None
        self.queries = 0

    def height(self) -> int:
        return self.committed

    def query(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        assert (path, params) == ("escrow/status", {"org": HOSPITAL})
        self.queries += 1
        return {"rebind": self.rebind}


class App:
    """An in-process app: it tells its listeners of each committed block."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.listeners: list[Callable[[BlockRecord], None]] = []

    def add_commit_listener(self, fn: Callable[[BlockRecord], None]) -> None:
        self.listeners.append(fn)

    def commit(self, *event_types: str) -> None:
        self.chain.committed += 1
        header = SimpleNamespace(height=self.chain.committed, time_ms=0)
        result = TxResult(0, "", tuple(Event(t) for t in event_types))
        record = SimpleNamespace(
            header=header, height=header.height, txs=[b"tx"], results=[result], events=()
        )
        for fn in self.listeners:
            fn(cast(BlockRecord, record))


def _replicator(home: Path, chain: Chain, vault: Vault, app: App | None = None) -> Replicator:
    node = SimpleNamespace(config=SimpleNamespace(org=HOSPITAL, home=home), engine=chain, app=app)
    return Replicator(cast(Node, node), vault, cast(ExchangeClient, None))


def test_with_an_in_process_app_the_chain_is_asked_only_after_a_block_that_matters(
    tmp_path: Path,
) -> None:
    chain = Chain()
    app = App(chain)
    config = VaultConfig(HOSPITAL, backend="sqlite", path=tmp_path / "vault.db", kek=b"k" * 32)
    with Vault.open(config) as vault:
        replicator = _replicator(tmp_path, chain, vault, app)
        assert not replicator.awaiting_recovery() and chain.queries == 1
        app.commit("practitioner.registered")
        app.commit()
        assert not replicator.awaiting_recovery()
        assert chain.queries == 1  # two heights later, nothing that changes a rebind
        chain.rebind = 7
        app.commit("proposal.created", "proposal.executed")  # the rebinding vote commits
        assert replicator.awaiting_recovery() and chain.queries == 2
        assert replicator.awaiting_recovery() and chain.queries == 2
        chain.rebind = None
        app.commit("escrow.deposited")  # the recovery escrowed again
        assert not replicator.awaiting_recovery() and chain.queries == 3


def test_a_rebind_is_found_at_the_next_height_and_a_restored_vault_ends_the_hold(
    tmp_path: Path,
) -> None:
    chain = Chain()
    config = VaultConfig(HOSPITAL, backend="sqlite", path=tmp_path / "vault.db", kek=b"k" * 32)
    with Vault.open(config) as vault:
        replicator = _replicator(tmp_path, chain, vault)
        assert not replicator.awaiting_recovery()  # no rebind: an empty vault replicates
        assert not replicator.awaiting_recovery()
        assert chain.queries == 1  # the chain is asked once per committed height

        chain.rebind, chain.committed = 7, 6  # the rebinding vote commits
        assert replicator.awaiting_recovery()  # held back from that height on
        assert replicator.awaiting_recovery() and chain.queries == 2

        vault.put(
            make_pid("p1"), "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL
        )
        assert not replicator.awaiting_recovery()  # the restored vault replicates again
        assert chain.queries == 2  # a vault with patients does not ask the chain


def test_the_hospitals_own_records_do_not_count_as_patients(tmp_path: Path) -> None:
    config = VaultConfig(HOSPITAL, backend="sqlite", path=tmp_path / "vault.db", kek=b"k" * 32)
    with Vault.open(config) as vault:
        assert not vault.has_patients()
        vault.put(
            vault.hospital_pid,
            "Practitioner-1",
            1,
            b"{}",
            resource_type="Practitioner",
            custodian=HOSPITAL,
        )
        assert not vault.has_patients() and vault.patients() == []
        pid = make_pid("p1")
        vault.put(pid, "Obs-1", 1, obs(1), resource_type="Observation", custodian=HOSPITAL)
        assert vault.has_patients() and vault.patients() == [pid]
        vault.erase(pid)
        assert not vault.has_patients() and vault.patients() == []
