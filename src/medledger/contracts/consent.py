"""Consent: a patient grants a hospital, a practitioner or a study access to categories of data.

A consent says who (grantee), what (categories, or `*`), why (purpose), when (period), and
whose records (custodian scope: one hospital's, or `*` for any). It is signed by the patient's
own key, or on the patient's behalf by a hospital that is a custodian of the patient, with the
evidence's hash and who took the request (`taken_by`, `channel`): the rule is
`patients.acting_for_patient`. A member that never treated the patient can grant nothing.

Notices and contests: every consent a hospital grants in the patient's name, to anyone, is
notified at once (`patients.announce_on_behalf`): `patient.acted_for` (the patient's portal
and stream) and one `consent.notify` per OTHER custodian of the patient (to its DPO's queue,
like `emergency.notify`); a grant to itself (`org:<itself>`, one of its practitioners, or a
study it sponsors) also emits `consent.self_granted`. A grant to an accomplice is as
dangerous as one to itself, so any such consent may be contested by an active DPO of another
custodian *whose custody began before the consent was granted* (`records.custody_since`: a
hospital that made itself a custodian afterwards cannot suspend a consent it was not there
for) with a reason code from CONTEST_REASONS and the hash of their written note: from then on
the consent is `contested` and `authorize` denies with "consent contested", until the
patient's own key confirms it (`consent.confirm`; after a confirmation it can no longer be
contested) or it is revoked. A consent the patient signed with their own key is never
contested.

Grantees:
    org:<org>                     every practitioner of that hospital (with a role for the purpose)
    practitioner:<org>/<id>       that practitioner only
    study:<study>                 a registered study; research consents go only to studies

Revocation: by the patient's key; by the hospital that recorded the consent (its
organisation key, or a practitioner with a role that takes a patient's request,
`patients.REQUEST_ROLES`); or on the patient's behalf by the same rule as a grant (a
custodian, evidence, who took it). A hospital's revocation is notified like a grant.
Revocation is not retroactive: an access made while the consent held stays lawful, so
`authorize` at an earlier time still allows it (audits replay decisions at their time). Its
`reason` sits beside the pid for ever, so it is a code from `REVOKE_REASONS` (or empty),
never free text.

`authorize` must stay O(log n) with millions of consents: it reads one short key range per
grantee it could match, `consent/by/<pid>/<grantee>/`, whose values carry everything the
decision needs (no second read).

State (prefix `consent/`):
    consent/seq                               last consent id
    consent/id/<id:012d>                      the consent, with who signed it, its contest,
                                              confirmation and revocation
    consent/by/<pid>/<grantee key>/<id:012d>  what authorize reads (grantee key: '/' -> ':')
    consent/to/<grantee key>/<id:012d>        pid: what a grantee's sync agent follows
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medledger.contracts import identity
from medledger.contracts.categories import (
    check_categories,
    check_purpose,
    covers,
)
from medledger.contracts.common import check_id, check_pid
from medledger.contracts.governance import is_member
from medledger.contracts.identity import acting_org, resolve_actor
from medledger.contracts.patients import (
    REQUEST_ROLES,
    ActingFor,
    acting_for_patient,
    announce_on_behalf,
    check_hash,
    erasure_requested,
    patient_of_key,
    request_taker,
)
from medledger.contracts.records import custody_since
from medledger.contracts.research import get_study
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

#: Why a DPO contests a self-grant (codes: the chain holds no free text about a patient).
CONTEST_REASONS = ("no-care-relationship", "evidence-doubtful", "patient-denies", "other")
REVOKE_REASONS = ("patient-request", "entered-in-error", "superseded", "other")


@dataclass
class Grant:
    pid: str
    grantee: str
    categories: list[str]
    purpose: str
    start_ms: int
    end_ms: int = 0  # 0: until revoked
    custodian: str = "*"
    evidence_hash: bytes = b""
    taken_by: str = ""  # the practitioner who took the request (organisation key signing)
    channel: str = ""  # "desk" (default) or "portal": see patients.py


@dataclass
class Revoke:
    id: int
    evidence_hash: bytes = b""
    reason: str = ""
    taken_by: str = ""
    channel: str = ""


@dataclass
class Contest:
    """An earlier custodian's DPO contests a consent a hospital granted in the patient's name."""

    id: int
    reason: str  # a code from CONTEST_REASONS
    evidence_hash: bytes  # SHA-256 of the DPO's written note, kept off chain


@dataclass
class Confirm:
    """The patient's own key confirms a consent signed on their behalf."""

    id: int


