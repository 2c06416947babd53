"""Research (decentralised science): studies, dynamic consent, and traceable dataset releases.

A sponsor hospital registers a study: the hash of its protocol, its ethics approval reference,
the data categories it needs and its minimum cohort size. Its title is no part of the chain:
"Heart failure outcomes" next to the pids that enrol would tell every member what those
patients suffer from. The sponsor keeps the title (`medledger.node.notes`, with a random salt) and
posts only `title_hash`, so a title shown elsewhere can be checked; a non-empty `title` is
refused. The study id is public: the sponsor must choose one that names no condition (the
portal shows it). Free-text `ethics_ref` is at most `MAX_ETHICS_REF` characters.

Patients enrol and withdraw at any time (their own key, or on their behalf a custodian of the
patient with the evidence's hash and who took the request: `patients.acting_for_patient`). A
sponsor enrolling, in the patient's name, a patient it treats into its own study gives itself
research access: like a self-grant (consent.py) it is told at once to the patient
(`study.self_enrolled`, with the pid) and to each other custodian's DPO (`study.notify`).
Every enrolment or withdrawal a hospital signs in the patient's name is notified like any
on-behalf act (`patients.announce_on_behalf`: `patient.acted_for`, and per other custodian
`study.notify` for an enrolment, `patient.notify` for a withdrawal). A
custodian then releases a pseudonymised dataset by posting its hash, its counts and the list
of its members' *study tokens*:

    token = SHA-256("medledger/study-member" 0x00 study 0x00 pid)

The chain already knows which pids enrolled in which study (the enrolment txs carry them), so
a token reveals nothing new; but the chain can check, token by token, that every member is
enrolled and has not withdrawn, and refuse the release otherwise, or when the cohort is under
the study's minimum (a small cohort re-identifies people). The release keeps the Merkle root
of the sorted tokens, so any result can later be traced to exactly the data it used.

Who releases (v4, session 15): the data a release covers comes from a custodian, so from v4
the signer's hospital must hold custody of every member's patient (records' custody index,
not ended by its `records.shredded`), else `UNAUTHORIZED` naming the member's index, never
the pid. The sponsor is no exception: it holds nothing it did not receive from a custodian,
and `holders()` lists it already (`study:<study>`). v1 to v3 took a release from any
member's researcher or organisation key: a hospital holding nothing of a patient was then
listed as holding her data (`release:<study>/<seq>`), on her portal and in her erasure.

State (prefix `research/`):
    research/study/<study>                     the study
    research/enrol/<study>/<pid>               enrolment: status, history, releases
    research/token/<study>/<token hex>         token -> pid (release checks)
    research/pid/<pid>/<study>                 a patient's studies (erasure, portal)
    research/release/<study>/<seq:06d>         a release: custodian, dataset hash, counts, root
"""

from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from medledger.contracts.categories import ALL, check_categories
from medledger.contracts.common import check_id, check_pid
from medledger.contracts.identity import acting_org
from medledger.contracts.patients import (
    acting_for_patient,
    announce_on_behalf,
    check_hash,
    erasure_requested,
)
from medledger.contracts.records import custody_since
from medledger.ledger import codec, merkle
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

MAX_MEMBERS = 12_000  # 32 bytes each: a release fits well inside one tx
MAX_COUNTS = 16
MAX_ETHICS_REF = 128


@dataclass
class Register:
    study: str
    protocol_hash: bytes
    ethics_ref: str
    categories: list[str]
    min_cohort: int
    title_hash: bytes = b""  # SHA-256 of the title document the sponsor keeps off chain
    end_ms: int = 0
    title: str = ""  # refused when given: no free-text title on the chain


@dataclass
class _PatientChoice:
    """A patient's opt-in or opt-out: their key, or a custodian on their behalf."""

    study: str
    pid: str
    evidence_hash: bytes = b""
    taken_by: str = ""  # who took the request (see patients.acting_for_patient)
    channel: str = ""


@dataclass
class Enrol(_PatientChoice):
    """The patient opts in to a study (`research.enrol`)."""


@dataclass
class Withdraw(_PatientChoice):
    """The patient opts out of a study (`research.withdraw`)."""


@dataclass
class Release:
    study: str
    dataset_hash: bytes
    members: list[bytes]
    counts: dict[str, int]


@dataclass
class Close:
    study: str


