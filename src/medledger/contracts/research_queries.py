"""Research contract v2: federated study queries, their approvals, answers and results.

A researcher of a study's sponsor submits a query document (`study_query`: a cohort and the
statistics wanted; no code, no patient data) under the open study; the chain keeps its
canonical body and hash. The sponsor's DPO attests the ethics committee's decision (the
study's `ethics_ref` and the decision's hash) and, when the consortium parameter
`study_dpo_approval` is 1, every other member's DPO approves too: each member is a potential
custodian and answers. The last approval starts the query: the contract fixes the answerers
(every member then, sorted), the reference date for ages, the deadline
(`study_answer_ttl_ms`), the smallest published cell (`study_min_cell`), and spends the
query's epsilon from the study's privacy budget (refused if it would go negative).

Each answerer's node posts its answer vector masked with pairwise masks that cancel in the
sum (the node's share: `medledger.node`), noised by itself when epsilon > 0 (with a
commitment to its noise seed, `study_query.answer_noise`). When the last answer lands, the
contract sums the vectors mod 2^64, reads the sums as signed integers and publishes
`study_query.finish` of them: suppression and derived statistics. Past the deadline without
every answer, end_block marks the query `incomplete` and names the missing answerers.

v1 chains keep v1 (its `research.register` has no budget); a vote activates v2. In v3 an
answer also says how many enrolled patients the answerer counted nowhere (`dropped`,
0..MAX_PATIENTS: held by a link too young, or whose counting hospital its replica computed
otherwise than a co-custodian's, `node/study_partials.py`), kept in its `answers` entry and
summed in the query's `dropped` when done; a v2 chain refuses the field. A v3 query's start
also fixes `links_by` (its start less `study_link_settle_ms`), so that a vote on the
parameter while it runs changes no counting hospital; v2 records have none. New consortia
start on v4: v3's messages, and `research.release` only from a hospital holding custody of
every member (`research.release_v4`, in the module `research`).

State (prefix `research/`, besides v1's):
    research/query/<study>/q<seq:04d>   a query: document, approvals, answerers, answers, result
    research/qsum/<study>/q<seq:04d>    the running sum of the answers (mod 2^64), until done
    research/qnum/<n:012d>              query number n (chain-wide) -> query id, for deadlines
    research/qdue/<time>/<n>            deadlines of running queries (policies.DueQueue)
    research/qcount                     queries submitted on the chain
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

from medledger.contracts import governance, study_query
from medledger.contracts.identity import acting_org
from medledger.contracts.patients import check_hash
from medledger.contracts.policies import DueQueue, param
from medledger.contracts.research import CONTRACTS as V1
from medledger.contracts.research import (
    Register,
    Release,
    get_study,
    register,
    release_v4,
    study_open,
)
from medledger.ledger.contract import Context, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

MAX_BUDGET_MILLI = 100 * study_query.SCALE  # a study's total epsilon: at most 100
MAX_QUERIES = 9999  # per study: q0001..q9999
MAX_PATIENTS = 10_000_000  # what one answerer says it answered for
MOD = 1 << 64
ROLES = ("ethics", "custodian")
DUE = DueQueue("research/qdue/")


@dataclass
class RegisterV2(Register):
    """`research.register` with the study's privacy budget: its total epsilon x 1000."""

    privacy_budget_milli: int = 0


@dataclass
class QuerySubmit:
    study: str
    query: dict[str, Any]
    note_hash: bytes = b""  # SHA-256 of the sponsor's own notes on the query, kept off chain


@dataclass
class QueryApprove:
    query: str
    role: str  # "ethics" (the sponsor's DPO) or "custodian" (any member's DPO)
    ethics_ref: str = ""
    decision_hash: bytes = b""


@dataclass
class QueryAnswer:
    query: str
    cells: list[int]  # masked, each 0..2^64-1, in study_query.cells order
    patients: int  # enrolled patients this hospital answered for
    noise_commitment: bytes = b""  # study_query.noise_commitment: required when epsilon > 0


@dataclass
class QueryAnswerV3(QueryAnswer):
    """v3: the answer says how many enrolled patients this hospital counted nowhere."""

    dropped: int = 0


def noise_seed_of(tx_id: bytes) -> bytes:
    """The query's public seed, from its submit tx id: what each answerer's noise is bound to."""
    return hashlib.sha256(b"medledger/study-noise\x00" + tx_id).digest()


def get_query(state: StateView, query_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"research/query/{query_id}")
    return found


