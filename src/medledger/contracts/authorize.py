"""authorize: the one decision on every access to a patient's record, and the basis it rests on.

    authorize(state, actor, pid, record_meta, purpose, at_ms) -> Decision(allowed, basis, reason)

Deny by default. An access is allowed only when a contract grants it, and the decision names
what granted it (`basis`), so that the access entry on the chain points to it:

    custodian           the actor's own hospital holds the record (treatment, emergency)
    consent:<id>        a consent to the actor's hospital, to the actor, or to a study
    referral:<id>       the actor's hospital receives the patient, within the window
    emergency:<id>      the actor's own break-the-glass opening, still running
    enrolment:<study>   the patient is enrolled in the study the access is for (research)
    patient             the patient's own key reading their own records (right of access)

Then the consortium's Cedar policies are asked (policies.py) and a `forbid` wins over any
basis. When denied, `reason` starts with a stable phrase a client can match, then details:
    unknown actor, actor revoked, invalid request, role, erased, no consent, consent revoked,
    consent contested, consent expired, consent not yet valid, other hospital, other purpose,
    other category,
    emergency without role, no emergency access, emergency expired, referral cancelled,
    referral outside window, not enrolled, enrolment withdrawn, study closed, policy forbid,
    policy error
(These phrases are the codes of `access.DENIAL_REASONS`: the chain keeps only the code.)
When several grants came close, the reason is that of the one that passed the most checks
(the most useful to the person denied), so a matrix of cases gives a predictable reason.

Cost: a handful of point reads and one short range read per possible grantee (indexes keyed
by pid then grantee), then one Cedar evaluation: independent of the number of consents.
It reads only the state and `at_ms`, so it is deterministic and replays identically.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from medledger.contracts import (
    consent,
    emergency,
    governance,
    identity,
    records,
    referral,
    research,
)
from medledger.contracts.categories import CATEGORY_SET, PURPOSE_ROLES, PURPOSES
from medledger.contracts.common import is_pid
from medledger.contracts.identity import Actor, resolve_actor
from medledger.contracts.patients import erasure_requested, patient_of_key
from medledger.contracts.policies import forbidding
from medledger.contracts.records import is_shredded
from medledger.contracts.research import get_study, study_open
from medledger.ledger.contract import Contract
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView


@dataclass(frozen=True)
class Decision:
    allowed: bool
    basis: str  # what allowed it ("" when denied)
    reason: str  # why it was denied ("" when allowed)

    def to_obj(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "basis": self.basis, "reason": self.reason}

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Decision:
        """A decision read back from the `authorize/check` query (see to_obj)."""
        return cls(bool(obj["allowed"]), str(obj["basis"]), str(obj["reason"]))


def _deny(reason: str) -> Decision:
    return Decision(False, "", reason)


def actor_from_ref(state: StateView, ref: str) -> Actor | None:
    """An actor named as `<org>` (the hospital itself) or `<org>/<practitioner>`."""
    org, _, practitioner = ref.partition("/")
    member = governance.member(state, org)
    if not practitioner:
        return None if member is None else Actor(org, None, ("organisation",), True)
    record = identity.practitioner(state, org, practitioner)
    if record is None:
        return None
    active = bool(record["active"]) and member is not None
    return Actor(org, practitioner, tuple(record["roles"]), active)


@dataclass
class _Closest:
    """The denial reason of the grant that came closest (most checks passed, then latest)."""

    rank: tuple[int, int] = (-1, -1)
    reason: str = ""

    def offer(self, passed: int, order: int, reason: str) -> None:
        if (passed, order) > self.rank:
            self.rank = (passed, order)
            self.reason = reason


def authorize(
    state: StateView,
    actor: bytes | Actor | str,
    pid: str,
    record_meta: Mapping[str, Any],
    purpose: str,
    at_ms: int,
) -> Decision:
    """May `actor` read this record of `pid` for `purpose` at time `at_ms`? See module doc.

    `actor` is a signing key (bytes), an `identity.Actor`, or a reference `<org>[/<id>]`.
    `record_meta` needs `custodian` and `category`; `type` (FHIR resource type) feeds the
    policies; `study` names the study a research access is for; `rid`, when given, must be
    this patient's record at that custodian in the index. Never raises on bad input:
    anything malformed is denied, with the reason.
    """
    # -- who, and is the request well formed ---------------------------------------------
    if not is_pid(pid):
        return _deny("invalid request: pid is 64 lowercase hex characters")
    if purpose not in PURPOSES:
        return _deny(f"invalid request: unknown purpose {purpose!r}")
    if not isinstance(at_ms, int) or isinstance(at_ms, bool):
        return _deny("invalid request: at_ms is an integer (ms)")
    if not isinstance(record_meta, Mapping):
        return _deny("invalid request: record_meta is a map")
    custodian = record_meta.get("custodian")
    category = record_meta.get("category")
    rtype = record_meta.get("type", "")
    study = record_meta.get("study")
    if not isinstance(custodian, str) or not custodian:
        return _deny("invalid request: record_meta.custodian is missing")
    if category not in CATEGORY_SET:
        return _deny(f"invalid request: unknown category {category!r}")
    assert isinstance(category, str)
    if not isinstance(rtype, str):
        rtype = ""
    if study is not None and not isinstance(study, str):
        return _deny("invalid request: record_meta.study is a study id")
    rid = record_meta.get("rid")
    if rid is not None:
        # When the record is named, its index entry must say the same (pid and custodian).
        entry = records.entry(state, rid) if isinstance(rid, str) else None
        if entry is None or entry["pid"] != pid or entry["custodian"] != custodian:
            return _deny(f"invalid request: {rid!r} is not this patient's record at {custodian}")

    who: Actor | None
    if isinstance(actor, Actor):
        who = actor
    elif isinstance(actor, bytes):
        who = resolve_actor(state, actor)
        if who is None and patient_of_key(state, actor) == pid:
            if is_shredded(state, custodian, pid):
                return _deny(f"erased: {custodian} destroyed this patient's keys")
            return Decision(True, "patient", "")
    elif isinstance(actor, str):
        who = actor_from_ref(state, actor)
    else:
        who = None
    if who is None:
        return _deny("unknown actor: not a hospital or practitioner key on this chain")
    if not who.active:
        return _deny("actor revoked: the practitioner or their hospital is no longer active")
    if not who.is_org and not PURPOSE_ROLES[purpose].intersection(who.roles):
        return _deny(f"role: {', '.join(who.roles)} may not act for {purpose}")

    # -- erasure ---------------------------------------------------------------------------
    if is_shredded(state, custodian, pid):
        return _deny(f"erased: {custodian} destroyed this patient's keys")
    request = erasure_requested(state, pid)
    if request is not None and who.org != custodian:
        return _deny(
            f"erased: erasure request {request}; only the custodian keeps records under retention"
        )

    basis = _basis(state, who, pid, custodian, category, purpose, study, at_ms)
    if isinstance(basis, _Closest):
        return _deny(basis.reason)

    # -- consortium policies: a forbid wins --------------------------------------------------
    kind, _, basis_id = basis.partition(":")
    principal = (
        ("Hospital", who.org) if who.is_org else ("Practitioner", f"{who.org}/{who.practitioner}")
    )
    context = {
        "org": who.org,
        "practitioner": who.practitioner or "",
        "roles": [r for r in who.roles if r != "organisation"],
        "custodian": custodian,
        "rtype": rtype,
        "basis": kind,
        "basis_id": basis_id,
        "at_ms": at_ms,
        "own": who.org == custodian,
    }
    forbidden = forbidding(state, principal, purpose, category, context)
    if forbidden is not None:
        return _deny(forbidden)
    return Decision(True, basis, "")


def _basis(
    state: StateView,
    who: Actor,
    pid: str,
    custodian: str,
    category: str,
    purpose: str,
    study: str | None,
    at_ms: int,
) -> str | _Closest:
    """The first grant that covers the access, or the closest one's denial reason."""
    closest = _Closest()
    if who.org == custodian:
        if purpose in ("treatment", "emergency"):
            return "custodian"
        closest.offer(0, 0, f"no consent: {purpose} use of {custodian}'s own records needs one")

    # Consents: to the hospital, to the practitioner, to the study the access is for.
    grantees = [f"org:{who.org}"]
    if not who.is_org:
        grantees.append(f"practitioner:{who.org}/{who.practitioner}")
    study_record = get_study(state, study) if study else None
    if (
        purpose == "research"
        and study_record is not None
        and who.org in (study_record["sponsor"], custodian)
    ):
        grantees.append(f"study:{study}")
    for grantee in grantees:
        for entry in consent.entries_for(state, pid, grantee):
            passed, why = consent.check(entry, custodian, category, purpose, at_ms)
            if why is None:
                return f"consent:{entry['id']}"
            closest.offer(passed, entry["id"], why)

    # Referrals to the actor's hospital.
    for entry in referral.entries_for(state, pid, who.org):
        passed, why = referral.check(state, entry, custodian, category, purpose, at_ms)
        if why is None:
            return f"referral:{entry['id']}"
        closest.offer(passed, entry["id"], why)

    if purpose == "emergency":
        found = _emergency(state, who, pid, at_ms, closest)
        if found is not None:
            return found
    if purpose == "research":
        found = _enrolment(
            state, who, pid, custodian, category, study, study_record, at_ms, closest
        )
        if found is not None:
            return found

    if not closest.reason:
        closest.reason = (
            f"no consent: nothing grants {who.org} access to this patient's {category} "
            f"for {purpose}"
        )
    return closest