@dataclass
class RequestAccess:
    """A hospital (or one of its practitioners) asks the patient for a consent."""

    pid: str
    categories: list[str]
    purpose: str
    reason_hash: bytes = b""  # SHA-256 of the written request kept off chain


def grantee_key(grantee: str) -> str:
    """The grantee as one key segment (ids never contain ':', so this is reversible)."""
    return grantee.replace("/", ":")


def grantee_org(state: StateView, grantee: str) -> str | None:
    """The hospital that receives data under this grantee (a study's is its sponsor)."""
    kind, _, rest = grantee.partition(":")
    if kind == "org":
        return rest
    if kind == "practitioner":
        return rest.replace(":", "/").split("/", 1)[0]
    if kind == "study":
        study = get_study(state, rest)
        return None if study is None else str(study["sponsor"])
    return None


def _check_grantee(state: StateView, grantee: str) -> str:
    kind, _, rest = grantee.partition(":")
    if kind == "org":
        check_id(rest, "grantee")
        if not is_member(state, rest):
            raise TxError(Code.NOT_FOUND, f"field grantee: {rest!r} is not a member hospital")
    elif kind == "practitioner":
        org, _, practitioner = rest.partition("/")
        check_id(org, "grantee")
        check_id(practitioner, "grantee")
        record = identity.practitioner(state, org, practitioner)
        if record is None or not record["active"]:
            raise TxError(Code.NOT_FOUND, f"field grantee: no active practitioner {rest!r}")
    elif kind == "study":
        check_id(rest, "grantee")
        if get_study(state, rest) is None:
            raise TxError(Code.NOT_FOUND, f"field grantee: no study {rest!r}")
    else:
        raise TxError(
            Code.INVALID_BODY,
            "field grantee: org:<org>, practitioner:<org>/<id> or study:<study>",
        )
    return kind


def grant(ctx: Context, msg: Grant) -> None:
    check_pid(msg.pid)
    who = acting_for_patient(ctx, msg.pid, msg.evidence_hash, msg.taken_by, msg.channel)
    kind = _check_grantee(ctx.state, msg.grantee)
    purpose = check_purpose(msg.purpose)
    if (kind == "study") != (purpose == "research"):
        raise TxError(
            Code.INVALID_BODY,
            "field purpose: research consents go to a study, and a study only gets research",
        )
    categories = check_categories(msg.categories)
    if msg.custodian != "*":
        check_id(msg.custodian, "custodian")
        if not is_member(ctx.state, msg.custodian):
            raise TxError(Code.NOT_FOUND, f"field custodian: {msg.custodian!r} is not a member")
    if msg.start_ms < 0:
        raise TxError(Code.INVALID_BODY, "field start_ms: must not be negative")
    if msg.end_ms and msg.end_ms <= msg.start_ms:
        raise TxError(Code.INVALID_BODY, "field end_ms: must be after start_ms (or 0: no end)")
    if msg.end_ms and msg.end_ms <= ctx.time_ms:
        raise TxError(Code.INVALID_BODY, "field end_ms: the period is already over")
    if erasure_requested(ctx.state, msg.pid) is not None:
        raise TxError(Code.REFUSED, "the patient asked for erasure")
    cid = int(ctx.state.get("consent/seq") or 0) + 1
    ctx.state.put("consent/seq", cid)
    record = {
        "id": cid,
        "pid": msg.pid,
        "grantee": msg.grantee,
        "categories": categories,
        "purpose": purpose,
        "start_ms": msg.start_ms,
        "end_ms": msg.end_ms,
        "custodian": msg.custodian,
        "status": "active",
        "signed": who.to_obj(),
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
    }
    self_grant = who.on_behalf and grantee_org(ctx.state, msg.grantee) == who.org
    if self_grant:
        record["self_granted"] = True
    gkey = grantee_key(msg.grantee)
    ctx.state.put(f"consent/id/{cid:012d}", record)
    ctx.state.put(f"consent/by/{msg.pid}/{gkey}/{cid:012d}", _index_value(record))
    ctx.state.put(f"consent/to/{gkey}/{cid:012d}", msg.pid)
    ctx.emit(
        "consent.granted",
        id=cid,
        pid=msg.pid,
        grantee=msg.grantee,
        purpose=purpose,
        by=who.by,
    )
    if self_grant:
        ctx.emit(
            "consent.self_granted",
            id=cid,
            pid=msg.pid,
            org=who.org,
            practitioner=who.practitioner,
            channel=who.channel,
            grantee=msg.grantee,
        )
    # The patient and each other custodian's DPO hear of it; those DPOs may contest it.
    announce_on_behalf(ctx, msg.pid, who, "consent.grant", notify="consent.notify", id=cid)


