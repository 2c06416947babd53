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
again and the unit waits for the next round. A unit is settled only if it still holds the
claim that was judged, so a reconciliation never undoes an owner that signed a newer tx.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from medledger.consensus.engine import Committed, Engine
from medledger.contracts import queries
from medledger.contracts.records import Register
from medledger.ledger.errors import Code
from medledger.ledger.tx import decode_tx
from medledger.node.wallet import TxRejected, Wallet
from medledger.vault import ProvisionalUnit, UnitSettled, Vault

log = logging.getLogger(__name__)

#: A unit younger than this may belong to an ingestion still running in another process
#: (its wallet waits 30 s per attempt), so `reconcile` leaves it alone. Correctness does not
#: rest on it: a unit is only settled if it still holds the claim that was judged.
LEASE_S = 120.0

Fate = Literal["committed", "failed", "undecided"]

_LEDGER_CODES = {int(c) for c in Code} - {int(Code.OK)}


class RegistrationPending(Exception):
    """A registration tx was sent but its outcome is unknown; its unit stays provisional."""

    def __init__(self, unit: str, reason: str) -> None:
        super().__init__(
            f"not settled ({reason}); the records are kept provisional and the node confirms "
            "or withdraws them once the chain decides (`medledger records pending`)"
        )
        self.unit = unit


class RegistrationFailed(Exception):
    """Nothing was registered and nothing of the unit was kept."""


def register(
    wallet: Wallet,
    vault: Vault,
    unit: str,
    msg: Register,
    *,
    timeout: float = 30.0,
) -> Committed:
    """Steps 2 to 4 for a held unit.

    Raises TxRejected (the chain refused it for good: withdrawn), RegistrationFailed
    (nothing was submitted: withdrawn) or RegistrationPending (a tx may still commit: kept).
    """
    claims: list[bytes] = []

    def keep(tx: bytes) -> None:
        vault.claim(unit, tx)
        claims.append(tx)

    try:
        committed = wallet.send_message(msg, timeout=timeout, on_signed=keep)
    except TxRejected as exc:
        if not _final(exc):
            raise RegistrationPending(unit, str(exc)) from None
        with contextlib.suppress(UnitSettled):
            vault.withdraw(unit, claims[-1] if claims else None)
        raise
    except UnitSettled:  # raised by keep(), before the tx it was keeping was submitted
        raise RegistrationFailed(
            "withdrawn by a reconciliation while it waited (it outlived the lease); nothing was "
            "registered, send the file again"
        ) from None
    except Exception as exc:
        if claims:
            raise RegistrationPending(unit, f"{type(exc).__name__}: {exc}") from None
        with contextlib.suppress(UnitSettled):
            vault.withdraw(unit, None)
        raise RegistrationFailed(
            f"the ledger could not be reached ({type(exc).__name__}: {exc}); nothing was kept"
        ) from None
    with contextlib.suppress(UnitSettled):  # a reconciliation saw the commit first
        vault.confirm(unit, claims[-1])
    return committed


def _final(exc: TxRejected) -> bool:
    """Whether a refusal means that none of the unit's txs can ever commit.

    Executed and failed: final. Refused at CheckTx by the ledger's rules: final too, because
    the wallet signs a new tx only once the previous one can no longer commit, and a refused
    tx is not gossiped. A mempool refusal (full, or no answer in time) is not: the tx may
    have been queued all the same.
    """
    return exc.stage == "execution" or exc.code in _LEDGER_CODES


@dataclass
class ReconcileReport:
    confirmed: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "unit: what went wrong"; retried later
    too_recent: int = 0  # units left alone: within their lease

    @property
    def settled(self) -> int:
        return len(self.confirmed) + len(self.withdrawn)

    def summary(self) -> str:
        text = (
            f"{len(self.confirmed)} confirmed, {len(self.withdrawn)} withdrawn, "
            f"{len(self.undecided)} still undecided, {self.too_recent} too recent to touch"
        )
        return text + "".join(f"; error: {e}" for e in self.errors)


def reconcile(
    engine: Engine,
    vault: Vault,
    *,
    min_age_s: float | None = None,
    wait_s: float = 5.0,
) -> ReconcileReport:
    """Settle every provisional unit older than `min_age_s` (LEASE_S) that has an outcome.

    Only two facts settle a unit: its tx is in a block (confirmed if it succeeded, withdrawn
    if it failed), or its signer's nonce moved past it while it is in no block (withdrawn; a
    unit never signed, likewise). Anything else, a refusal at CheckTx included (this replica
    may be behind, or a copy may sit in another validator's mempool), leaves it undecided:
    the same bytes are submitted again, and the next tx the hospital signs settles it.
    """
    min_age_s = LEASE_S if min_age_s is None else min_age_s
    report = ReconcileReport()
    now = time.time()
    for unit in vault.provisional():
        if now - unit.updated_at < min_age_s:
            report.too_recent += 1
            continue
        try:
            fate = _fate(engine, unit, wait_s)
        except Exception as exc:  # one unit's trouble must not stop the others
            report.errors.append(f"{unit.unit}: {type(exc).__name__}: {exc}")
            continue
        try:
            if fate == "committed":
                vault.confirm(unit.unit, unit.claim)
                report.confirmed.append(unit.unit)
            elif fate == "failed":
                count = vault.withdraw(unit.unit, unit.claim)
                report.withdrawn.append(unit.unit)
                log.warning(
                    "provisional unit %s withdrawn: its registration cannot commit; "
                    "%d record versions deleted, ingest them again",
                    unit.unit,
                    count,
                )
            else:
                report.undecided.append(unit.unit)
        except UnitSettled:  # settled meanwhile, or its owner signed a newer tx: not ours
            continue
        log.info("provisional unit %s (%d records): %s", unit.unit, len(unit.records), fate)
    return report


def settle(engine: Engine, vault: Vault, unit: ProvisionalUnit, wait_s: float = 5.0) -> Fate:
    """Settle one unit now, whatever its age, if the chain has decided its signed tx.

    For an ingestion that finds its resources held by an earlier unit (a file sent again
    after "registration pending"). A unit never signed is left alone: it may belong to an
    ingestion still running (`reconcile` settles it after its lease).
    """
    if unit.claim is None:
        return "undecided"
    fate = _fate(engine, unit, wait_s)
    with contextlib.suppress(UnitSettled):  # settled meanwhile: the fate is the same
        if fate == "committed":
            vault.confirm(unit.unit, unit.claim)
        elif fate == "failed":
            vault.withdraw(unit.unit, unit.claim)
    return fate


def _fate(engine: Engine, unit: ProvisionalUnit, wait_s: float) -> Fate:
    if unit.claim is None:
        return "failed"  # never signed, so never submitted
    tx = decode_tx(unit.claim)
    # The nonce first: once it has passed the tx, the tx's presence (or absence) is final.
    passed = queries.nonce(engine, tx.signer) >= tx.nonce
    if queries.tx_location(engine, tx.id) is not None:
        committed = engine.wait_for_commit(tx.id, 0.0)
        return "committed" if committed.result.ok else "failed"
    if passed:
        return "failed"
    if not engine.submit(unit.claim).accepted:
        return "undecided"
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