def _emergency(state: StateView, who: Actor, pid: str, at_ms: int, closest: _Closest) -> str | None:
    if who.is_org or "emergency" not in who.roles:
        closest.offer(1, 0, "emergency without role: break-the-glass needs the emergency role")
        return None
    assert who.practitioner is not None
    openings = emergency.openings_of(state, pid, who.org, who.practitioner)
    if not openings:
        closest.offer(1, 0, f"no emergency access: {who.practitioner} opened none for this patient")
    for eid, opened, expires, flagged in openings:
        if opened <= at_ms < expires:
            return f"emergency:{eid}"
        if at_ms >= expires:
            how = "was ended by its review (flagged)" if flagged else "has ended"
            closest.offer(2, eid, f"emergency expired: emergency access {eid} {how}")
        else:
            closest.offer(2, eid, f"no emergency access: emergency access {eid} opened later")
    return None


def _enrolment(
    state: StateView,
    who: Actor,
    pid: str,
    custodian: str,
    category: str,
    study: str | None,
    record: dict[str, Any] | None,
    at_ms: int,
    closest: _Closest,
) -> str | None:
    if not study:
        closest.offer(0, 0, "no consent: a research access names its study (record_meta.study)")
        return None
    if record is None:
        closest.offer(0, 0, f"not enrolled: there is no study {study!r}")
        return None
    if who.org not in (record["sponsor"], custodian):
        closest.offer(
            1, 0, f"other hospital: study {study} is run by {record['sponsor']}, not {who.org}"
        )
        return None
    if category not in record["categories"]:
        cats = ", ".join(record["categories"])
        closest.offer(2, 0, f"other category: study {study} covers {cats}, not {category}")
        return None
    enrolment = research.enrolment_of(state, study, pid)
    if enrolment is None:
        closest.offer(3, 0, f"not enrolled: the patient is not enrolled in {study}")
        return None
    if enrolment["status"] == "withdrawn" and at_ms >= enrolment["withdrawn"]:
        closest.offer(3, 0, f"enrolment withdrawn: the patient withdrew from {study}")
        return None
    if at_ms < enrolment["since"]:
        closest.offer(3, 0, f"not enrolled: the patient enrolled in {study} later")
        return None
    if not study_open(record, at_ms):
        closest.offer(3, 0, f"study closed: {study}")
        return None
    return f"enrolment:{study}"