def _index_value(record: dict[str, Any]) -> dict[str, Any]:
    value = {
        "id": record["id"],
        "categories": record["categories"],
        "purpose": record["purpose"],
        "start_ms": record["start_ms"],
        "end_ms": record["end_ms"],
        "custodian": record["custodian"],
        "revoked_ms": record.get("revoked", {}).get("time", 0),
    }
    if "contest" in record:
        # Suspended from the contest until the patient's key confirms it (0: not yet).
        value["contested_ms"] = record["contest"]["time"]
        value["confirmed_ms"] = (record.get("confirmed") or {}).get("time", 0)
    return value


def get_consent(state: StateView, cid: int) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"consent/id/{cid:012d}")
    return found


def revoke(ctx: Context, msg: Revoke) -> None:
    record = get_consent(ctx.state, msg.id)
    if record is None:
        raise TxError(Code.NOT_FOUND, f"no consent {msg.id}")
    if record["status"] not in ("active", "contested"):
        raise TxError(Code.CONFLICT, f"consent {msg.id} is already {record['status']}")
    if msg.reason and msg.reason not in REVOKE_REASONS:
        raise TxError(
            Code.INVALID_BODY,
            f"field reason: empty or one of {', '.join(REVOKE_REASONS)} (no free text on chain)",
        )
    pid = record["pid"]
    who: ActingFor
    if patient_of_key(ctx.state, ctx.signer) is None and not msg.evidence_hash:
        # The hospital that recorded the consent may withdraw its own record (a mistake, a
        # paper revocation it holds); any other hospital needs the patient's evidence.
        org, practitioner = acting_org(ctx)
        if record["signed"]["org"] != org:
            raise TxError(
                Code.UNAUTHORIZED,
                "only the patient, the recording hospital, or a hospital with the patient's "
                "evidence (evidence_hash) may revoke this consent",
            )
        if msg.channel not in ("", "desk"):
            raise TxError(
                Code.INVALID_BODY,
                "field channel: the recording hospital withdraws its own record at the desk",
            )
        taker = ""
        if practitioner is not None or msg.taken_by:  # checked like any request taken
            taker, roles = request_taker(ctx.state, org, practitioner, msg.taken_by)
            if not REQUEST_ROLES.intersection(roles):
                raise TxError(
                    Code.UNAUTHORIZED,
                    f"practitioner {org}/{taker} lacks a role allowed to take a "
                    f"patient's request ({', '.join(sorted(REQUEST_ROLES))})",
                )
        who = ActingFor("hospital", org, taker, b"", "recorder")
    else:
        who = acting_for_patient(ctx, pid, msg.evidence_hash, msg.taken_by, msg.channel)
    record["status"] = "revoked"
    record["revoked"] = {"time": ctx.time_ms, "reason": msg.reason, "tx": ctx.tx_id, **who.to_obj()}
    gkey = grantee_key(record["grantee"])
    ctx.state.put(f"consent/id/{msg.id:012d}", record)
    ctx.state.put(f"consent/by/{pid}/{gkey}/{msg.id:012d}", _index_value(record))
    ctx.emit("consent.revoked", id=msg.id, pid=pid, grantee=record["grantee"], by=who.by)
    announce_on_behalf(ctx, pid, who, "consent.revoke", id=msg.id)