def parsed_query(record: dict[str, Any]) -> study_query.StudyQuery:
    """The stored query as the answerers evaluate it: age_on fixed once it runs."""
    q = study_query.parse(record["doc"])
    return q.with_age_on(record["age_on"]) if record.get("age_on") else q


def _require_query(ctx: Context, query_id: str) -> dict[str, Any]:
    if not isinstance(query_id, str) or query_id.count("/") != 1:
        raise TxError(Code.INVALID_BODY, "field query: a query id <study>/q<seq>")
    record = get_query(ctx.state, query_id)
    if record is None:
        raise TxError(Code.NOT_FOUND, f"no query {query_id!r}")
    return record


def _budget(study: dict[str, Any]) -> tuple[int, int]:
    """(total, spent) of a study's privacy budget, milli-epsilon (a v1 study has none)."""
    return int(study.get("privacy_budget_milli", 0)), int(study.get("privacy_spent_milli", 0))


def _check_budget(study: dict[str, Any], epsilon_milli: int) -> None:
    total, spent = _budget(study)
    if spent + epsilon_milli > total:
        raise TxError(
            Code.REFUSED,
            f"field query.epsilon: {study_query.decimal_text(epsilon_milli)} is over what is "
            f"left of study {study['id']}'s privacy budget "
            f"({study_query.decimal_text(total - spent)} of {study_query.decimal_text(total)})",
        )


def _check_floor(state: StateView, epsilon_milli: int) -> None:
    """The consortium's least epsilon (`study_min_epsilon_milli`), at submission and again
    when the query starts (a vote may have raised it meanwhile)."""
    floor = governance.params(state)["study_min_epsilon_milli"]
    if epsilon_milli < floor:
        raise TxError(
            Code.REFUSED,
            f"field query.epsilon: {study_query.decimal_text(epsilon_milli)} is under the "
            f"consortium's floor {study_query.decimal_text(floor)} (study_min_epsilon_milli): "
            "without noise, suppressed cells can be read back",
        )


def register_v2(ctx: Context, msg: RegisterV2) -> None:
    if not 0 <= msg.privacy_budget_milli <= MAX_BUDGET_MILLI:
        raise TxError(
            Code.INVALID_BODY, f"field privacy_budget_milli: 0..{MAX_BUDGET_MILLI} (epsilon x 1000)"
        )
    cap = governance.params(ctx.state)["study_max_budget_milli"]
    if msg.privacy_budget_milli > cap:
        raise TxError(
            Code.REFUSED,
            f"field privacy_budget_milli: over the consortium's cap {cap} "
            "(study_max_budget_milli): a larger budget lets repeated queries average the noise",
        )
    base = {f.name: getattr(msg, f.name) for f in dataclasses.fields(Register)}
    register(ctx, Register(**base))
    study = get_study(ctx.state, msg.study)
    assert study is not None
    study.update(privacy_budget_milli=msg.privacy_budget_milli, privacy_spent_milli=0, queries=0)
    ctx.state.put(f"research/study/{msg.study}", study)


def query_submit(ctx: Context, msg: QuerySubmit) -> None:
    org, practitioner = acting_org(ctx, role="researcher")
    study = get_study(ctx.state, msg.study) if isinstance(msg.study, str) else None
    if study is None:
        raise TxError(Code.NOT_FOUND, f"no study {msg.study!r}")
    if study["sponsor"] != org:
        raise TxError(Code.UNAUTHORIZED, f"only the sponsor {study['sponsor']} submits queries")
    if not study_open(study, ctx.time_ms):
        raise TxError(Code.REFUSED, f"study {msg.study} is closed")
    try:
        q = study_query.parse(msg.query)
    except TxError as refused:  # its fields are inside the body's `query`
        where = refused.message.removeprefix("field ")
        if not where.startswith("query:"):
            where = f"query.{where}"
        raise TxError(refused.code, f"field {where}") from None
    outside = [c for c in q.categories if c not in study["categories"]]
    if outside:
        raise TxError(
            Code.REFUSED,
            f"field query.categories: {outside[0]!r} is not among study {msg.study}'s "
            f"categories ({', '.join(study['categories'])}): its patients consented to those",
        )
    if msg.note_hash:
        check_hash(msg.note_hash, "note_hash")
    _check_floor(ctx.state, q.epsilon_milli)
    _check_budget(study, q.epsilon_milli)
    seq = int(study.get("queries", 0)) + 1
    if seq > MAX_QUERIES:
        raise TxError(Code.REFUSED, f"study {msg.study} has had its {MAX_QUERIES} queries")
    number = int(ctx.state.get("research/qcount") or 0) + 1
    query_id = f"{msg.study}/q{seq:04d}"
    study["queries"] = seq
    ctx.state.put(f"research/study/{msg.study}", study)
    ctx.state.put("research/qcount", number)
    ctx.state.put(f"research/qnum/{number:012d}", query_id)
    ctx.state.put(
        f"research/query/{query_id}",
        {
            "id": query_id,
            "study": msg.study,
            "number": number,
            "doc": study_query.to_obj(q),
            "hash": study_query.query_hash(q),
            "epsilon_milli": q.epsilon_milli,
            "note_hash": msg.note_hash,
            "sponsor": org,
            "by": practitioner or "",
            "time": ctx.time_ms,
            "tx": ctx.tx_id,
            "status": "submitted",
            # Fixed now, so that a vote meanwhile does not change what this query needs.
            "custodians_approve": governance.params(ctx.state)["study_dpo_approval"] == 1,
            "approvals": [],
            "answerers": [],
            "answers": {},
        },
    )
    ctx.emit("study.query_submitted", query=query_id, study=msg.study, sponsor=org)