def meta_epoch(state: StateView, pid: str, at_ms: int) -> int:
    """The patient's metadata epoch at `at_ms`: how many of their entitlements have ended.

    Counted: consents revoked or past their end, enrolments withdrawn (each withdrawal) or
    in a study closed or past its end, referrals cancelled or past their window, emergency
    openings past their end. It never decreases (an ended entitlement stays ended), and only
    state and time enter it, so every replica computes the same. Custodians seal the
    patient's index metadata under keys of this epoch (indexing.py), and the gateway seals a
    hospital the keys of the current epoch only while `authorize` still grants it: a
    hospital whose entitlement ended cannot open what is registered after.
    """
    ended = 0
    for c in consent.index_of(state, pid):
        end = int(c.get("end_ms") or 0)
        if int(c.get("revoked_ms") or 0) or (end and end <= at_ms):
            ended += 1
    for study_id in research.studies_of(state, pid):
        enrolment = research.enrolment_of(state, study_id, pid) or {}
        ended += sum(1 for h in enrolment.get("history", []) if h[1] == "withdrawn")
        study = get_study(state, study_id)
        if enrolment.get("status") == "enrolled" and (
            study is None or not study_open(study, at_ms)
        ):
            ended += 1
    for r in referral.index_of(state, pid):
        end = int(r.get("end_ms") or 0)
        if r.get("status") == "cancelled" or (end and end <= at_ms):
            ended += 1
    for e in emergency.index_of(state, pid):
        if int(e.get("expires") or 0) <= at_ms:
            ended += 1
    return ended


