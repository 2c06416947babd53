"""One hospital's answer to one running study query, from its records to its masked cells.

`Answerer.answer(query id)` (its facts read ahead, when `prepare` ran while the query
awaited the other members' approvals, for the patients whose own records did not change):
1. reads the chain once (one committed view): the query, its study, the patients whose
   custody runs at this hospital (`records.custodies_at`), of them those enrolled (not
   withdrawn, no erasure request), and each one's answering hospital for the query
   (`node.study_partials.Links`: each kind of fact read once for them all, not per patient);
2. evaluates its own records of them (`evaluate.Evaluator`: custodian records only, the
   query's categories that the study also has), the patients another answerer counts first;
3. journals (durably), then sends, each co-custodian's share: the facts of the patients
   whose answering hospital is that co-custodian, one message to every other answerer,
   empty or not (`study-partials`, the exchange; audited as `export` entries, purpose
   research, basis `enrolment:<study>`); a send refused or failed is retried until the
   deadline. The sends run in threads while it evaluates the patients it counts itself,
   so that a co-answerer's wait ends with this hospital's shares, not its whole evaluation;
4. draws its noise when the query has an epsilon (`study_query.answer_noise`, seeded by its
   signature over the query's noise seed) and its pairwise mask, which need no facts; waits
   for every other answerer's message (they are kept in the node's `Inbox`, so a restart
   resumes here), then for its shares' replies (the pids not kept, which it reports),
   merges the messages into its own patients' facts, reads their enrolment again
   (`_counted`: a withdrawal meanwhile is not counted), `tally`s, waits for its empty
   messages' replies (so that no co-answerer lacks its message once the answer is on the
   chain), and posts `research.query_answer` with the hospital's key.

A query this hospital already answered on the chain is never answered again; nothing it
does before the answer changes the chain but the audit entries (kept once: `Inbox.sent`).
If some answerer never sends its partials, no answer is posted: the query would be
incomplete anyway (that answerer's own answer is missing), and a partial answer would count
some patients nowhere.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medledger.contracts import governance, queries
from medledger.contracts.authorize import Decision
from medledger.contracts.patients import key_bindings
from medledger.contracts.policies import params
from medledger.contracts.records import custodies_at
from medledger.contracts.research import study_open
from medledger.contracts.research_queries import parsed_query
from medledger.contracts.study_query import (
    PatientFacts,
    StudyQuery,
    answer_noise,
    answer_noise_seed,
    cells,
    criteria,
    noise_commitment,
    noise_message,
    tally,
)
from medledger.ledger.store import StateView
from medledger.node import decisions
from medledger.node.study_partials import (
    ChainReads,
    Inbox,
    Links,
    Recorder,
    Unread,
    answering,
    running,
)
from medledger.node.study_partials import counted as counted_now
from medledger.node.wallet import TxRejected
from medledger.research import masks
from medledger.research.evaluate import Evaluator, needs_demographics

if TYPE_CHECKING:
    from medledger.node import Node
    from medledger.vault import Vault

log = logging.getLogger(__name__)

#: send(receiver, query id, [[pid, facts object], ...]) -> the receiver's answer; raises when
#: refused or unreachable (exchange.client.ExchangeClient.study_partials).
SendPartials = Callable[[str, str, list[list[Any]]], Any]
#: warm(receivers): open connections to them ahead of the sends (ExchangeClient.warm).
Warm = Callable[[list[str]], None]

ANSWER = "research.query_answer"

#: How long the partials' audit entries wait, durable, for the answer's block (`landed`).
QUIET_S = 6.0

#: How long facts read ahead are kept for a query still waiting for its approvals: then read
#: afresh, so that a patient who withdrew or was erased meanwhile is not kept in memory.
PREPARED_MAX_AGE_S = 600

#: The items (keys read and scanned entries) the queries' chain reads ahead may hold in all
#: (`ChainReads.size`; about 260 bytes each, so about 260 MB): they scan the chain's custodies
#: and key bindings whole, and every query a sponsor's ethics approval makes preparable
#: keeps its own. Beyond it the oldest are dropped (their plans read the chain); reads
#: larger than it are not kept (review 13a, finding 2).
READS_AHEAD_MAX_ITEMS = 1_000_000


class NotAnswered(Exception):
    """The query could not be answered now (missing partials, deadline): `reason` says why."""


@dataclass
class Answered:
    """What this hospital posted for a query, and where the time went (seconds)."""

    query: str
    patients: int
    sent: dict[str, int]
    tx: bytes = b""
    timing: dict[str, float] = field(default_factory=dict)
    dropped: int = 0  # enrolled patients it counted nowhere: held, or sent and not kept
    body: dict[str, Any] = field(default_factory=dict)  # of its `research.query_answer` tx
    nonce: int = 0  # of `tx`, when submitted without waiting
    submitted: float = 0.0  # perf_counter() when `tx` was submitted without waiting


@dataclass
class Sealing:
    """What an answer adds to its tallied cells, known before the partials arrive."""

    noise: list[int]
    mask: list[int]
    commitment: bytes  # of the noise seed, when the query has an epsilon
    research_v3: bool  # the chain takes `dropped`


@dataclass
class Plan:
    """What the chain says this hospital must do for a query (one committed view)."""

    query_id: str
    study: str
    q: StudyQuery
    categories: tuple[str, ...]
    answerers: list[str]
    deadline_ms: int
    noise_seed: bytes
    mine: dict[str, str]  # pid -> its answering hospital ("": held), for the pids it holds
    box_keys: dict[str, bytes] = field(default_factory=dict)  # the answerers' at the start
    held: set[str] = field(default_factory=set)  # held by this hospital's too young link
    # Read in the same view, for `_sealing`: each chain read outside it waits for the lock
    # that the node's block commits and CheckTx take.
    publics: dict[str, bytes] = field(default_factory=dict)  # box keys the masks agree from
    research_v3: bool = False  # the chain takes `dropped`
    ahead: bool = False  # its chain inputs were those read ahead (`ChainReads`), unchanged


def read_plan_inputs(state: StateView, study: str, org: str) -> list[str]:
    """Make every read a plan (`Answerer._chain`) makes for a query of `study` at `org`,
    whatever its start: the study's enrolments, the erasure requests, the custodies and
    shreddings, the key bindings (and, for each patient held here, whether their binding's
    act is on the chain), the members, the research contract's version and the parameters.
    Returns the enrolled patients this hospital holds (`counted`)."""
    held = custodies_at(state, org)
    pids = sorted(counted_now(state, study, held))
    for pid, binding in key_bindings(state, held).items():
        at, tx = int(binding.get("time") or 0), bytes(binding.get("tx") or b"")
        state.has(f"patients/acted/{pid}/{at:016d}/{tx.hex()}")
    governance.members(state)
    governance.contract_version(state, "research")
    params(state)
    return pids


@dataclass
class Prepared:
    """A query's evaluation done before it runs (`Answerer.prepare`): the facts of the
    patients read then, each good for the answer only while the patient's own records are
    in the state they were in before the reading (`states`, `Vault.own_states`, compared
    patient by patient: the replication journal is pruned once the replicas caught up, so
    its head says nothing about what changed; review 12a, finding 1), only for the same
    evaluation (`key`), and kept at most `PREPARED_MAX_AGE_S` (`at`, monotonic)."""

    key: tuple[Any, ...]
    states: dict[str, tuple[int, str, bytes]]
    facts: dict[str, PatientFacts]
    study: str = ""
    at: float = field(default_factory=time.monotonic)

    def valid(self, vault: Vault, pids: list[str]) -> set[str]:
        """Those of `pids` read ahead whose facts still hold."""
        read = [pid for pid in pids if pid in self.states]
        now = vault.own_states(read)
        return {pid for pid in read if now.get(pid) == self.states[pid]}


def evaluation_key(q: StudyQuery, categories: tuple[str, ...]) -> tuple[Any, ...]:
    """What `Evaluator.facts` depends on besides the vault and the pids."""
    return (criteria(q), q.value_of, needs_demographics(q), frozenset(categories))


def preparable(record: dict[str, Any] | None, org: str, pending: Collection[str] = ()) -> bool:
    """A submitted query that this hospital may evaluate ahead of its start: the study's
    ethics approval given, and its own DPO's when the custodians approve (nothing leaves
    the hospital before the query runs). `pending`: the roles of this hospital's DPO's
    approvals that CheckTx accepted and no block holds yet (signed decisions on their way:
    the last approver's starts the query, so waiting for its block leaves nothing ready)."""
    if record is None or record.get("status") != "submitted":
        return False
    approved = {str(a.get("org")) for a in record.get("approvals") or ()}
    sponsor = str(record.get("sponsor"))
    ethics = sponsor in approved or (sponsor == org and "ethics" in pending)
    return ethics and (not record.get("custodians_approve") or org in approved or bool(pending))


def answered_by(record: dict[str, Any]) -> set[str]:
    """The answerers whose answer is on the chain."""
    return set(record.get("answers") or {})


def _returned(reply: Any, share: list[list[Any]]) -> list[str]:
    """The pids of `share` the receiver says it did not keep (its reply's `dropped`: the
    study_partials check); any other pid it names is ignored: not this sender's to report."""
    named = reply.get("dropped") if isinstance(reply, dict) else None
    if not isinstance(named, list):
        return []
    sent = {str(pid) for pid, _ in share}
    return sorted({p for p in named if isinstance(p, str) and p in sent})


def box_publics(at_start: dict[str, bytes], members: list[dict[str, Any]]) -> dict[str, bytes]:
    """The answerers' box keys the masks are agreed from: those the query fixed when it
    started (a peer's key rotated since would leave masks in the sum), else the members'."""
    current = {str(m["org"]): bytes(m["box_key"]) for m in members if m.get("box_key")}
    return current | at_start


class Answerer:
    def __init__(
        self,
        node: Node,
        vault: Vault,
        inbox: Inbox,
        send: SendPartials,
        warm: Warm | None = None,
    ) -> None:
        self.node = node
        self.vault = vault
        self.inbox = inbox
        self.send = send
        self.warm = warm
        self.org = node.config.org
        #: query -> its shares' sending, still running after a failed attempt: a retry waits
        #: for it, so that no share is audited or sent twice (Inbox.sent marks them after)
        self._sending: dict[str, list[Future[dict[str, int]]]] = {}
        #: query -> its evaluation done while it awaited approvals (`prepare`)
        self._prepared: dict[str, Prepared] = {}
        self._prepared_lock = threading.Lock()
        #: query -> the plan's chain inputs read with its prepared facts (`ChainReads`)
        self._reads: dict[str, ChainReads] = {}
        self._app = getattr(node, "app", None)
        if self._app is not None:  # no local replica: the plan always reads the chain
            self._app.add_write_listener(self._wrote)

    # -- 1. the chain ------------------------------------------------------------------------
    def plan(self, query_id: str, early: Warm | None = None) -> Plan | None:
        """What to do for the query, or None when this hospital has nothing (more) to do.
        `early` is given the co-answerers as soon as they are known, before the links."""
        engine = self.node.engine
        record = queries.study_query(engine, query_id)
        if record is None or not running(record, decisions.now_ms()):
            return None
        answerers = sorted(record.get("answerers") or [])
        if self.org not in answerers or self.org in answered_by(record):
            return None
        if early is not None:
            early([o for o in answerers if o != self.org])
        study_id = str(record["study"])
        study = queries.study(engine, study_id)
        if study is None or not study_open(study, decisions.now_ms()):
            return None  # closed meanwhile: its patients' enrolments cover no more reads
        q = parsed_query(record)
        allowed = set(study.get("categories") or [])
        categories = tuple(c for c in q.categories if c in allowed)
        box_keys = {str(o): bytes(k) for o, k in (record.get("box_keys") or {}).items()}
        chain: tuple[dict[str, bytes], bool, dict[str, str], set[str]] | None = None
        reads = self.reads_ahead(query_id, study_id)
        if reads is not None:
            with contextlib.suppress(Unread):  # a read they did not make: the chain's
                chain = self._chain(reads.view(), record, box_keys)
        ahead = chain is not None
        if chain is None:
            with engine.read_view() as state:
                chain = self._chain(state, record, box_keys)
        publics, research_v3, mine, held = chain
        return Plan(
            query_id,
            study_id,
            q,
            categories,
            answerers,
            int(record.get("deadline_ms") or 0),
            bytes(record.get("noise_seed") or b""),
            mine,
            box_keys,
            held,
            publics,
            research_v3,
            ahead,
        )

    def _chain(
        self, state: StateView, record: dict[str, Any], box_keys: dict[str, bytes]
    ) -> tuple[dict[str, bytes], bool, dict[str, str], set[str]]:
        """The plan's chain inputs in one view: the masks' box keys, whether the chain takes
        `dropped`, each held enrolled patient's answering hospital, those held back."""
        query_id = str(record["id"])
        mine: dict[str, str] = {}
        held: set[str] = set()
        publics = box_publics(box_keys, governance.members(state))
        research_v3 = governance.contract_version(state, "research") >= 3
        links = Links.at(state, record, self.org)  # its own patients, then the enrolled
        for pid in links.pids:
            if not links.counts(pid):
                continue
            held_by = links.custodians(pid)
            if self.org in held_by:  # its only custodian counts them, whatever the links
                linked = links.linked(pid) if len(held_by) > 1 else ()
                mine[pid] = answering(query_id, held_by, linked, links.settled)
                first = next((link.org for link in linked if link.org in held_by), "")
                if not mine[pid] and first == self.org:
                    held.add(pid)  # its own link is too young: it says so, once
        return publics, research_v3, mine, held

    def _wrote(self, height: int, written: Collection[bytes]) -> None:
        """The app's write listener: a block's keys void the reads ahead they touch, and a
        block after one never heard (a commit that failed after its store's, a listener
        before this one that raised) voids them all: what it wrote is unknown (review 13a,
        finding 1). Each reads' `height` follows the blocks heard that left them."""
        with self._prepared_lock:
            for query_id, reads in list(self._reads.items()):
                if reads.height >= height:
                    continue  # read once this block was in the store (before its listener)
                if reads.height != height - 1 or reads.touched(written):
                    del self._reads[query_id]  # what they read changed, or may have
                else:
                    reads.height = height

    def reads_ahead(self, query_id: str, study: str) -> ChainReads | None:
        """The query's chain inputs read ahead, when provably those of the last committed
        height: every block from their reading to the engine's height was heard and left
        what they read (`_wrote`); else None. Kept until the answer lands (`landed`,
        `discard`): the receiver's checks use them too (`check_view`)."""
        with self._prepared_lock:
            reads = self._reads.get(query_id)
            held_at = -1 if reads is None else reads.height
        if reads is None or reads.study != study:
            return None
        if held_at < self.node.engine.height():
            return None  # a block committed whose writes were not heard yet
        return reads

    def _keep(self, query_id: str, reads: ChainReads) -> None:
        """Keep a query's reads ahead within `READS_AHEAD_MAX_ITEMS` (the oldest dropped
        first); reads larger than that alone are not kept. Under `_prepared_lock`."""
        self._reads.pop(query_id, None)
        if reads.size > READS_AHEAD_MAX_ITEMS:
            return
        held = sum(r.size for r in self._reads.values())
        for oldest in list(self._reads):
            if held + reads.size <= READS_AHEAD_MAX_ITEMS:
                break
            held -= self._reads.pop(oldest).size
        self._reads[query_id] = reads

    def check_view(self, query_id: str, study: str) -> StateView | None:
        """For the gateway's check of a co-answerer's partials (`study_partials.check`): the
        committed state as the query's reads ahead and its study's record read now give it,
        when those reads are provably current (`reads_ahead`), else None (the check reads
        the chain under its lock). The study's record is read first: the block that starts
        a query writes it; the reads, unchanged up to a height heard after that read, hold
        at that read's height too. A read neither made raises `Unread`."""
        if query_id not in self._reads:
            return None
        key = f"research/study/{study}".encode()
        with self.node.engine.read_view() as state:
            study_raw = state.get_raw(key)
        reads = self.reads_ahead(query_id, study)
        return None if reads is None else reads.view({key: study_raw})

    # -- 0. ahead of the start --------------------------------------------------------------
    def prepare(self, query_id: str, pending: Collection[str] = ()) -> int | None:
        """Evaluate a query approved here (`preparable`) but not yet running, so that its
        answer starts with the facts (the sealed digests' decryption is most of an answer's
        CPU): every enrolled patient this hospital holds now. Nothing is sent or audited; the
        running plan decides later which of them count where. Returns the patients read, or
        None when the query is not preparable (`pending`: as `preparable`'s)."""
        engine = self.node.engine
        record = queries.study_query(engine, query_id)
        if not preparable(record, self.org, pending):
            return None
        assert record is not None
        study_id = str(record["study"])
        study = queries.study(engine, study_id)
        if study is None or not study_open(study, decisions.now_ms()):
            return None
        q = parsed_query(record)
        allowed = set(study.get("categories") or [])
        categories = tuple(c for c in q.categories if c in allowed)
        with engine.read_view() as state:
            if self._app is None:  # no write listener: nothing read ahead could be trusted
                pids = sorted(counted_now(state, study_id, custodies_at(state, self.org)))
            else:
                # The plan's chain inputs too, kept with the facts: valid while no block
                # writes what they read (`_wrote`), from the height read under this view.
                recorder = Recorder(state)
                pids = read_plan_inputs(StateView(recorder), study_id, self.org)
                at = self._app.height
                reads = ChainReads(recorder.keys, recorder.scans, study_id, at)
                with self._prepared_lock:
                    self._keep(query_id, reads)
        # Before the reads: a write after them voids what they read of its patient.
        states = self.vault.own_states(pids)
        facts = Evaluator(self.vault, q, categories).facts(pids)
        with self._prepared_lock:
            self._prepared[query_id] = Prepared(
                evaluation_key(q, categories), states, facts, study_id
            )
        # The DPO's trace of a processing that may never run (review 12a, finding 4).
        log.info(
            "%s: query %s of study %s evaluated ahead for %d patients (kept in memory until "
            "it runs, at most %d s)",
            self.org,
            query_id,
            study_id,
            len(pids),
            PREPARED_MAX_AGE_S,
        )
        return len(pids)

    def forget(self, study: str, pids: set[str]) -> None:
        """Drop what was read ahead of these patients for the study's queries (they withdrew
        from it): not kept in memory while a query waits (review 12a, finding 2)."""
        with self._prepared_lock:
            for query_id in [q for q, r in self._reads.items() if r.study == study]:
                del self._reads[query_id]
            for prepared in self._prepared.values():
                if prepared.study == study:
                    for pid in pids:
                        prepared.states.pop(pid, None)
                        prepared.facts.pop(pid, None)

    def prepared_stale(self) -> list[str]:
        """Queries whose facts read ahead are older than `PREPARED_MAX_AGE_S`: the agent
        forgets them (a withdrawn or erased patient's facts are not kept while a query waits
        for approvals that may never come) and reads them afresh if still preparable."""
        limit = time.monotonic() - PREPARED_MAX_AGE_S
        with self._prepared_lock:
            return [qid for qid, p in self._prepared.items() if p.at < limit]

    def discard(self, query_id: str) -> None:
        """Forget a query's prepared evaluation (it will not run, or was answered)."""
        with self._prepared_lock:
            self._prepared.pop(query_id, None)
            self._reads.pop(query_id, None)

    def close(self) -> None:
        """Drop everything read ahead (its agent stopped). Its write listener stays on the
        app (none is ever removed), with nothing left to look at."""
        with self._prepared_lock:
            self._reads.clear()
            self._prepared.clear()

    def _take_prepared(self, plan: Plan) -> Prepared | None:
        """The query's prepared evaluation, if it still says what an evaluation now would."""
        with self._prepared_lock:
            prepared = self._prepared.pop(plan.query_id, None)
        if prepared is None or prepared.key != evaluation_key(plan.q, plan.categories):
            return None
        return prepared

    @staticmethod
    def _facts(
        evaluator: Evaluator, valid: set[str], prepared: Prepared | None, pids: list[str]
    ) -> dict[str, PatientFacts]:
        """`evaluator.facts(pids)`, those `valid` taken from the prepared evaluation."""
        if prepared is None or not valid:
            return evaluator.facts(pids)
        found = {p: f for p in pids if p in valid and (f := prepared.facts.get(p)) is not None}
        rest = [p for p in pids if p not in valid]
        return found | evaluator.facts(rest) if rest else found

    # -- 2..4 --------------------------------------------------------------------------------
    def answer(
        self, query_id: str, *, max_wait: float | None = None, wait: bool = True
    ) -> Answered | None:
        """Answer the query (see the module doc); None when there is nothing to answer.
        Raises NotAnswered when partials are still missing after `max_wait` seconds (default:
        until the deadline), TxRejected when the answer tx is refused. With `wait=False` the
        answer tx is only submitted (accepted by CheckTx): the caller follows it to its block
        (`tx`, `nonce`, `body` to send it again if lost) and calls `landed` once committed;
        the partials stay in the inbox until then."""
        started, cpu = time.perf_counter(), time.thread_time()  # wall, and this thread's CPU
        # Two senders: the shares with facts, and the empty messages (`_send_timed`).
        sending = ThreadPoolExecutor(2, thread_name_prefix=f"partials-{self.org}")
        timing: dict[str, float] = {}
        try:
            # The connections to the co-answerers open while it reads and evaluates.
            def early(receivers: list[str]) -> None:
                sending.submit(self._warm, timing, receivers)

            plan = self.plan(query_id, None if self.warm is None else early)
        except BaseException:
            sending.shutdown(wait=False)
            raise
        if plan is None:
            sending.shutdown(wait=False)
            self.inbox.forget(query_id)
            self.discard(query_id)  # ended, answered or closed: nothing read ahead is needed
            return None
        try:
            timing["read"] = time.perf_counter() - started
            timing["plan_ahead"] = float(plan.ahead)
            timing["read_cpu"] = time.thread_time() - cpu
            t, t_cpu = time.perf_counter(), time.thread_time()
            shares: dict[str, list[list[Any]]] = {o: [] for o in plan.answerers if o != self.org}
            evaluator = Evaluator(self.vault, plan.q, plan.categories)
            prepared = self._take_prepared(plan)
            valid = set() if prepared is None else prepared.valid(self.vault, list(plan.mine))
            # the share of the patients it answers for whose facts were read ahead
            timing["prepared"] = len(valid) / max(1, len(plan.mine))
            # The co-answerers' patients first: their shares leave (in a thread) while this
            # hospital evaluates its own, so that no co-answerer waits for its whole evaluation.
            # A held patient ("": counted by nobody) is not read at all.
            theirs = [pid for pid, answerer in plan.mine.items() if answerer in shares]
            facts = self._facts(evaluator, valid, prepared, theirs)
            for pid in theirs:
                if (mine := facts.get(pid)) is not None:  # none of its records: nothing to send
                    shares[plan.mine[pid]].append([pid, mine.to_obj()])
            timing["evaluate_shares"] = time.perf_counter() - t
            for earlier in self._sending.pop(query_id, ()):
                # A failed attempt's sends, marked once they end; their own failure is
                # theirs: this attempt sends what is not marked.
                with contextlib.suppress(Exception):
                    earlier.result()
            # An empty message carries no pid, so its reply returns none (`_returned`): the
            # tally needs only the shares' replies; the empty ones are awaited before the
            # answer is posted (a restart, seeing the answer, sends nothing more).
            full = {o: share for o, share in shares.items() if share}
            empty = {o: share for o, share in shares.items() if not share}
            sends = self._sending[query_id] = [
                sending.submit(self._send_timed, plan, full, timing, "send"),
                sending.submit(self._send_timed, plan, empty, timing, "send_empty"),
            ]
            ours = [pid for pid, answerer in plan.mine.items() if answerer == self.org]
            facts = self._facts(evaluator, valid, prepared, ours)
            own = {pid: facts.get(pid) or PatientFacts(matched={}) for pid in ours}
            timing["evaluate"] = time.perf_counter() - t
            timing["evaluate_cpu"] = time.thread_time() - t_cpu
            # What the tally needs but the partials: drawn while they arrive.
            t, t_cpu = time.perf_counter(), time.thread_time()
            sealing = self._sealing(plan)
            timing["seal"] = time.perf_counter() - t
        finally:
            sending.shutdown(wait=False)  # on a failure the sends go on; a retry waits for them
        # The co-answerers' messages arrive while its own sends are acknowledged.
        t = time.perf_counter()
        others = set(shares)
        patience = max(0.0, plan.deadline_ms / 1000 - time.time())
        if max_wait is not None:
            patience = min(patience, max_wait)
        missing = self.inbox.wait(query_id, others, patience)
        timing["wait"] = time.perf_counter() - t
        if missing:
            why = f"no partials yet from {', '.join(sorted(missing))}"
            undelivered = sorted(set(shares) - self.inbox.sent(query_id))
            if undelivered:  # its own sends first: a gateway down here stops every answer
                why = f"partials not delivered to {', '.join(undelivered)}; {why}"
            raise NotAnswered(f"{query_id}: {why}")
        t = time.perf_counter()
        sent = sends[0].result()  # the receivers' replies name the pids they did not keep
        timing["send_wait"] = time.perf_counter() - t
        t = time.perf_counter()
        for received in self.inbox.received(query_id).values():
            for pid, given in received.items():
                base = own.get(pid)
                own[pid] = given if base is None else base.merge(given, plan.q.value_of)
        disputed = self.inbox.dropped(query_id)  # check's: counted here by nobody
        returned = self.inbox.returned(query_id)  # sent, not kept by their receiver
        now_counted = self._counted(plan, own.keys(), returned)
        counted = [f for pid, f in own.items() if pid in now_counted and pid not in disputed]
        dropped = len(plan.held | (returned & now_counted))  # withdrawn since: no dispute
        noised = [c + n for c, n in zip(tally(plan.q, counted), sealing.noise, strict=True)]
        body = {
            "query": query_id,
            "cells": masks.masked(noised, sealing.mask),
            "patients": len(counted),
        }
        if sealing.commitment:
            body["noise_commitment"] = sealing.commitment
        if sealing.research_v3:
            body["dropped"] = dropped  # research v3; an older chain hears it from the log
        timing["tally"] = time.perf_counter() - t
        timing["tally_cpu"] = time.thread_time() - t_cpu  # seal, merge and tally
        t = time.perf_counter()
        sent |= sends[1].result()  # every co-answerer has its message before the answer posts
        del self._sending[query_id]
        timing["send_empty_wait"] = time.perf_counter() - t
        send_cpu = timing["send_cpu"] + timing["send_empty_cpu"]
        done = Answered(query_id, len(counted), sent, b"", timing, dropped, body)
        t, t_cpu = time.perf_counter(), time.thread_time()
        if not wait:
            submitted, done.nonce = self.node.wallet.submit_nonce(ANSWER, body)
            if not submitted.accepted:
                raise TxRejected(ANSWER, submitted.check.code, submitted.check.log, "check")
            done.tx, done.submitted = submitted.tx_id, time.perf_counter()
            timing["submit"] = done.submitted - t
            timing["cpu"] = time.thread_time() - cpu + send_cpu
            return done  # its block is awaited by the caller (`landed` once committed)
        done.tx = self.node.wallet.send(ANSWER, body).tx_id
        timing["commit"] = time.perf_counter() - t
        timing["cpu"] = time.thread_time() - cpu + send_cpu
        self.landed(done)
        return done

    def _counted(self, plan: Plan, pids: Collection[str], returned: set[str]) -> set[str]:
        """Those of `pids` (its own and the received) and `returned` enrolled now: read again
        at tally time, in one pass, so that a patient who withdrew (or asked for erasure)
        while the answer waited for its partials is not counted (review 12c, finding 2). From
        the query's reads ahead when its plan took them and they still hold (`reads_ahead`: no
        block since wrote an enrolment or an erasure request, every block heard), no lock."""
        wanted = set(pids) | returned
        reads = self.reads_ahead(plan.query_id, plan.study) if plan.ahead else None
        if reads is not None:
            with contextlib.suppress(Unread):
                return counted_now(reads.view(), plan.study, wanted)
        with self.node.engine.read_view() as state:
            return counted_now(state, plan.study, wanted)

    def landed(self, done: Answered) -> None:
        """The answer is committed: its partials are no longer needed, the audit journal may
        send its entries; its timing is logged."""
        self.inbox.forget(done.query)
        with self._prepared_lock:
            self._reads.pop(done.query, None)
        if any(done.sent.values()):  # its partials' entries were kept quiet (`_audit`)
            self.node.audit.quiet(0)
        log.info(
            "%s answered %s for %d patients, %d counted nowhere (sent partials of %s) in %s",
            self.org,
            done.query,
            done.patients,
            done.dropped,
            ", ".join(f"{n} to {o}" for o, n in sorted(done.sent.items())) or "none",
            ", ".join(f"{k} {v:.3f}s" for k, v in done.timing.items()),
        )

    def _sealing(self, plan: Plan) -> Sealing:
        """The noise and the pairwise mask of this hospital's answer: they depend on the
        committed query only, not on the facts. Noise (epsilon > 0): drawn from this
        hospital's deterministic signature over the query's committed seed, so a re-run adds
        the same and only an auditor shown the signature can redraw it; the answer carries
        the seed's commitment."""
        query_id = plan.query_id
        seed = answer_noise_seed(self.node.org_key.sign(noise_message(query_id, plan.noise_seed)))
        pairs = masks.seed_pairs(self.org, self.node.config.box_key(), plan.publics, plan.answerers)
        return Sealing(
            answer_noise(plan.q, seed),
            masks.mask(pairs, query_id, len(cells(plan.q))),
            noise_commitment(seed) if plan.q.epsilon_milli else b"",
            plan.research_v3,
        )

    def _warm(self, timing: dict[str, float], receivers: list[str]) -> None:
        """`warm` in the sending thread, before the sends: its wall time (`warm`)."""
        started = time.perf_counter()
        if self.warm is not None:
            self.warm(receivers)
        timing["warm"] = time.perf_counter() - started

    def _send_timed(
        self,
        plan: Plan,
        shares: dict[str, list[list[Any]]],
        timing: dict[str, float],
        name: str,
    ) -> dict[str, int]:
        """`_send` in its own thread, beside the evaluation: its wall time (`audit`, `name`)
        and its CPU (`name`_cpu, counted in the answer's `cpu`)."""
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._send(plan, shares, timing)
        finally:
            audit = timing.get("audit", 0.0) if any(shares.values()) else 0.0
            timing[name] = time.perf_counter() - started - audit
            timing[f"{name}_cpu"] = time.thread_time() - cpu

    def _send(
        self, plan: Plan, shares: dict[str, list[list[Any]]], timing: dict[str, float]
    ) -> dict[str, int]:
        """Each co-answerer its share, once (audited first), all at once; retried until the
        deadline."""
        done = self.inbox.sent(plan.query_id)
        todo = {o: share for o, share in shares.items() if o not in done}
        if any(todo.values()):  # empty messages: no patient, no entry
            started = time.perf_counter()
            self._audit(plan, [(pid, to) for to, share in todo.items() for pid, _ in share])
            timing["audit"] = time.perf_counter() - started
        pause = 0.2

        def one(receiver: str) -> str | None:
            try:
                reply = self.send(receiver, plan.query_id, todo[receiver])
            except Exception as exc:  # refused or unreachable: retried below
                log.warning("%s: partials of %s to %s: %s", self.org, plan.query_id, receiver, exc)
                return None
            self.inbox.mark_sent(plan.query_id, receiver, _returned(reply, todo[receiver]))
            return receiver

        while todo:
            with ThreadPoolExecutor(len(todo), thread_name_prefix="partials") as pool:
                for receiver in pool.map(one, sorted(todo)):
                    if receiver is not None:
                        del todo[receiver]
            if todo:
                if time.time() * 1000 + pause * 1000 >= plan.deadline_ms:
                    raise NotAnswered(
                        f"{plan.query_id}: partials not delivered to {', '.join(sorted(todo))}"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
        return {o: len(share) for o, share in shares.items()}

    def _audit(self, plan: Plan, sends: list[tuple[str, str]]) -> None:
        """One `export` entry per patient whose facts leave (`sends`: pid, receiver): purpose
        research, the study's enrolment as basis, the receiving hospital as `to` (access
        v3), no record id (no record leaves). Durable in the hospital's audit
        journal before anything is sent, as the API's reads are (the journal takes them to
        the chain in its next tx, and again after a crash); not waited on the chain, which
        would put a block on every query's path."""
        allowed = Decision(True, f"enrolment:{plan.study}", "")
        entries = [
            entry
            for pid, to in sends
            for entry in decisions.audit(
                decisions.Access(f"org:{self.org}", self.org, pid, "export", "research", to=to),
                allowed,
            )
        ]
        if not entries:
            return
        # Durable at once, one fsync for all; on the chain once the answer has its block (or
        # QUIET_S later): not signed and executed by every validator on the answers' path.
        self.node.audit.quiet(QUIET_S)
        self.node.audit.log(entries, wait=False)