def awaited_approvals(state: StateView, record: dict[str, Any]) -> list[str]:
    """The approvals a submitted query still waits for: `ethics:<sponsor>`, `custodian:<org>`."""
    approved = {a["org"] for a in record["approvals"]}
    missing = [] if record["sponsor"] in approved else [f"ethics:{record['sponsor']}"]
    if record["custodians_approve"]:
        missing += [
            f"custodian:{m['org']}" for m in governance.members(state) if m["org"] not in approved
        ]
    return missing


def query_approve(ctx: Context, msg: QueryApprove) -> None:
    _approve(ctx, msg, fix_links=False)


def query_approve_v3(ctx: Context, msg: QueryApprove) -> None:
    """v3: the query's start also fixes `links_by` (see `_start`)."""
    _approve(ctx, msg, fix_links=True)


def _approve(ctx: Context, msg: QueryApprove, *, fix_links: bool) -> None:
    org, practitioner = acting_org(ctx, role="dpo")
    if practitioner is None:  # an organisation key holds every role: it names no DPO
        raise TxError(Code.UNAUTHORIZED, "an approval is signed with a DPO's practitioner key")
    record = _require_query(ctx, msg.query)
    if record["status"] != "submitted":
        raise TxError(Code.CONFLICT, f"query {msg.query} is already {record['status']}")
    study = get_study(ctx.state, record["study"])
    assert study is not None
    if not study_open(study, ctx.time_ms):
        raise TxError(Code.REFUSED, f"study {record['study']} is closed")
    if (org, practitioner) == (record["sponsor"], record["by"]):
        raise TxError(Code.UNAUTHORIZED, "the query's submitter may not approve it")
    if msg.role not in ROLES:
        raise TxError(Code.INVALID_BODY, f"field role: one of {', '.join(ROLES)}")
    if msg.decision_hash or msg.role == "ethics":
        check_hash(msg.decision_hash, "decision_hash")
    if msg.role == "ethics":
        if org != record["sponsor"]:
            raise TxError(
                Code.UNAUTHORIZED, f"the ethics approval is the sponsor {record['sponsor']}'s DPO's"
            )
        if msg.ethics_ref != study["ethics_ref"]:
            raise TxError(Code.REFUSED, "field ethics_ref: not the study's ethics reference")
    else:
        if msg.ethics_ref:
            raise TxError(Code.INVALID_BODY, "field ethics_ref: only the ethics approval has one")
        if org == record["sponsor"]:
            raise TxError(Code.CONFLICT, "the sponsor approves with role ethics")
        if not record["custodians_approve"]:
            raise TxError(Code.CONFLICT, "this query needs no custodian approval")
    if any(a["org"] == org for a in record["approvals"]):
        raise TxError(Code.CONFLICT, f"{org} already approved query {msg.query}")
    record["approvals"].append(
        {
            "role": msg.role,
            "org": org,
            "by": practitioner,
            "decision_hash": msg.decision_hash,
            "time": ctx.time_ms,
            "tx": ctx.tx_id,
        }
    )
    ctx.emit("study.query_approved", query=msg.query, role=msg.role, org=org)
    if not awaited_approvals(ctx.state, record):
        _start(ctx, record, study, fix_links=fix_links)
    ctx.state.put(f"research/query/{msg.query}", record)


