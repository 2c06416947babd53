"""One hospital's exchange layer, wired: gateway over mTLS, sync agent, event stream.

`medledger node run` starts one of these beside the ledger engine; a sandbox runs one per
hospital in a single process, sharing the solo engine and one directory of gateway addresses.

    HOME/exchange/evidence.db   every signed request received (signing.py)
    HOME/exchange/sync.db       the sync agent's cursor, metadata keys and jobs (sync/store.py)
    HOME/custody.db             other members' sealed replicas kept here (node/custody.py)
    HOME/research/partials.db   study-query partials received (node/study_partials.py)
    HOME/keys/backup.key        seals this hospital's replicas at its peers (replicator.py)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from medledger.contracts import queries
from medledger.exchange.client import Directory, ExchangeClient, member_pins
from medledger.exchange.events import EventStream
from medledger.exchange.gateway import Gateway, create_app
from medledger.exchange.pki import PinnedContexts, TlsFiles
from medledger.exchange.policy import AuthorizeFn, Policy
from medledger.exchange.replicator import Replicator
from medledger.exchange.server import ServerThread
from medledger.exchange.signing import EvidenceStore
from medledger.exchange.sync import SyncAgent, SyncStore
from medledger.node.custody import CustodyStore
from medledger.node.study_partials import Inbox

if TYPE_CHECKING:
    from medledger.node import Node
    from medledger.vault import Vault

log = logging.getLogger(__name__)


class HospitalExchange:
    """The exchange services of one hospital's node."""

    def __init__(
        self,
        node: Node,
        vault: Vault,
        *,
        directory: Directory | None = None,
        host: str | None = None,
        port: int | None = None,
        authorize: AuthorizeFn | None = None,
        workers: int = 4,
    ) -> None:
        self.node = node
        self.vault = vault
        self.org = node.config.org
        home = node.config.home
        folder = home / "exchange"
        self.directory = directory or Directory(
            node.config.exchange.peers, lambda: queries.members(node.engine)
        )
        self.policy = Policy(node, authorize)
        self.evidence = EvidenceStore(folder / "evidence.db")
        self.store = SyncStore(folder / "sync.db", node.config.box_key())
        self.client = ExchangeClient(node, directory=self.directory)
        self.agent = SyncAgent(node, vault, self.client, self.policy, self.store, workers)
        self.replicator = Replicator(node, vault, self.client)
        self.custody = CustodyStore(home / "custody.db")
        self.partials = Inbox(home / "research" / "partials.db", node.config.box_key())
        self.gateway = Gateway(
            node,
            vault,
            self.evidence,
            self.policy,
            on_delivery=self.agent.receive_delivery,
            custody=self.custody,
            partials=self.partials,
        )
        self.events = EventStream(node, vault, self.policy)
        self.app = create_app(self.gateway, self.events)
        cfg_host, cfg_port = node.config.gateway_address
        self.server = ServerThread(
            self.app,
            host or cfg_host,
            cfg_port if port is None else port,
            # Pinned to the members' keys, re-read per handshake; a client without a
            # certificate gets through to the bootstrap answer only (exchange/bootstrap.py).
            PinnedContexts(
                TlsFiles(node.config.tls_dir), member_pins(node), anonymous=True
            ).server(),
            name=f"gateway-{self.org}",
        )
        self._started = False

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, sync: bool = True) -> HospitalExchange:
        """Listen, publish the bound address in the directory, start following blocks."""
        self.server.start()
        self.directory.set(self.org, self.server.url)
        if sync:
            self.agent.start()
            self.replicator.start()
        self._started = True
        log.info("%s gateway on %s", self.org, self.server.url)
        return self

    def stop(self) -> None:
        self.events.stop()
        self.agent.stop()
        self.replicator.stop()
        self.server.stop()
        self.client.close()
        self.evidence.close()
        self.store.close()
        self.custody.close()
        self.partials.close()
        self._started = False

    def __enter__(self) -> HospitalExchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
