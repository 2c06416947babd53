"""What a running hospital node serves besides its ledger: the exchange and the API.

`HospitalRuntime` starts, for one hospital's node and vault, its audit journal (`node.audit`,
first: it re-sends what a crash left off the chain, and is stopped last), its mTLS gateway,
sync agent and event stream (`exchange.service.HospitalExchange`), the reconciler of
provisional records (`registrations.Reconciler`) and its API and pages (`api.app`, plain HTTP
on loopback by default), and stops them in order. `medledger node run`, `medledger
sandbox run` and the demo all use it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medledger.node import Node
from medledger.vault import Vault

log = logging.getLogger(__name__)


class HospitalRuntime:
    def __init__(self, node: Node, vault: Vault, **exchange_options: Any) -> None:
        from medledger.api.services import HospitalServices
        from medledger.exchange.server import ServerThread
        from medledger.exchange.service import HospitalExchange
        from medledger.web.site import create_app

        self.node = node
        self.vault = vault
        self.exchange = HospitalExchange(node, vault, **exchange_options)
        self.services = HospitalServices(node, vault)
        host, port = node.config.api.address
        self.api = ServerThread(create_app(self.services), host, port, None, name="api")
        self.study_agent: Any = None
        self._started: list[Any] = []

    @property
    def org(self) -> str:
        return self.node.config.org

    @property
    def api_url(self) -> str:
        return f"http://{self.api.host}:{self.api.port}"

    def start(self, sync: bool = True) -> HospitalRuntime:
        from medledger.node.registrations import Reconciler

        self._started.append(self.node.audit)
        self.exchange.start(sync=sync)
        self._started.append(self.exchange)
        if sync:  # answers running study queries by itself (research/agent.py)
            from medledger.research.agent import attach

            self.study_agent = attach(self.exchange, self.vault).start()
            self._started.append(self.study_agent)
        keeper = _escrow_keeper(self.node, self.exchange.client, self.vault)
        if keeper is not None:
            self._started.append(keeper.start())
        self._started.append(Reconciler(self.node.engine, self.vault).start())
        self.api.start()
        self._started.append(self.api)
        log.info("%s: gateway %s, API %s", self.org, self.exchange.url, self.api_url)
        return self

    def stop(self) -> None:
        for part in reversed(self._started):
            try:
                part.stop()
            except Exception:  # stop the rest whatever one of them does
                log.exception("%s: stopping %s failed", self.org, type(part).__name__)
        self._started.clear()


def _escrow_keeper(node: Node, client: Any, vault: Vault) -> Any:
    """The thread that keeps the hospital's keys escrowed at its peers (exchange/escrow.py);
    None for a home without a backup key (made before issue 15: `medledger backup` makes it)."""
    from medledger.exchange.escrow import EscrowKeeper
    from medledger.vault import KeyFileError, load_kek

    keys = node.config.home / "keys"
    try:
        kek, backup_key = load_kek(keys / "vault.kek"), load_kek(keys / "backup.key")
    except KeyFileError as exc:
        log.warning("%s: keys not escrowed: %s", node.config.org, exc)
        return None
    return EscrowKeeper(node, client, kek, backup_key, vault)


class Sandbox:
    """Every hospital of a solo consortium in this process: one engine, one runtime each.

    The solo ledger has one writer, so a sandbox network of several hospitals lives in one
    process; each hospital still has its own vault, gateway, sync agent and API.
    """

    def __init__(self, homes: list[Path], *, interval: float = 0.05, sync: bool = True) -> None:
        from medledger.exchange.client import Directory

        self.root = Node.open(homes[0], serve=True, interval=interval)
        self.vaults: list[Vault] = []
        self.runtimes: list[HospitalRuntime] = []
        try:
            peers = Directory(self.root.config.exchange.peers)
            for home in homes:
                node = self.root if home == homes[0] else self.root.sibling(home)
                vault = Vault.open(node.config.vault_config())
                self.vaults.append(vault)
                self.runtimes.append(HospitalRuntime(node, vault, directory=peers).start(sync))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for runtime in self.runtimes:
            runtime.stop()
        for vault in self.vaults:
            vault.close()
        self.root.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