def member_token(study: str, pid: str) -> bytes:
    return hashlib.sha256(
        b"medledger/study-member\x00" + study.encode() + b"\x00" + pid.encode()
    ).digest()


def get_study(state: StateView, study: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"research/study/{study}")
    return found


def study_open(study: dict[str, Any], at_ms: int) -> bool:
    return bool(study["status"] == "open" and (study["end_ms"] == 0 or at_ms < study["end_ms"]))


def _require_study(ctx: Context, study_id: str, *, open_: bool = True) -> dict[str, Any]:
    study = get_study(ctx.state, study_id)
    if study is None:
        raise TxError(Code.NOT_FOUND, f"no study {study_id!r}")
    if open_ and not study_open(study, ctx.time_ms):
        raise TxError(Code.REFUSED, f"study {study_id} is closed")
    return study


def register(ctx: Context, msg: Register) -> None:
    sponsor, practitioner = acting_org(ctx, role="researcher")
    check_id(msg.study, "study")
    if ctx.state.has(f"research/study/{msg.study}"):
        raise TxError(Code.CONFLICT, f"study {msg.study!r} already exists")
    check_hash(msg.protocol_hash, "protocol_hash")
    if not 0 < len(msg.ethics_ref) <= MAX_ETHICS_REF:
        raise TxError(
            Code.INVALID_BODY,
            f"field ethics_ref: the approval reference, 1..{MAX_ETHICS_REF} characters",
        )
    categories = check_categories(msg.categories)
    if categories == [ALL]:
        raise TxError(Code.INVALID_BODY, "field categories: a study names the data it needs")
    if msg.min_cohort < 1:
        raise TxError(Code.INVALID_BODY, "field min_cohort: at least 1")
    if msg.title:
        raise TxError(
            Code.INVALID_BODY,
            "field title: a study's title stays with its sponsor, off chain; post title_hash",
        )
    if msg.title_hash:
        check_hash(msg.title_hash, "title_hash")
    if msg.end_ms and msg.end_ms <= ctx.time_ms:
        raise TxError(Code.INVALID_BODY, "field end_ms: already past")
    ctx.state.put(
        f"research/study/{msg.study}",
        {
            "id": msg.study,
            "sponsor": sponsor,
            "by": practitioner or "",
            "protocol_hash": msg.protocol_hash,
            "ethics_ref": msg.ethics_ref,
            "categories": categories,
            "min_cohort": msg.min_cohort,
            "title_hash": msg.title_hash,
            "end_ms": msg.end_ms,
            "status": "open",
            "enrolled": 0,
            "releases": 0,
            "time": ctx.time_ms,
            "tx": ctx.tx_id,
        },
    )
    ctx.emit("study.registered", study=msg.study, sponsor=sponsor)


def enrol(ctx: Context, msg: Enrol) -> None:
    study = _require_study(ctx, msg.study)
    check_pid(msg.pid)
    who = acting_for_patient(ctx, msg.pid, msg.evidence_hash, msg.taken_by, msg.channel)
    if erasure_requested(ctx.state, msg.pid) is not None:
        raise TxError(Code.REFUSED, "the patient asked for erasure")
    key = f"research/enrol/{msg.study}/{msg.pid}"
    current = ctx.state.get(key)
    if current is not None and current["status"] == "enrolled":
        raise TxError(Code.CONFLICT, f"already enrolled in {msg.study}")
    record = current or {"pid": msg.pid, "study": msg.study, "history": [], "releases": []}
    record.update(status="enrolled", since=ctx.time_ms, by=who.to_obj())
    record["history"].append([ctx.time_ms, "enrolled", who.by])
    ctx.state.put(key, record)
    ctx.state.put(f"research/token/{msg.study}/{member_token(msg.study, msg.pid).hex()}", msg.pid)
    ctx.state.put(f"research/pid/{msg.pid}/{msg.study}", 1)
    study["enrolled"] += 1
    ctx.state.put(f"research/study/{msg.study}", study)
    ctx.emit("study.enrolled", study=msg.study, pid=msg.pid, by=who.by)
    if who.on_behalf and study["sponsor"] == who.org:
        ctx.emit(
            "study.self_enrolled",
            study=msg.study,
            pid=msg.pid,
            org=who.org,
            practitioner=who.practitioner,
            channel=who.channel,
        )
    # The patient and each other custodian's DPO (study.notify) hear of any on-behalf enrolment.
    announce_on_behalf(ctx, msg.pid, who, "research.enrol", notify="study.notify", study=msg.study)