def contest(ctx: Context, msg: Contest) -> None:
    record = get_consent(ctx.state, msg.id)
    if record is None:
        raise TxError(Code.NOT_FOUND, f"no consent {msg.id}")
    pid = record["pid"]
    actor = resolve_actor(ctx.state, ctx.signer)
    if actor is None or not actor.active or actor.is_org or "dpo" not in actor.roles:
        raise TxError(
            Code.UNAUTHORIZED, "a contest is signed by an active DPO of another custodian"
        )
    if record["signed"]["by"] != "hospital":
        raise TxError(
            Code.REFUSED,
            f"consent {msg.id} was signed with the patient's own key, not by a hospital on "
            "their behalf",
        )
    if actor.org == record["signed"]["org"]:
        raise TxError(Code.UNAUTHORIZED, "the granting hospital does not contest its own consent")
    since = custody_since(ctx.state, pid, actor.org)
    if since is None:
        raise TxError(
            Code.UNAUTHORIZED,
            f"not a custodian of this patient: {actor.org} holds none of their care records",
        )
    if since >= record["time"]:
        raise TxError(
            Code.UNAUTHORIZED,
            f"{actor.org}'s custody of this patient began after consent {msg.id} was granted: "
            "only earlier custodians contest it",
        )
    if msg.reason not in CONTEST_REASONS:
        raise TxError(Code.INVALID_BODY, f"field reason: one of {', '.join(CONTEST_REASONS)}")
    check_hash(msg.evidence_hash, "evidence_hash")
    if record["status"] != "active":
        raise TxError(Code.CONFLICT, f"consent {msg.id} is already {record['status']}")
    if record.get("confirmed"):
        raise TxError(Code.CONFLICT, f"the patient confirmed consent {msg.id} with their own key")
    record["status"] = "contested"
    record["contest"] = {
        "org": actor.org,
        "practitioner": actor.practitioner,
        "reason": msg.reason,
        "evidence_hash": msg.evidence_hash,
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
    }
    _store(ctx, record)
    ctx.emit(
        "consent.contested",
        id=msg.id,
        pid=pid,
        custodian=actor.org,
        grantee=record["grantee"],
        reason=msg.reason,
    )


def confirm(ctx: Context, msg: Confirm) -> None:
    record = get_consent(ctx.state, msg.id)
    if record is None:
        raise TxError(Code.NOT_FOUND, f"no consent {msg.id}")
    pid = record["pid"]
    if patient_of_key(ctx.state, ctx.signer) != pid:
        raise TxError(Code.UNAUTHORIZED, "only the patient's own bound key confirms a consent")
    if record["signed"]["by"] != "hospital":
        raise TxError(Code.CONFLICT, f"consent {msg.id} was signed with the patient's own key")
    if record["status"] not in ("active", "contested"):
        raise TxError(Code.CONFLICT, f"consent {msg.id} is already {record['status']}")
    if record.get("confirmed"):
        raise TxError(Code.CONFLICT, f"consent {msg.id} is already confirmed")
    record["status"] = "active"
    record["confirmed"] = {"time": ctx.time_ms, "tx": ctx.tx_id}
    _store(ctx, record)
    ctx.emit("consent.confirmed", id=msg.id, pid=pid, grantee=record["grantee"])


def _store(ctx: Context, record: dict[str, Any]) -> None:
    cid = record["id"]
    ctx.state.put(f"consent/id/{cid:012d}", record)
    ctx.state.put(
        f"consent/by/{record['pid']}/{grantee_key(record['grantee'])}/{cid:012d}",
        _index_value(record),
    )


# -- what authorize asks --------------------------------------------------------------------


def check(
    entry: dict[str, Any], custodian: str, category: str, purpose: str, at_ms: int
) -> tuple[int, str | None]:
    """(checks passed, None) if this consent covers the access, else (checks passed, why not).

    The count lets authorize report the reason of the consent that came closest.
    """
    cid = entry["id"]
    if entry["custodian"] != "*" and entry["custodian"] != custodian:
        return 0, (
            f"other hospital: consent {cid} covers records held by {entry['custodian']}, "
            f"not {custodian}"
        )
    if entry["purpose"] != purpose:
        return 1, f"other purpose: consent {cid} is for {entry['purpose']}, not {purpose}"
    if not covers(entry["categories"], category):
        cats = ", ".join(entry["categories"])
        return 2, f"other category: consent {cid} covers {cats}, not {category}"
    revoked = entry["revoked_ms"]
    if revoked and at_ms >= revoked:
        return 3, f"consent revoked: consent {cid} was revoked"
    contested, confirmed = entry.get("contested_ms", 0), entry.get("confirmed_ms", 0)
    if contested and at_ms >= contested and not (confirmed and at_ms >= confirmed):
        return 3, (
            f"consent contested: consent {cid} is suspended since another custodian's DPO "
            "contested it (the patient's own key may confirm it)"
        )
    if at_ms < entry["start_ms"]:
        return 4, f"consent not yet valid: consent {cid} starts later"
    if entry["end_ms"] and at_ms >= entry["end_ms"]:
        return 4, f"consent expired: consent {cid} ended"
    return 5, None


