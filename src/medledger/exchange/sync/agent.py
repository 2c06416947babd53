"""The sync agent: the requesting side's real-time loop, driven by committed blocks.

`SyncAgent` joins the parts: the planner (planner.py) follows this node's replica and queues
jobs in the agent's store (store.py); the running loop here starts the due jobs on a pool,
one per (kind, custodian, patient) at a time, and records their outcome: a refusal ends a
job, an unreachable peer is retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from medledger.exchange.client import ExchangeClient, ExchangeError
from medledger.exchange.gateway import Refused
from medledger.exchange.policy import Policy
from medledger.exchange.sync.delivery import DeliveryJobs
from medledger.exchange.sync.erasure import ErasureJobs
from medledger.exchange.sync.planner import Planner
from medledger.exchange.sync.prefetch import PrefetchJobs
from medledger.exchange.sync.store import Job, SyncStore
from medledger.node.wallet import TxRejected
from medledger.vault import PatientErased, Vault

if TYPE_CHECKING:
    from medledger.ledger.results import BlockRecord
    from medledger.node import Node

log = logging.getLogger(__name__)


class SyncAgent(Planner, PrefetchJobs, DeliveryJobs, ErasureJobs):
    """Follows committed blocks for one hospital and carries out what they entitle or oblige."""

    def __init__(
        self,
        node: Node,
        vault: Vault,
        client: ExchangeClient,
        policy: Policy,
        store: SyncStore,
        workers: int = 4,
    ) -> None:
        self.node = node
        self.vault = vault
        self.client = client
        self.policy = policy
        self.store = store
        self.org = node.config.org
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"sync-{self.org}")
        self._running: dict[tuple[str, str, str], Future[None]] = {}
        self._running_lock = threading.Lock()
        self._idle = threading.Condition()
        self._latest = None
        if node.app is not None:
            node.app.add_commit_listener(self._committed)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> SyncAgent:
        self._thread = threading.Thread(target=self._run, name=f"sync-{self.org}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _committed(self, record: BlockRecord) -> None:
        """After each commit (the ABCI thread): keep the block for the planner, and wake."""
        self._latest = record
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                progressed = self.step()
            except Exception:
                log.exception("%s sync agent: step failed", self.org)
                progressed = False
            if not progressed:
                self._wake.wait(0.2)
                self._wake.clear()

    def step(self) -> bool:
        """Plan jobs from the blocks not seen yet, then start the jobs that are due."""
        progressed = self._follow()
        progressed = self._dispatch() or progressed
        return progressed

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Until every block is planned and no job is queued or running (tests, bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._running_lock:
                busy = bool(self._running)
            if (
                not busy
                and self.store.pending() == 0
                and self.store.cursor() >= self.node.engine.height()
            ):
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    # -- running jobs ----------------------------------------------------------------------
    def _dispatch(self) -> bool:
        started = False
        for job in self.store.due():
            slot = (job.kind, job.custodian, job.pid)
            with self._running_lock:
                if slot in self._running:
                    continue
                try:
                    self._running[slot] = self._pool.submit(self._execute, job, slot)
                except RuntimeError:  # shutting down
                    return started
            started = True
        return started

    def _execute(self, job: Job, slot: tuple[str, str, str]) -> None:
        try:
            handler = {
                "sync": self._sync,
                "deliver": self._deliver,
                "confirm": self._confirm,
                "erase": self._erase,
            }[job.kind]
            outcome = handler(job)
            self.store.finish(job, "done", outcome)
        except ExchangeError as exc:
            if exc.refused:
                self.store.finish(job, "refused", str(exc))
            else:
                self.store.retry(job, str(exc))
        except (TxRejected, Refused) as exc:
            self.store.finish(job, "refused", str(exc))
        except PatientErased as exc:
            self.store.finish(job, "erased", str(exc))
        except Exception as exc:
            log.exception("%s sync agent: %s job failed", self.org, job.kind)
            self.store.retry(job, f"{type(exc).__name__}: {exc}")
        finally:
            with self._running_lock:
                self._running.pop(slot, None)
            self._wake.set()