def _start(ctx: Context, record: dict[str, Any], study: dict[str, Any], *, fix_links: bool) -> None:
    """The last approval: answerers, reference date, deadline, k fixed; the budget spent.
    v3 (`fix_links`) also fixes `links_by`, the latest filing time of a link that counts
    (`node/study_partials.settled_by`): a vote on `study_link_settle_ms` while the query
    runs would otherwise make answerers at different heights choose different counting
    hospitals. A time, like `started`: it tells nothing about a patient."""
    _check_floor(ctx.state, record["epsilon_milli"])
    _check_budget(study, record["epsilon_milli"])
    study["privacy_spent_milli"] = _budget(study)[1] + record["epsilon_milli"]
    ctx.state.put(f"research/study/{record['study']}", study)
    settings = governance.params(ctx.state)
    day = datetime.datetime.fromtimestamp(ctx.time_ms // 1000, datetime.UTC).date().isoformat()
    members = governance.members(ctx.state)
    record.update(
        status="running",
        answerers=sorted(m["org"] for m in members),
        # The pairwise masks are agreed from these: a key changed meanwhile (update_member, a
        # rebinding) would leave masks in the sum, and a wrong result would look right.
        box_keys={m["org"]: m["box_key"] for m in members},
        age_on=record["doc"].get("age_on") or day,
        noise_seed=noise_seed_of(record["tx"]),
        deadline_ms=ctx.time_ms + settings["study_answer_ttl_ms"],
        # The study's own minimum cohort binds its queries' cells too.
        k=max(settings["study_min_cell"], int(study["min_cohort"])),
        started=ctx.time_ms,
    )
    if fix_links:
        record["links_by"] = ctx.time_ms - param(ctx.state, "study_link_settle_ms")
    n_cells = len(study_query.cells(study_query.parse(record["doc"])))
    ctx.state.put(f"research/qsum/{record['id']}", [0] * n_cells)
    DUE.add(ctx.state, record["deadline_ms"], record["number"])
    ctx.emit(
        "study.query_running",
        query=record["id"],
        study=record["study"],
        answerers=",".join(record["answerers"]),
        deadline_ms=record["deadline_ms"],
    )


def query_answer_v3(ctx: Context, msg: QueryAnswerV3) -> None:
    if not 0 <= msg.dropped <= MAX_PATIENTS:
        raise TxError(Code.INVALID_BODY, f"field dropped: 0..{MAX_PATIENTS}")
    query_answer(ctx, msg, {"dropped": msg.dropped})


def query_answer(ctx: Context, msg: QueryAnswer, extra: dict[str, Any] | None = None) -> None:
    org, practitioner = acting_org(ctx)
    if practitioner is not None:
        raise TxError(Code.UNAUTHORIZED, "an answer is signed by the hospital's organisation key")
    record = _require_query(ctx, msg.query)
    if record["status"] != "running":
        raise TxError(Code.CONFLICT, f"query {msg.query} is {record['status']}, not running")
    if ctx.time_ms >= record["deadline_ms"]:
        raise TxError(Code.EXPIRED, f"query {msg.query}'s answers were due by its deadline")
    study = get_study(ctx.state, record["study"])
    if study is None or not study_open(study, ctx.time_ms):  # the enrolments' consent ended
        raise TxError(Code.REFUSED, f"study {record['study']} is closed: no more answers")
    if org not in record["answerers"]:
        raise TxError(Code.UNAUTHORIZED, f"{org} is not an answerer of query {msg.query}")
    if org in record["answers"]:
        raise TxError(Code.CONFLICT, f"{org} already answered query {msg.query}")
    member = governance.member(ctx.state, org)
    if "box_keys" in record and (member is None or member["box_key"] != record["box_keys"][org]):
        raise TxError(
            Code.CONFLICT,
            f"{org}'s box key changed since query {msg.query} started: its masks cannot cancel",
        )
    sums: list[int] = ctx.state.get(f"research/qsum/{msg.query}")
    if len(msg.cells) != len(sums):
        raise TxError(Code.INVALID_BODY, f"field cells: {len(sums)} cells, in the query's order")
    for i, cell in enumerate(msg.cells):
        if not 0 <= cell < MOD:
            raise TxError(Code.INVALID_BODY, f"field cells[{i}]: an integer in 0..2^64-1")
    if not 0 <= msg.patients <= MAX_PATIENTS:
        raise TxError(Code.INVALID_BODY, f"field patients: 0..{MAX_PATIENTS}")
    if record["epsilon_milli"]:
        check_hash(msg.noise_commitment, "noise_commitment")
    elif msg.noise_commitment:
        raise TxError(Code.INVALID_BODY, "field noise_commitment: the query has no noise")
    record["answers"][org] = {
        "patients": msg.patients,
        "noise_commitment": msg.noise_commitment,
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
        **(extra or {}),
    }
    sums = [(a + b) % MOD for a, b in zip(sums, msg.cells, strict=True)]
    ctx.emit("study.query_answered", query=msg.query, org=org, patients=msg.patients)
    if len(record["answers"]) < len(record["answerers"]):
        ctx.state.put(f"research/qsum/{msg.query}", sums)
        ctx.state.put(f"research/query/{msg.query}", record)
        return
    totals = [s - MOD if s >= MOD // 2 else s for s in sums]  # masks cancelled: signed totals
    record.update(
        status="done",
        result=study_query.finish(parsed_query(record), totals, record["k"]),
        done=ctx.time_ms,
    )
    if extra is not None:  # v3: the enrolled patients counted nowhere, as the answerers said
        record["dropped"] = sum(int(a.get("dropped") or 0) for a in record["answers"].values())
    ctx.state.delete(f"research/qsum/{msg.query}")
    DUE.remove(ctx.state, record["deadline_ms"], record["number"])
    ctx.state.put(f"research/query/{msg.query}", record)
    ctx.emit(
        "study.query_done",
        query=msg.query,
        study=record["study"],
        patients=sum(a["patients"] for a in record["answers"].values()),
    )


def end_block(ctx: Context) -> None:
    """Queries past their deadline without every answer: incomplete, the missing named."""
    for number in DUE.pop_due(ctx.state, ctx.time_ms):
        query_id = ctx.state.get(f"research/qnum/{number:012d}")
        record = get_query(ctx.state, str(query_id))
        if record is None or record["status"] != "running":
            continue
        missing = [o for o in record["answerers"] if o not in record["answers"]]
        record.update(status="incomplete", missing=missing, incomplete=ctx.time_ms)
        ctx.state.delete(f"research/qsum/{query_id}")
        ctx.state.put(f"research/query/{query_id}", record)
        ctx.emit("study.query_incomplete", query=str(query_id), missing=",".join(missing))


# -- queries -------------------------------------------------------------------------------


def q_query(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    """A query whole: document, hash, approvals (and while submitted, those `awaited`),
    answerers, answers, deadline, result or the `missing` answerers."""
    record = get_query(state, str(args.get("query")))
    if record is not None and record["status"] == "submitted":
        record["awaited"] = awaited_approvals(state, record)
    return record


def q_queries(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """A study's queries, in order, without their documents and results; with their
    approvals, which a node's study agent reads at every step (`StudyAgent.approved`)."""
    keep = (
        "id",
        "status",
        "hash",
        "epsilon_milli",
        "sponsor",
        "time",
        "deadline_ms",
        "approvals",
        "custodians_approve",
    )
    return [
        {k: r[k] for k in keep if k in r}
        for _, r in state.scan(f"research/query/{args.get('study')}/")
    ]


def q_budget(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    """A study's privacy budget: total, spent, and what each query that ran spent."""
    study = get_study(state, str(args.get("study")))
    if study is None:
        return None
    total, spent = _budget(study)
    return {
        "study": study["id"],
        "total_milli": total,
        "spent_milli": spent,
        "remaining_milli": total - spent,
        "queries": [
            {"query": r["id"], "epsilon_milli": r["epsilon_milli"], "status": r["status"]}
            for _, r in state.scan(f"research/query/{study['id']}/")
            if r["status"] != "submitted"
        ],
    }


(_V1,) = V1
_V2 = dataclasses.replace(
    _V1,
    version=2,
    messages={
        **_V1.messages,
        "research.register": Message("research.register", RegisterV2, register_v2),
        "research.query_submit": Message("research.query_submit", QuerySubmit, query_submit),
        "research.query_approve": Message("research.query_approve", QueryApprove, query_approve),
        "research.query_answer": Message("research.query_answer", QueryAnswer, query_answer),
    },
    queries={
        **_V1.queries,
        "research/query": q_query,
        "research/queries": q_queries,
        "research/budget": q_budget,
    },
    end_block=end_block,
)
_V3 = dataclasses.replace(
    _V2,
    version=3,
    messages={
        **_V2.messages,
        "research.query_approve": Message("research.query_approve", QueryApprove, query_approve_v3),
        "research.query_answer": Message("research.query_answer", QueryAnswerV3, query_answer_v3),
    },
)
#: v4 (session 15): `research.release` only from a hospital holding custody of every member
#: (`research.release_v4`); v1 to v3 took it from any member's researcher or organisation key.
_V4 = dataclasses.replace(
    _V3,
    version=4,
    messages={
        **_V3.messages,
        "research.release": Message("research.release", Release, release_v4),
    },
)
CONTRACTS = [_V2, _V3, _V4]
