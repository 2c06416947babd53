"""Composition root: wires one hospital's node (ledger app, engine, keys) from its home.

On the solo engine the hospitals of a sandbox share one ledger file; a file lock makes sure
only one process writes it, so a one-shot CLI command and a running node never both produce
blocks. A running node (`serve=True`) serves the ledger to the sandbox's other processes,
which open a `SoloClient` beside it (consensus/solo_shared.py).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medledger.consensus.engine import Engine
from medledger.contracts import default_registry
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis
from medledger.ledger.keys import SigningKey
from medledger.node.config import ConfigError, HospitalConfig, load_config
from medledger.node.health import HealthProbe
from medledger.node.wallet import Wallet

if TYPE_CHECKING:
    from medledger.consensus.solo_shared import LedgerServer
    from medledger.node.audit import AuditJournal


class LedgerBusy(ConfigError):
    pass


def ledger_genesis(config: HospitalConfig) -> Genesis:
    """The genesis this hospital's replica opens its ledger with. While that ledger has not
    started (no ledger file yet), checked first as its InitChain will check it
    (`contracts.replayed_genesis_params`: from governance v5 a parameter a vote could not
    set, from v6 a name no contract knows, a misspelt setting that would look applied): a
    ConfigError naming the file and the parameter, before anything is written. A ledger that
    started applied its genesis once for all: not asked again."""
    from medledger.contracts import replayed_genesis_params
    from medledger.ledger.errors import TxError

    genesis = config.genesis()
    if not config.ledger_db.exists():
        try:
            replayed_genesis_params(genesis.params, genesis.contracts)
        except TxError as exc:
            raise ConfigError(
                f"{config.genesis_path}: {exc}; the ledger does not start from it (nothing written)"
            ) from None
    return genesis


class Node:
    """One hospital's view of the network: its config, keys, and an engine to talk through."""

    def __init__(self, config: HospitalConfig, app: Application | None, engine: Engine) -> None:
        self.config = config
        self.app = app
        self.engine = engine
        self.org_key = config.org_key()
        # Set by the running exchange (exchange/replicator.py): drop items at the replica
        # peers now, -> (peers that signed a receipt, peers still pending). None: offline.
        self.replica_drop: Callable[[list[str]], tuple[list[str], list[str]]] | None = None
        # ... and purge a shredded patient's wrapped key there, trash included (pid ->
        # (peers that purged, peers pending: retried by the replicator)). None: offline.
        self.replica_purge: Callable[[str], tuple[list[str], list[str]]] | None = None
        # Set by the running study agent (research/agent.py): what it did, one line per query.
        self.study_status: Callable[[], list[str]] | None = None
        self.wallet = Wallet(self.org_key, config.chain_id, engine)
        self._lock_fd: int | None = None
        self._ledger_server: LedgerServer | None = None  # a solo producer's, see _open_solo
        self._owner = True  # siblings share the engine and leave closing it to the owner
        self._audit: AuditJournal | None = None
        self._audit_lock = threading.Lock()
        self.health = HealthProbe(self)  # can it serve: asked by the API, pages, gateway

    @classmethod
    def open(cls, home: Path, *, serve: bool = False, **engine_options: Any) -> Node:
        config = load_config(home)
        if config.engine == "solo":
            return cls._open_solo(config, serve=serve, **engine_options)
        if config.engine == "cometbft":
            from medledger.consensus.cometbft.client import RpcEngine

            return cls(config, None, RpcEngine.for_home(config))
        raise ConfigError(f"{home / 'config.json'}: unknown engine {config.engine!r}")

    @classmethod
    def _open_solo(cls, config: HospitalConfig, *, serve: bool, **options: Any) -> Node:
        from medledger.consensus.solo import SoloEngine

        genesis = ledger_genesis(config)
        lock_path = config.ledger_db.with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            from medledger.consensus.solo_shared import SoloClient, serving, socket_path

            served = socket_path(config.ledger_db)
            if serving(served):  # a running producer: submit through it, read beside it
                return cls(config, None, SoloClient(config.ledger_db, default_registry(), served))
            raise LedgerBusy(
                f"{config.ledger_db}: the ledger is in use by another medledger process that "
                "does not serve it to others (a one-shot command); wait until it ends"
            ) from None
        try:
            app = Application.open(config.ledger_db, genesis, default_registry())
            producer = SigningKey.from_file(config.consortium_dir / "solo.key")
            engine = SoloEngine(app, producer, auto=serve, **options)
        except BaseException:
            os.close(fd)
            raise
        node = cls(config, app, engine)
        node._lock_fd = fd
        if serve:  # the other processes of the sandbox submit through this one
            from medledger.consensus.solo_shared import LedgerServer, socket_path

            try:
                node._ledger_server = LedgerServer(engine, socket_path(config.ledger_db)).start()
            except BaseException:
                node.close()
                raise
        return node

    def sibling(self, home: Path) -> Node:
        """Another hospital of the same sandbox, sharing this process's ledger and engine."""
        config = load_config(home)
        if config.consortium_dir != self.config.consortium_dir:
            raise ConfigError(f"{home}: not a hospital of the same consortium")
        node = Node(config, self.app, self.engine)
        node._owner = False
        return node

    def practitioner_wallet(self, practitioner: str) -> Wallet:
        path = self.config.practitioner_key_path(practitioner)
        if not path.exists():
            raise ConfigError(f"{path}: no key for practitioner {practitioner!r} at this hospital")
        return Wallet(SigningKey.from_file(path), self.config.chain_id, self.engine)

    @property
    def audit(self) -> AuditJournal:
        """This hospital's audit journal (node/audit.py), started on first use (which re-sends
        what it holds not yet on the chain); stopped by `close`."""
        with self._audit_lock:
            if self._audit is None or self._audit.stopped:
                from medledger.node.audit import AuditJournal, window_for

                window = window_for(self.config.engine, self.config.block_time_ms)
                self._audit = AuditJournal(
                    self.config.home / "audit", self.wallet, window_s=window
                ).start()
            return self._audit

    @property
    def audit_started(self) -> AuditJournal | None:
        """The audit journal if a first use started it (and it runs), else None: for callers
        that only tell it something (the API's `expecting`) and must not start it."""
        journal = self._audit
        return None if journal is None or journal.stopped else journal

    def close(self) -> None:
        self.health.close()
        if self._audit is not None:
            self._audit.stop()
        if not self._owner:
            return
        if self._ledger_server is not None:
            self._ledger_server.stop()
            self._ledger_server = None
        self.engine.close()
        if self.app is not None:
            self.app.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