def withdraw(ctx: Context, msg: Withdraw) -> None:
    study = _require_study(ctx, msg.study, open_=False)
    check_pid(msg.pid)
    who = acting_for_patient(ctx, msg.pid, msg.evidence_hash, msg.taken_by, msg.channel)
    key = f"research/enrol/{msg.study}/{msg.pid}"
    current = ctx.state.get(key)
    if current is None or current["status"] != "enrolled":
        raise TxError(Code.CONFLICT, f"not enrolled in {msg.study}")
    current.update(status="withdrawn", withdrawn=ctx.time_ms, by=who.to_obj())
    current["history"].append([ctx.time_ms, "withdrawn", who.by])
    ctx.state.put(key, current)
    study["enrolled"] -= 1
    ctx.state.put(f"research/study/{msg.study}", study)
    ctx.emit("study.withdrawn", study=msg.study, pid=msg.pid, by=who.by)
    announce_on_behalf(ctx, msg.pid, who, "research.withdraw", study=msg.study)


def release(ctx: Context, msg: Release) -> None:
    """`research.release` of v1 to v3: any researcher (or organisation key) of a member."""
    _release(ctx, msg, custodians_only=False)


def release_v4(ctx: Context, msg: Release) -> None:
    """`research.release` from v4: the signer's hospital holds custody of every member."""
    _release(ctx, msg, custodians_only=True)


def _release(ctx: Context, msg: Release, *, custodians_only: bool) -> None:
    custodian, practitioner = acting_org(ctx, role="researcher")
    study = _require_study(ctx, msg.study)
    check_hash(msg.dataset_hash, "dataset_hash")
    n = len(msg.members)
    if n > MAX_MEMBERS:
        raise TxError(Code.INVALID_BODY, f"field members: at most {MAX_MEMBERS} per release")
    for i, token in enumerate(msg.members):
        if len(token) != 32:
            raise TxError(Code.INVALID_BODY, f"field members[{i}]: a 32-byte study token")
    if len(set(msg.members)) != n:
        raise TxError(Code.INVALID_BODY, "field members: a member is listed twice")
    if not 0 < len(msg.counts) <= MAX_COUNTS:
        raise TxError(Code.INVALID_BODY, f"field counts: 1..{MAX_COUNTS} counts")
    for name, value in msg.counts.items():
        check_id(name, f"counts.{name}")
        if value < 0:
            raise TxError(Code.INVALID_BODY, f"field counts.{name}: must not be negative")
    if msg.counts.get("patients") != n:
        raise TxError(Code.INVALID_BODY, "field counts.patients: must equal the number of members")
    if n < study["min_cohort"]:
        raise TxError(
            Code.REFUSED,
            f"cohort of {n} is under study {msg.study}'s minimum of {study['min_cohort']}",
        )
    enrolments: list[tuple[str, dict[str, Any]]] = []
    for i, token in enumerate(msg.members):
        pid = ctx.state.get(f"research/token/{msg.study}/{token.hex()}")
        if pid is None:
            raise TxError(Code.REFUSED, f"members[{i}]: not enrolled in study {msg.study}")
        enrolment = ctx.state.get(f"research/enrol/{msg.study}/{pid}")
        if enrolment["status"] != "enrolled":
            raise TxError(Code.REFUSED, f"members[{i}]: the patient withdrew from {msg.study}")
        if erasure_requested(ctx.state, pid) is not None:
            raise TxError(Code.REFUSED, f"members[{i}]: the patient asked for erasure")
        # v4: the data a release covers comes from a custodian; a hospital holding nothing of
        # the patient would otherwise be listed as holding her data (holders, her portal).
        if custodians_only and custody_since(ctx.state, pid, custodian) is None:
            raise TxError(
                Code.UNAUTHORIZED,
                f"members[{i}]: {custodian} holds no custody of this member's patient in "
                f"the records index; only a custodian releases her data from study {msg.study}",
            )
        enrolments.append((pid, enrolment))
    seq = int(study["releases"]) + 1
    study["releases"] = seq
    ctx.state.put(f"research/study/{msg.study}", study)
    ctx.state.put(
        f"research/release/{msg.study}/{seq:06d}",
        {
            "seq": seq,
            "study": msg.study,
            "custodian": custodian,
            "by": practitioner or "",
            "dataset_hash": msg.dataset_hash,
            "counts": dict(sorted(msg.counts.items())),
            "members": n,
            "members_root": merkle.root(sorted(msg.members)),
            "time": ctx.time_ms,
            "tx": ctx.tx_id,
        },
    )
    for pid, enrolment in enrolments:
        enrolment["releases"].append([seq, custodian])
        ctx.state.put(f"research/enrol/{msg.study}/{pid}", enrolment)
    ctx.emit("study.released", study=msg.study, release=seq, custodian=custodian, patients=n)


