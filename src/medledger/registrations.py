"""Registering a hospital's stored records on the chain so that no outcome is lost.

The order, for each unit of records (an ingested file, or a chunk of one):

1. store the records and hold them provisional, in one vault transaction (`Vault.hold`);
2. sign the registration tx and keep it in the unit (`Vault.claim`) before submitting it;
3. submit it and wait for its block;
4. confirm the unit when the tx committed, withdraw its records when the tx was refused.

The vault never waits for the chain (its lock is free during step 3), and a crash anywhere
leaves either nothing or a provisional unit: records plus the tx that registers them. A
unit left over, by a crash or by a tx that did not commit in time, is settled by
`reconcile`, which the node runs once a minute and `medledger ingest` runs before it starts:
committed, it is confirmed; failed, or no longer able to commit (never signed, or its
signer's nonce moved past it), it is withdrawn; otherwise the same signed bytes are submitted
again and the unit waits for the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from medledger.consensus.engine import Committed, Engine
from medledger.ledger.errors import Code
from medledger.ledger.tx import decode_tx
from medledger.vault import ProvisionalUnit, Vault, VaultError
from medledger.wallet import TxRejected, Wallet

log = logging.getLogger(__name__)

#: A unit younger than this may belong to an ingestion still running in another process
#: (its wallet waits 30 s per attempt), so `reconcile` leaves it alone.
LEASE_S = 120.0

Fate = Literal["committed", "failed", "undecided"]

# A refusal at CheckTx that settles nothing: the nonce may be taken by a tx still in the
# mempool, or the mempool itself refused (full, ...) rather than the ledger's rules.
_UNDECIDED_REFUSALS = {int(Code.BAD_NONCE)}


class RegistrationPending(Exception):
    """The registration tx did not commit in time; its unit stays provisional."""

    def __init__(self, unit: str, reason: str) -> None:
        super().__init__(
            f"not committed in time ({reason}); the records are kept provisional and the "
            "node settles them once the chain decides"
        )
        self.unit = unit


def register(
    wallet: Wallet,
    vault: Vault,
    unit: str,
    kind: str,
    body: dict[str, Any],
    *,
    timeout: float = 30.0,
) -> Committed:
    """Steps 2 to 4 for a unit already held: raise TxRejected (withdrawn) or RegistrationPending."""
    try:
        committed = wallet.send(
            kind, body, timeout=timeout, on_signed=lambda tx: vault.claim(unit, tx)
        )
    except TxRejected:
        vault.withdraw(unit)
        raise
    except TimeoutError as exc:
        raise RegistrationPending(unit, str(exc)) from None
    vault.confirm(unit)
    return committed


@dataclass
class ReconcileReport:
    confirmed: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    too_recent: int = 0  # units left alone: within their lease

    @property
    def settled(self) -> int:
        return len(self.confirmed) + len(self.withdrawn)

    def summary(self) -> str:
        return (
            f"{len(self.confirmed)} confirmed, {len(self.withdrawn)} withdrawn, "
            f"{len(self.undecided)} still undecided, {self.too_recent} too recent to touch"
        )


def reconcile(
    engine: Engine,
    vault: Vault,
    *,
    min_age_s: float | None = None,
    wait_s: float = 5.0,
) -> ReconcileReport:
    """Settle every provisional unit older than `min_age_s` (LEASE_S) that has an outcome."""
    min_age_s = LEASE_S if min_age_s is None else min_age_s
    report = ReconcileReport()
    now = time.time()
    for unit in vault.provisional():
        if now - unit.updated_at < min_age_s:
            report.too_recent += 1
            continue
        fate = _fate(engine, unit, wait_s)
        try:
            if fate == "committed":
                vault.confirm(unit.unit)
                report.confirmed.append(unit.unit)
            elif fate == "failed":
                vault.withdraw(unit.unit)
                report.withdrawn.append(unit.unit)
            else:
                report.undecided.append(unit.unit)
        except VaultError:  # settled meanwhile by another process (node and CLI both reconcile)
            log.info("provisional unit %s: settled elsewhere", unit.unit)
            continue
        log.info("provisional unit %s (%d records): %s", unit.unit, len(unit.records), fate)
    return report


def _fate(engine: Engine, unit: ProvisionalUnit, wait_s: float) -> Fate:
    if unit.claim is None:
        return "failed"  # never signed, so never submitted
    tx = decode_tx(unit.claim)
    # The nonce first: once it has passed the tx, the tx's presence (or absence) is final.
    passed = int(engine.query("ledger/nonce", {"signer": tx.signer})) >= tx.nonce
    if engine.query("ledger/tx", {"id": tx.id}) is not None:
        committed = engine.wait_for_commit(tx.id, 0.0)
        return "committed" if committed.result.ok else "failed"
    if passed:
        return "failed"
    submitted = engine.submit(unit.claim)
    if not submitted.accepted:
        code = submitted.check.code
        known = code in {int(c) for c in Code}
        return "failed" if known and code not in _UNDECIDED_REFUSALS else "undecided"
    try:
        committed = engine.wait_for_commit(tx.id, wait_s)
    except TimeoutError:
        return "undecided"
    return "committed" if committed.result.ok else "failed"


class Reconciler:
    """Runs `reconcile` in the background of a running node, every `interval_s` seconds."""

    def __init__(self, engine: Engine, vault: Vault, interval_s: float = 60.0) -> None:
        self.engine = engine
        self.vault = vault
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Reconciler:
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                report = reconcile(self.engine, self.vault)
            except Exception:  # the next round tries again; a node must not die of this
                log.exception("reconciling provisional records failed")
                continue
            if report.settled or report.undecided:
                log.info("provisional records: %s", report.summary())