def q_epoch(state: StateView, args: dict[str, Any]) -> int:
    """`authorize/epoch {pid, at_ms}` -> the patient's metadata epoch (see `meta_epoch`)."""
    pid, at_ms = args.get("pid"), args.get("at_ms")
    if not is_pid(pid):
        raise TxError(Code.INVALID_BODY, "authorize/epoch needs pid (64 lowercase hex)")
    if not isinstance(at_ms, int) or isinstance(at_ms, bool):
        raise TxError(Code.INVALID_BODY, "authorize/epoch needs at_ms (integer ms)")
    assert isinstance(pid, str)
    return meta_epoch(state, pid, at_ms)


def q_check(state: StateView, args: dict[str, Any]) -> dict[str, Any]:
    """`authorize/check {key | actor, pid, purpose, meta, at_ms}` -> the decision."""
    return _checked(state, args)


#: Decisions one `authorize/check_many` may ask for.
MAX_CHECKS = 500


def q_check_many(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """`authorize/check_many {checks: [<authorize/check's args>, ...]}` -> the decisions, in
    order, read from one state: what ingestion asks for each new unit's disclosures (a
    hospital and a category per record), in one query instead of one each. The state is
    read once per key and range (`_ReadOnce`): the decisions about one patient read the same
    members, consents and referrals."""
    checks = args.get("checks")
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise TxError(Code.INVALID_BODY, "authorize/check_many needs checks (a list of maps)")
    if len(checks) > MAX_CHECKS:
        raise TxError(
            Code.INVALID_BODY, f"authorize/check_many: at most {MAX_CHECKS} checks at once"
        )
    view = _ReadOnce(state)
    return [_checked(view, check) for check in checks]


def _checked(state: StateView, args: dict[str, Any]) -> dict[str, Any]:
    key, ref = args.get("key"), args.get("actor")
    actor: bytes | str
    if isinstance(key, bytes):
        actor = key
    elif isinstance(ref, str):
        actor = ref
    else:
        raise TxError(Code.INVALID_BODY, "authorize/check needs key (bytes) or actor (org[/id])")
    at_ms = args.get("at_ms")
    if not isinstance(at_ms, int) or isinstance(at_ms, bool):
        raise TxError(Code.INVALID_BODY, "authorize/check needs at_ms (integer ms)")
    meta = args.get("meta")
    if not isinstance(meta, dict):
        raise TxError(Code.INVALID_BODY, "authorize/check needs meta (custodian, category, ...)")
    decision = authorize(state, actor, str(args.get("pid")), meta, str(args.get("purpose")), at_ms)
    return decision.to_obj()


class _ReadOnce(StateView):
    """A read-only view of `parent` that reads each key and each range once (a query's many
    decisions over one state)."""

    def __init__(self, parent: StateView) -> None:
        super().__init__(parent)
        self._values: dict[bytes, bytes | None] = {}
        self._ranges: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def get_raw(self, key: bytes) -> bytes | None:
        if key not in self._values:
            self._values[key] = self.parent.get_raw(key)
        return self._values[key]

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        if prefix not in self._ranges:
            self._ranges[prefix] = list(self.parent.scan_raw(prefix))
        return iter(self._ranges[prefix])

    def put_raw(self, key: bytes, value: bytes | None) -> None:
        raise TypeError("a query does not write")


CONTRACTS = [
    Contract(
        name="authorize",
        version=1,
        messages={},
        queries={
            "authorize/check": q_check,
            "authorize/check_many": q_check_many,
            "authorize/epoch": q_epoch,
        },
    )
]