def close(ctx: Context, msg: Close) -> None:
    org, _ = acting_org(ctx, role="researcher")
    study = _require_study(ctx, msg.study, open_=False)
    if study["sponsor"] != org:
        raise TxError(Code.UNAUTHORIZED, f"only the sponsor {study['sponsor']} closes the study")
    if study["status"] != "open":
        raise TxError(Code.CONFLICT, f"study {msg.study} is already closed")
    study.update(status="closed", closed=ctx.time_ms)
    ctx.state.put(f"research/study/{msg.study}", study)
    ctx.emit("study.closed", study=msg.study)


def enrolment_of(state: StateView, study: str, pid: str) -> dict[str, Any] | None:
    """A patient's enrolment in a study (status, history, releases), or None."""
    found: dict[str, Any] | None = state.get(f"research/enrol/{study}/{pid}")
    return found


def enrolments_of(state: StateView, study: str, pids: Container[str]) -> dict[str, dict[str, Any]]:
    """`enrolment_of` for many patients: one pass over the study's enrolments, decoding only
    those of `pids`."""
    prefix = f"research/enrol/{study}/".encode()
    found: dict[str, dict[str, Any]] = {}
    for key, raw in state.scan_raw(prefix):
        pid = key[len(prefix) :].decode()
        if pid in pids:
            found[pid] = codec.decode_trusted(raw)
    return found


def studies_of(state: StateView, pid: str) -> list[str]:
    """The studies a patient was ever enrolled in, in key order."""
    return [key.rsplit("/", 1)[1] for key, _ in state.scan(f"research/pid/{pid}/")]


def holders(state: StateView, pid: str) -> dict[str, list[str]]:
    """Hospitals that received this patient's data through a study: sponsor and releasers."""
    found: dict[str, list[str]] = {}
    for key, _ in state.scan(f"research/pid/{pid}/"):
        study_id = key.rsplit("/", 1)[1]
        enrolment = state.get(f"research/enrol/{study_id}/{pid}")
        if not enrolment or not enrolment["releases"]:
            continue
        study = get_study(state, study_id)
        if study is not None:
            found.setdefault(study["sponsor"], []).append(f"study:{study_id}")
        for seq, custodian in enrolment["releases"]:
            found.setdefault(custodian, []).append(f"release:{study_id}/{seq}")
    return found


# -- queries -------------------------------------------------------------------------------


def q_study(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    return get_study(state, str(args.get("study")))


def q_studies(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for _, s in state.scan("research/study/")]


def q_enrolment(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(
        f"research/enrol/{args.get('study')}/{args.get('pid')}"
    )
    return found


def q_of_patient(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    pid = str(args.get("pid"))
    found = []
    for key, _ in state.scan(f"research/pid/{pid}/"):
        enrolment = state.get(f"research/enrol/{key.rsplit('/', 1)[1]}/{pid}")
        if enrolment is not None:
            found.append(enrolment)
    return found


def q_releases(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for _, r in state.scan(f"research/release/{args.get('study')}/")]


def q_token(state: StateView, args: dict[str, Any]) -> bytes:
    study, pid = args.get("study"), args.get("pid")
    if not isinstance(study, str) or not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "research/token needs study and pid")
    return member_token(study, pid)


CONTRACTS = [
    Contract(
        name="research",
        version=1,
        messages={
            "research.register": Message("research.register", Register, register),
            "research.enrol": Message("research.enrol", Enrol, enrol),
            "research.withdraw": Message("research.withdraw", Withdraw, withdraw),
            "research.release": Message("research.release", Release, release),
            "research.close": Message("research.close", Close, close),
        },
        queries={
            "research/study": q_study,
            "research/studies": q_studies,
            "research/enrolment": q_enrolment,
            "research/of_patient": q_of_patient,
            "research/releases": q_releases,
            "research/token": q_token,
        },
    )
]