def entries_for(state: StateView, pid: str, grantee: str) -> list[dict[str, Any]]:
    """The index entries of one grantee for one patient: one short range read."""
    return [v for _, v in state.scan(f"consent/by/{pid}/{grantee_key(grantee)}/")]


def index_of(state: StateView, pid: str) -> list[dict[str, Any]]:
    """Every index entry of the patient's consents (what authorize and meta_epoch read)."""
    return [v for _, v in state.scan(f"consent/by/{pid}/")]


def holders(state: StateView, pid: str) -> dict[str, list[str]]:
    """Hospitals a consent may have let copy this patient's data (their sync agents prefetch)."""
    found: dict[str, list[str]] = {}
    for key, entry in state.scan(f"consent/by/{pid}/"):
        gkey = key.split("/")[3]
        org = grantee_org(state, gkey)
        if org is not None:
            found.setdefault(org, []).append(f"consent:{entry['id']}")
    return found


# -- queries -------------------------------------------------------------------------------


def q_get(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    cid = args.get("id")
    if not isinstance(cid, int) or isinstance(cid, bool):
        raise TxError(Code.INVALID_BODY, "consent/get needs an integer id")
    return get_consent(state, cid)


def q_list(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """A patient's consents (optionally one grantee's), oldest first."""
    pid = args.get("pid")
    if not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "consent/list needs pid")
    grantee = args.get("grantee")
    prefix = f"consent/by/{pid}/" + (f"{grantee_key(grantee)}/" if isinstance(grantee, str) else "")
    ids = sorted(int(v["id"]) for _, v in state.scan(prefix))
    found = [get_consent(state, i) for i in ids]
    return [c for c in found if c is not None]


def q_granted_to(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Consents given to one grantee, oldest first (what its sync agent may prefetch)."""
    grantee = args.get("grantee")
    if not isinstance(grantee, str):
        raise TxError(Code.INVALID_BODY, "consent/granted_to needs grantee")
    found = []
    for key, _ in state.scan(f"consent/to/{grantee_key(grantee)}/"):
        record = get_consent(state, int(key.rsplit("/", 1)[1]))
        if record is not None:
            found.append(record)
    return found


def request_access(ctx: Context, msg: RequestAccess) -> None:
    """Record the request where the patient's portal finds it; it decides nothing by itself."""
    org, practitioner = acting_org(ctx)
    check_pid(msg.pid)
    categories = check_categories(msg.categories)
    purpose = check_purpose(msg.purpose)
    if msg.reason_hash and len(msg.reason_hash) != 32:
        raise TxError(Code.INVALID_BODY, "field reason_hash: must be 32 bytes")
    seq = int(ctx.state.get("consent/req_seq") or 0) + 1
    ctx.state.put("consent/req_seq", seq)
    ctx.state.put(
        f"consent/req/{msg.pid}/{seq:012d}",
        {
            "id": seq,
            "pid": msg.pid,
            "org": org,
            "practitioner": practitioner or "",
            "categories": categories,
            "purpose": purpose,
            "reason_hash": msg.reason_hash,
            "time": ctx.time_ms,
        },
    )
    ctx.emit("consent.requested", id=seq, pid=msg.pid, org=org, purpose=purpose)


def q_requests(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    """A patient's access requests, oldest first; `granted` once that hospital holds an
    active consent for that purpose given after the request."""
    pid = args.get("pid")
    if not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "consent/requests needs pid")
    consents = q_list(state, {"pid": pid})
    out = []
    for _, req in state.scan(f"consent/req/{pid}/"):
        req["granted"] = any(
            c["grantee"] == f"org:{req['org']}"
            and c["purpose"] == req["purpose"]
            and c["status"] == "active"
            and c["time"] >= req["time"]
            for c in consents
        )
        out.append(req)
    return out


CONTRACTS = [
    Contract(
        name="consent",
        version=1,
        messages={
            "consent.grant": Message("consent.grant", Grant, grant),
            "consent.revoke": Message("consent.revoke", Revoke, revoke),
            "consent.request": Message("consent.request", RequestAccess, request_access),
            "consent.contest": Message("consent.contest", Contest, contest),
            "consent.confirm": Message("consent.confirm", Confirm, confirm),
        },
        queries={
            "consent/get": q_get,
            "consent/list": q_list,
            "consent/granted_to": q_granted_to,
            "consent/requests": q_requests,
        },
    )
]
