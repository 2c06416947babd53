"""The study agent: a running node answers approved study queries by itself, once.

It looks for running queries naming this hospital among their answerers and not yet answered
by it (at once after a block with a `study.query_*` event when the node has its own replica,
and every `poll` seconds), and answers each in a worker (`answer.Answerer`). A restart finds
the same queries again: an answer on the chain is never sent twice, partials received are in
the node's inbox, and sends already acknowledged are not repeated. What it did is in the
node's log and in `status()` (the node's health lists it).

A submitted query that this hospital's DPO (and the study's ethics) approved is evaluated
ahead of its start, in a worker (`Answerer.prepare`): most of an answer's CPU is reading the
sealed digests, and the approvals of the other members take blocks. Nothing leaves and
nothing is audited then; when the query runs, the answer takes those facts for the patients
its plan names whose own records did not change since, and reads the rest. The DPO's
approval counts from the moment this node's CheckTx accepts it (`_checked`), not its block:
the last approver's approval is the block that starts the query. Until that tx commits it
is `_pending`; if it never does (refused by its block, its nonce passed without it, its
signer no longer an active DPO here, or `PENDING_MAX_BLOCKS` passed), the preparation is
dropped, as when the query leaves the approval state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medledger.contracts import queries
from medledger.contracts.research import study_open
from medledger.ledger.tx import decode_tx
from medledger.node import decisions
from medledger.node.study_partials import Inbox, running
from medledger.node.wallet import TxRejected
from medledger.research.answer import (
    ANSWER,
    Answered,
    Answerer,
    NotAnswered,
    SendPartials,
    Warm,
    answered_by,
    preparable,
)

if TYPE_CHECKING:
    from medledger.ledger.results import BlockRecord, TxResult
    from medledger.node import Node
    from medledger.vault import Vault

log = logging.getLogger(__name__)

#: How long one attempt waits for missing partials before the query is looked at again.
ATTEMPT_WAIT_S = 30.0
#: After an attempt that failed (its answer refused, a vault error), the next one waits this.
RETRY_S = 10.0
#: An answer tx not committed this long after it was sent is looked for (lost?), and resent
#: with a fresh nonce at most MAX_RESENDS times (as `Wallet.send` does).
LOSS_CHECK_S = 3.0
MAX_RESENDS = 2
#: Blocks after which this hospital's DPO's approval, seen at CheckTx and still in no block,
#: is no longer acted on ahead (it counts again once a block holds it).
PENDING_MAX_BLOCKS = 5


@dataclass
class Pending:
    """This hospital's DPO's approval of a query, accepted by CheckTx, not yet committed."""

    tx: bytes  # its id
    signer: bytes
    nonce: int
    roles: frozenset[str]
    height: int  # the committed height when CheckTx accepted it


class StudyAgent:
    def __init__(
        self,
        node: Node,
        vault: Vault,
        inbox: Inbox,
        send: SendPartials,
        *,
        poll: float = 1.0,
        workers: int = 4,
        warm: Warm | None = None,
        ahead: bool = True,
    ) -> None:
        self.node = node
        self.org = node.config.org
        self.answerer = Answerer(node, vault, inbox, send, warm)
        self.poll = poll
        self.ahead = ahead  # evaluate a query approved here before it runs (`approved`)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"study-{self.org}")
        self._running: dict[str, Future[Answered | None]] = {}
        self._preparing: dict[str, Future[None]] = {}  # approved here, not yet running
        self._pending: dict[str, Pending] = {}  # approved here in a tx not yet in a block
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: dict[str, str] = {}
        self._later: dict[str, float] = {}  # a query that failed: not before this time
        # Answer txs submitted and not yet seen committed (query -> what was sent, resends):
        # with a replica here, the block that commits one wakes the agent (`_committed`), so
        # no thread waits for it.
        self._sent: dict[str, tuple[Answered, int]] = {}
        self._follows = node.app is not None
        self._woken = 0.0  # perf_counter() of the last block that moved a query (`start`)
        self.answered: dict[str, Answered] = {}
        if node.app is not None:
            node.app.add_commit_listener(self._committed)
            node.app.add_check_listener(self._checked)

    def start(self) -> StudyAgent:
        self._thread = threading.Thread(target=self._run, name=f"study-{self.org}", daemon=True)
        self._thread.start()
        self.node.study_status = self.status
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.answerer.close()  # its reads ahead and prepared facts are not kept (review 13a)
        self.node.study_status = None

    def _committed(self, record: BlockRecord) -> None:
        """After each commit (the ABCI thread): wake at once when the block moved a query (a
        query running, answered, done); the periodic look catches the rest (a deadline). A
        patient's withdrawal from a study drops what was read ahead of them for it."""
        moved, withdrawn = False, dict[str, set[str]]()
        for events in (record.events, *(r.events for r in record.results)):
            for e in events:
                if not e.type.startswith("study."):
                    continue
                if e.type == "study.withdrawn":
                    withdrawn.setdefault(e.get("study") or "", set()).add(e.get("pid") or "")
                elif e.type.startswith("study.query_"):
                    moved = True
        for study, pids in withdrawn.items():  # what was read ahead of them is not kept
            self.answerer.forget(study, pids)
        if moved:
            self._woken = time.perf_counter()
            self._wake.set()

    def _checked(self, raw: bytes, result: TxResult) -> None:
        """After CheckTx accepted a tx (the ABCI thread): this hospital's DPO's approval of a
        query, signed and valid against the state (the contract's own checks, in check
        mode), is its decision: the query may be prepared before the tx's block."""
        roles = {
            str(e.get("role"))
            for e in result.events
            if e.type == "study.query_approved" and e.get("org") == self.org
        }
        if not roles or not self.ahead:
            return
        try:
            tx = decode_tx(raw)
        except Exception:  # CheckTx decoded it: not expected
            return
        query_id = str(tx.body.get("query"))
        with self._lock:
            self._pending[query_id] = Pending(
                tx.id, tx.signer, tx.nonce, frozenset(roles), self._height()
            )
        self._wake.set()

    def _height(self) -> int:
        app = self.node.app
        return 0 if app is None else app.height

    def _settle_pending(self) -> dict[str, frozenset[str]]:
        """The pending approvals still on their way (query -> roles): one committed (or
        refused by its block) is the record's to say; one whose nonce the chain passed
        without it can no longer commit; one whose signer is no longer an active DPO of this
        hospital (revoked: its tx leaves the mempool, and the key never signs again), or
        still not in a block `PENDING_MAX_BLOCKS` after CheckTx, is not acted on any more
        (review 12c, finding 1). Only the decision's block makes it count for good."""
        engine = self.node.engine
        with self._lock:
            pending = dict(self._pending)
        height = self._height()

        def still_dpo(key: bytes) -> bool:
            actor = queries.actor_of_key(engine, key)
            return bool(
                actor is not None
                and actor.get("org") == self.org
                and actor.get("active")
                and "dpo" in (actor.get("roles") or ())
            )

        gone = {
            query_id: p
            for query_id, p in pending.items()
            if queries.tx_location(engine, p.tx) is not None
            or queries.nonce(engine, p.signer) >= p.nonce
            or height > p.height + PENDING_MAX_BLOCKS
            or not still_dpo(p.signer)
        }
        with self._lock:
            for query_id, p in gone.items():
                if self._pending.get(query_id) is p:  # not replaced meanwhile
                    del self._pending[query_id]
            return {q: p.roles for q, p in self._pending.items()}

    def status(self) -> list[str]:
        """One line per query this node worked on since it started (health)."""
        with self._lock:
            return [f"study query {q}: {s}" for q, s in sorted(self._status.items())]

    def _set(self, query_id: str, what: str) -> None:
        with self._lock:
            self._status[query_id] = what

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("%s study agent: step failed", self.org)
            self._wake.wait(self.poll)
            self._wake.clear()

    def due(self) -> list[str]:
        """Running queries that name this hospital and that it has not answered."""
        engine = self.node.engine
        if queries.contract_versions(engine).get("research", 1) < 2:
            return []  # a chain still on research v1 has no study queries (a vote moves it)
        now = decisions.now_ms()
        found = []
        for study in queries.studies(engine):
            for listed in queries.study_queries(engine, str(study["id"])):
                if not running(listed, now):
                    continue
                record = queries.study_query(engine, str(listed["id"]))
                if (
                    running(record, now)
                    and record is not None
                    and self.org in (record.get("answerers") or ())
                    and self.org not in answered_by(record)
                ):
                    found.append(str(record["id"]))
        return found

    def approved(self) -> list[str]:
        """Submitted queries of open studies this hospital may evaluate ahead of their start
        (`preparable`, its DPO's approvals in a mempool counted: `_pending`), from the
        studies' listings: no read per query, whoever submitted them (review 12a, finding
        3); a closed study's query never starts (finding 2)."""
        engine = self.node.engine
        if queries.contract_versions(engine).get("research", 1) < 2:
            return []
        pending = self._settle_pending()
        now = decisions.now_ms()
        return [
            str(listed["id"])
            for study in queries.studies(engine)
            if study_open(study, now)
            for listed in queries.study_queries(engine, str(study["id"]))
            if preparable(listed, self.org, pending.get(str(listed["id"]), frozenset()))
        ]

    def step(self) -> None:
        with self._lock:
            for query_id, future in list(self._running.items()):
                if future.done():
                    del self._running[query_id]
        self._follow()
        due = self.due()
        approved = self.approved() if self.ahead else []
        stale = self.answerer.prepared_stale()
        with self._lock:
            for query_id in stale:  # read afresh below if still preparable
                if query_id not in self._running and query_id not in due:
                    self._preparing.pop(query_id, None)
                    self.answerer.discard(query_id)
            for query_id in list(self._preparing):
                if query_id not in approved and query_id not in due:  # refused, expired
                    gone = self._preparing.pop(query_id)
                    if not gone.cancel():  # begun: forgotten once it ends
                        gone.add_done_callback(self._discard(query_id))
                    self.answerer.discard(query_id)
            for query_id in approved:
                if query_id not in self._preparing:
                    self._preparing[query_id] = self._pool.submit(self._prepare, query_id)
        for query_id in due:
            with self._lock:
                if (
                    query_id in self._running
                    or query_id in self._sent
                    or self._later.get(query_id, 0) > time.monotonic()
                ):
                    continue
                self._status.setdefault(query_id, "evaluating")
                self._running[query_id] = self._pool.submit(self._answer, query_id)

    def _follow(self) -> None:
        """Each answer tx sent to its fate, as `Wallet.send` would wait for it: committed
        (answered), refused by its block (tried again after RETRY_S), or lost (its nonce
        passed on the chain without it: it can never commit, so the same body is sent again
        with a fresh nonce, at most MAX_RESENDS times)."""
        with self._lock:
            sent = list(self._sent.items())
        for query_id, (done, resends) in sent:
            try:
                committed = self.node.engine.wait_for_commit(done.tx, 0.0)
            except TimeoutError:
                committed = None
            if committed is not None:
                with self._lock:
                    del self._sent[query_id]
                if committed.result.ok:
                    done.timing["commit"] = time.perf_counter() - done.submitted
                    self.answerer.landed(done)
                    self._done(query_id, done)
                else:
                    why = f"{committed.result.code}: {committed.result.log}"
                    self._refused(
                        query_id, done, TxRejected(ANSWER, committed.result.code, why, "execution")
                    )
                continue
            if time.perf_counter() - done.submitted < LOSS_CHECK_S:
                continue
            key = self.node.wallet.public_key
            if queries.nonce(self.node.engine, key) < done.nonce:
                continue  # still ahead of the chain: it may yet commit
            if queries.tx_location(self.node.engine, done.tx) is not None:
                continue  # committed meanwhile: seen at the next step
            if resends >= MAX_RESENDS:
                with self._lock:
                    del self._sent[query_id]
                self._failed(query_id, TimeoutError(f"answer dropped {resends + 1} times"))
                continue
            try:
                submitted, done.nonce = self.node.wallet.submit_nonce(ANSWER, done.body)
            except Exception as exc:
                with self._lock:
                    del self._sent[query_id]
                self._failed(query_id, exc)
                continue
            done.tx, done.submitted = submitted.tx_id, time.perf_counter()
            with self._lock:
                if submitted.accepted:
                    self._sent[query_id] = (done, resends + 1)
                else:
                    del self._sent[query_id]
            if not submitted.accepted:
                check = submitted.check
                self._refused(query_id, done, TxRejected(ANSWER, check.code, check.log, "check"))

    def _done(self, query_id: str, done: Answered) -> None:
        self.answered[query_id] = done
        self._set(query_id, f"answered for {done.patients} patients, tx {done.tx.hex()[:16]}")

    def _refused(self, query_id: str, done: Answered | None, exc: BaseException) -> None:
        """An answer tx refused: if the chain holds this hospital's answer all the same (a
        resend refused because an earlier send committed), the query is answered by the
        committed tx, and says so; otherwise the attempt failed."""
        record = queries.study_query(self.node.engine, query_id)
        mine = ((record or {}).get("answers") or {}).get(self.org)
        if mine is None:
            self._failed(query_id, exc)
            return
        tx = mine.get("tx")
        committed = tx if isinstance(tx, bytes) else bytes.fromhex(str(tx))
        if done is None:  # sent by `Wallet.send`, which resent it: nothing more is known
            done = Answered(query_id, int(mine["patients"]), {}, committed)
        else:
            done.tx, done.patients = committed, int(mine["patients"])
            self.answerer.landed(done)
        log.info("%s: %s answered by tx %s (a resend refused)", self.org, query_id, committed.hex())
        self._done(query_id, done)

    def _failed(self, query_id: str, exc: BaseException) -> None:
        log.error("%s: answering %s failed: %s", self.org, query_id, exc, exc_info=exc)
        self._set(query_id, f"failed, retried in {RETRY_S:.0f} s: {type(exc).__name__}: {exc}")
        with self._lock:
            self._later[query_id] = time.monotonic() + RETRY_S

    def _discard(self, query_id: str) -> Callable[[Future[None]], None]:
        return lambda _: self.answerer.discard(query_id)

    def _prepare(self, query_id: str) -> None:
        with self._lock:
            pending = self._pending.get(query_id)
        try:
            read = self.answerer.prepare(query_id, () if pending is None else pending.roles)
        except Exception:
            log.exception("%s: evaluating %s ahead failed (read when it runs)", self.org, query_id)
            return
        if read is not None:
            self._set(query_id, f"evaluated ahead for {read} patients: awaiting its start")

    def _answer(self, query_id: str) -> Answered | None:
        woken, begun = self._woken, time.perf_counter()
        with self._lock:
            preparing = self._preparing.pop(query_id, None)
        if preparing is not None and not preparing.cancel():
            with contextlib.suppress(Exception):  # begun: its facts are the answer's start
                preparing.result()
        try:
            done = self.answerer.answer(query_id, max_wait=ATTEMPT_WAIT_S, wait=not self._follows)
        except NotAnswered as exc:
            self._set(query_id, f"waiting: {exc}")
            self._wake.set()
            return None
        except TxRejected as exc:
            self._refused(query_id, None, exc)
            return self.answered.get(query_id)
        except Exception as exc:
            self._failed(query_id, exc)
            return None
        if done is not None and done.submitted:  # submitted only: `_follow` takes it on
            if woken:  # from the block that moved the query to this answer's start
                done.timing = {"start": begun - woken, **done.timing}
            with self._lock:
                self._sent[query_id] = (done, 0)
            self._set(query_id, f"answer sent, tx {done.tx.hex()[:16]}: awaiting its block")
            self._wake.set()  # it may have committed already
        elif done is not None:
            self._done(query_id, done)
        return done

    def wait_answered(self, query_id: str, timeout: float = 60.0) -> Answered:
        """Until this node's answer to the query is posted (tests, bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if query_id in self.answered:
                return self.answered[query_id]
            self._wake.set()
            time.sleep(0.02)
        raise TimeoutError(f"{self.org}: no answer to {query_id} after {timeout}s")


def attach(exchange: Any, vault: Vault, **options: Any) -> StudyAgent:
    """A study agent for a running exchange (`exchange.service.HospitalExchange`): partials
    go out through its client and come in through its gateway's inbox."""
    options.setdefault("warm", exchange.client.warm)
    agent = StudyAgent(
        exchange.node, vault, exchange.partials, exchange.client.study_partials, **options
    )
    # The gateway checks a co-answerer's partials against the query's reads ahead when
    # they are provably current (no lock, no scan), else reads the chain.
    exchange.gateway.partials_view = agent.answerer.check_view
    return agent
