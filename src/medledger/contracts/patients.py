"""Patients' keys: a patient may sign their own consents with an Ed25519 key bound to their pid.

A patient has no account on the chain, only a pseudonym. A hospital that has met the patient
(identity checked at the desk, or through the portal's login) attests the binding of a key to
the pid, with the hash of its evidence (the signed form, the portal's login record), so that a
contested binding can be traced to a hospital and a document. Only a custodian of the patient
(same test as below) may bind or rebind: a bound key acts as the patient, so a member that
never treated them must not be able to bind a key of its own to their pid. A rebinding (lost
phone) is the same tx, but it does not take effect at once: a custodian can be any member
that registered one record (records.py), and a key of its own on the pid would let it act as
the patient, unnotified and uncontestable. So a rebinding waits `on_behalf_delay_ms` (policy,
72 h): `patient.rebind_pending` (with `effective_ms`) tells the patient; until then the old
key keeps working, and the old key, or an active DPO of another custodian whose custody began
before the rebinding, may cancel it (`patients.cancel_bind`, `patient.rebind_cancelled`). At
`effective_ms` the block's end swaps the keys and emits `patient.key_replaced`. A first
binding (no key yet) takes effect at once, but only from a custodian whose custody is at least
`custody_min_age_ms` old (policy, 24 h): a hospital that just made itself a custodian cannot
bind its own key before the earlier custodians have seen `records.custodian_joined`.

Everything a patient may do (consent, enrol, withdraw, request erasure, revoke) is signed in
one of two ways, and `acting_for_patient` is the one place that decides which, refusing
everything else:

(a) the patient's own bound key (channel `key`). A patient key bound to another pid is refused
    outright, even with evidence;
(b) a hospital *on the patient's behalf*, only if it is a custodian of that patient: it holds
    care records of the pid in the records index (`rec/pid/<pid>/<rid>`, custodian = that
    hospital; copies held elsewhere do not count, nor records whose keys it destroyed). A
    member that never treated the patient can do nothing in their name, whatever it claims to
    hold. The hash of the evidence (the paper form, a recorded call, the portal's
    authenticated request) is mandatory, so that every such act points to a document a DPO
    can ask for; and the tx says who took the request, by its `channel`:
      `desk`    (default) a practitioner took it: either the signer is that practitioner's own
                key, or the organisation key signs and `taken_by` names them. That
                practitioner must be active at that hospital and hold one of REQUEST_ROLES
                (physician, nurse, admin, dpo): a researcher or an emergency-only role does
                not take a patient's requests;
      `portal`  the patient, authenticated on that hospital's own portal or FHIR API, asked for
                it themself: no practitioner took it, so the organisation key signs (the
                portal is the hospital's service), `taken_by` stays empty, and the evidence is
                the hash of the authenticated request (the token's claims and the form).
    A revoked practitioner (signer or `taken_by`) is refused even if the rest is in order.

Refusals are `UNAUTHORIZED` with the reason ("not a custodian of this patient: ...",
"practitioner <org>/<id> is revoked", "... lacks a role allowed to take a patient's request").

Every act a hospital signs in the patient's name is notified, whatever it is (consent grant
or revoke, enrolment, withdrawal, erasure request, key binding) and whoever took it (desk,
portal, the recording hospital): `announce_on_behalf` emits `patient.acted_for` (pid, org, act,
channel, taken_by: the patient's stream and portal) and one notification per OTHER custodian
of the patient (`patient.notify`, or the contract's own type such as `consent.notify` when the
act can be contested there), for its DPO's queue. Nothing done in a patient's name is silent.

State (prefix `patients/`):
    patients/key/<pid>          the bound key, who attested it, evidence hash, time
    patients/bykey/<key hex>    key -> pid (signer lookup)
    patients/seq                last pending rebinding id
    patients/rebind/<id:012d>   a rebinding: pending, done or cancelled
    patients/pending/<pid>      the patient's pending rebinding id
    patients/due/<time:016d>/<id:012d>   when pending rebindings take effect (DueQueue)
    patients/acted/<pid>/<time:016d>/<tx id hex>  an act in the patient's name (the portal's
                                                  notices: org, act, channel, taken_by, ref)
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from medledger.contracts import identity
from medledger.contracts.common import check_id, check_pid
from medledger.contracts.governance import member_of_key
from medledger.contracts.identity import acting_org, resolve_actor
from medledger.contracts.policies import DueQueue, params
from medledger.contracts.records import custodies, custody_since, is_custodian
from medledger.ledger import codec
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView


@dataclass
class Bind:
    pid: str
    key: bytes
    evidence_hash: bytes


@dataclass
class CancelBind:
    """The patient's (old) key, or an earlier custodian's DPO, stops a pending rebinding."""

    pid: str


DUE = DueQueue("patients/due/")

#: Roles that may take a patient's request at a custodian's desk (consent, enrolment, erasure).
REQUEST_ROLES = frozenset({"physician", "nurse", "admin", "dpo"})
#: How a hospital received the patient's request (see the module docstring).
CHANNELS = ("desk", "portal")


@dataclass(frozen=True)
class ActingFor:
    """Who signed an act of a patient: the patient's own key, or a hospital on their behalf."""

    by: str  # "patient" or "hospital"
    org: str  # the hospital acting on behalf ("" when the patient signed)
    practitioner: str  # who took the request ("" for the patient or the portal)
    evidence_hash: bytes  # b"" when the patient signed
    channel: str = "key"  # "key" (the patient's own), "desk", "portal"; "recorder" (revoke)

    @property
    def on_behalf(self) -> bool:
        return self.by == "hospital"

    def to_obj(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "org": self.org,
            "practitioner": self.practitioner,
            "evidence_hash": self.evidence_hash,
            "channel": self.channel,
        }


def check_hash(value: bytes, field: str) -> bytes:
    if len(value) != 32:
        raise TxError(Code.INVALID_BODY, f"field {field}: must be a 32-byte SHA-256 hash")
    return value


def patient_of_key(state: StateView, key: bytes) -> str | None:
    pid = state.get(f"patients/bykey/{key.hex()}")
    return None if pid is None else str(pid)


def key_of_patient(state: StateView, pid: str) -> bytes | None:
    bound = state.get(f"patients/key/{pid}")
    return None if bound is None else bytes(bound["key"])


def key_binding(state: StateView, pid: str) -> dict[str, Any] | None:
    """The patient's key binding in force: key, the attesting `org`, `time`..., or None."""
    bound: dict[str, Any] | None = state.get(f"patients/key/{pid}")
    return bound


def key_bindings(state: StateView, pids: Container[str]) -> dict[str, dict[str, Any]]:
    """`key_binding` of many patients (one without is left out): one pass over the bindings,
    decoding only those of `pids`."""
    found: dict[str, dict[str, Any]] = {}
    for key, raw in state.scan_raw(b"patients/key/"):
        pid = key[len(b"patients/key/") :].decode()
        if pid in pids:
            found[pid] = codec.decode_trusted(raw)
    return found


def acting_for_patient(
    ctx: Context, pid: str, evidence_hash: bytes, taken_by: str = "", channel: str = ""
) -> ActingFor:
    """The patient's own key, or a custodian with evidence and who took the request.

    See the module docstring for the rule; everything else is refused with its reason.
    """
    signer_pid = patient_of_key(ctx.state, ctx.signer)
    if signer_pid is not None:
        if signer_pid != pid:
            raise TxError(Code.UNAUTHORIZED, "signer is another patient's key")
        if taken_by or channel not in ("", "key"):
            raise TxError(
                Code.INVALID_BODY,
                "field taken_by: only when a hospital acts on the patient's behalf",
            )
        return ActingFor("patient", "", "", b"", "key")
    actor = resolve_actor(ctx.state, ctx.signer)
    if actor is None:
        raise TxError(
            Code.UNAUTHORIZED,
            "signer is neither the patient's bound key nor a hospital or practitioner key",
        )
    org = actor.org
    if not actor.active:
        who = f"practitioner {org}/{actor.practitioner}" if actor.practitioner else org
        raise TxError(Code.UNAUTHORIZED, f"{who} is revoked: it no longer acts for anyone")
    if not is_custodian(ctx.state, pid, org):
        raise TxError(
            Code.UNAUTHORIZED,
            f"not a custodian of this patient: {org} holds none of their care records, so it "
            "cannot act in their name (the patient may sign with their own key)",
        )
    if not evidence_hash:
        raise TxError(
            Code.INVALID_BODY,
            "field evidence_hash: required when a hospital acts on the patient's behalf",
        )
    check_hash(evidence_hash, "evidence_hash")
    channel = channel or "desk"
    if channel not in CHANNELS:
        raise TxError(Code.INVALID_BODY, f"field channel: one of {', '.join(CHANNELS)}")
    if channel == "portal":
        if not actor.is_org:
            raise TxError(
                Code.UNAUTHORIZED,
                "field channel: a portal request is signed by the hospital's organisation key",
            )
        if taken_by:
            raise TxError(
                Code.INVALID_BODY, "field taken_by: no practitioner takes a portal request"
            )
        return ActingFor("hospital", org, "", evidence_hash, "portal")
    practitioner, roles = request_taker(ctx.state, actor.org, actor.practitioner, taken_by)
    if not REQUEST_ROLES.intersection(roles):
        raise TxError(
            Code.UNAUTHORIZED,
            f"practitioner {org}/{practitioner} lacks a role allowed to take a patient's "
            f"request ({', '.join(sorted(REQUEST_ROLES))})",
        )
    return ActingFor("hospital", org, practitioner, evidence_hash, "desk")


def announce_on_behalf(
    ctx: Context, pid: str, who: ActingFor, act: str, notify: str = "patient.notify", **ref: Any
) -> None:
    """Tell the patient and every other custodian that a hospital acted in the patient's name.

    `act` is the message type; `ref` names what it made (a consent id, a request id). Nothing
    is emitted when the patient signed with their own key.
    """
    if not who.on_behalf:
        return
    ctx.state.put(
        f"patients/acted/{pid}/{ctx.time_ms:016d}/{ctx.tx_id.hex()}",
        {
            "org": who.org,
            "act": act,
            "channel": who.channel,
            "taken_by": who.practitioner,
            "ref": {k: str(v) for k, v in ref.items()},
            "time": ctx.time_ms,
        },
    )
    ctx.emit(
        "patient.acted_for",
        pid=pid,
        org=who.org,
        act=act,
        channel=who.channel,
        taken_by=who.practitioner,
        **ref,
    )
    for custodian in sorted(custodies(ctx.state, pid)):  # current ones: not after a shredding
        if custodian != who.org:
            ctx.emit(notify, pid=pid, custodian=custodian, org=who.org, act=act, **ref)


def may_cancel(state: StateView, signer: bytes, pid: str, org: str, since_ms: int) -> str:
    """Who may stop an act `org` filed in the patient's name at `since_ms`, or refuse.

    The patient's own key, or an active DPO (practitioner key) of another custodian whose
    custody began before the act: a custodian that appeared afterwards may be the attacker's
    accomplice. Returns "patient" or "<org>/<dpo id>".
    """
    if patient_of_key(state, signer) == pid:
        return "patient"
    actor = resolve_actor(state, signer)
    if actor is None or not actor.active or actor.is_org or "dpo" not in actor.roles:
        raise TxError(
            Code.UNAUTHORIZED,
            "signer is neither the patient's key nor an active DPO of another custodian",
        )
    if actor.org == org:
        raise TxError(Code.UNAUTHORIZED, "the hospital that filed it does not cancel its own act")
    since = custody_since(state, pid, actor.org)
    if since is None:
        raise TxError(
            Code.UNAUTHORIZED,
            f"not a custodian of this patient: {actor.org} holds none of their care records",
        )
    if since >= since_ms:
        raise TxError(
            Code.UNAUTHORIZED,
            f"{actor.org}'s custody of this patient began after the act: only earlier "
            "custodians (or the patient's key) may stop it",
        )
    return f"{actor.org}/{actor.practitioner}"


def request_taker(
    state: StateView, org: str, signer: str | None, taken_by: str
) -> tuple[str, tuple[str, ...]]:
    """The practitioner who took the request at the desk, and their roles."""
    if signer is not None:
        if taken_by and taken_by != signer:
            raise TxError(
                Code.UNAUTHORIZED,
                "field taken_by: a practitioner signs only the requests they took themself",
            )
        return signer, identity.roles_of(state, org, signer)
    if not taken_by:
        raise TxError(
            Code.INVALID_BODY,
            "field taken_by: name the practitioner who took the patient's request",
        )
    check_id(taken_by, "taken_by")
    record = identity.practitioner(state, org, taken_by)
    if record is None:
        raise TxError(Code.UNAUTHORIZED, f"field taken_by: {org} has no practitioner {taken_by!r}")
    if not record["active"]:
        raise TxError(
            Code.UNAUTHORIZED, f"field taken_by: practitioner {org}/{taken_by} is revoked"
        )
    return taken_by, tuple(record["roles"])


def erasure_requested(state: StateView, pid: str) -> int | None:
    """The open erasure request of a patient, if any (the key is owned by erasure.py).

    Here rather than in erasure.py because consent, research and referral refuse new acts for
    a patient who asked to be erased, and erasure.py itself reads those contracts' state.
    """
    found = state.get(f"erasure/pid/{pid}")
    return None if found is None else int(found)


def erasures_requested(state: StateView, pids: Container[str]) -> set[str]:
    """Those of `pids` with an open erasure request (`erasure_requested`), in one pass."""
    prefix = b"erasure/pid/"
    return {p for key, _ in state.scan_raw(prefix) if (p := key[len(prefix) :].decode()) in pids}


def bind(ctx: Context, msg: Bind) -> None:
    org, practitioner = acting_org(ctx, role="admin")
    check_pid(msg.pid)
    check_hash(msg.evidence_hash, "evidence_hash")
    since = custody_since(ctx.state, msg.pid, org)
    if since is None:
        raise TxError(
            Code.UNAUTHORIZED,
            f"not a custodian of this patient: {org} holds none of their care records, so it "
            "cannot attest their key",
        )
    if len(msg.key) != 32:
        raise TxError(Code.INVALID_BODY, "field key: must be a 32-byte Ed25519 key")
    hexkey = msg.key.hex()
    owner = ctx.state.get(f"patients/bykey/{hexkey}")
    if owner is not None:
        raise TxError(Code.CONFLICT, "field key: this key is already bound to a patient")
    if member_of_key(ctx.state, msg.key) or identity.key_registered(ctx.state, msg.key):
        raise TxError(Code.CONFLICT, "field key: this key belongs to a hospital or practitioner")
    if ctx.state.has(f"patients/pending/{msg.pid}"):
        raise TxError(Code.CONFLICT, "a rebinding of this patient's key is already pending")
    p = params(ctx.state)
    binding = {
        "pid": msg.pid,
        "key": msg.key,
        "org": org,
        "practitioner": practitioner or "",
        "evidence_hash": msg.evidence_hash,
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
    }
    who = ActingFor("hospital", org, practitioner or "", msg.evidence_hash, "desk")
    if ctx.state.get(f"patients/key/{msg.pid}") is None:
        if ctx.time_ms - since < p["custody_min_age_ms"]:
            raise TxError(
                Code.REFUSED,
                f"{org}'s custody of this patient is younger than custody_min_age_ms "
                f"({p['custody_min_age_ms']} ms): it binds their first key later",
            )
        _set_key(ctx, binding)
        ctx.emit("patient.key_bound", pid=msg.pid, org=org)
        announce_on_behalf(ctx, msg.pid, who, "patients.bind")
        return
    # Replacing a key: it waits, cancellable (module docstring).
    seq = int(ctx.state.get("patients/seq") or 0) + 1
    ctx.state.put("patients/seq", seq)
    effective = ctx.time_ms + p["on_behalf_delay_ms"]
    binding.update(id=seq, status="pending", effective_ms=effective)
    ctx.state.put(f"patients/rebind/{seq:012d}", binding)
    ctx.state.put(f"patients/pending/{msg.pid}", seq)
    DUE.add(ctx.state, effective, seq)
    ctx.emit("patient.rebind_pending", id=seq, pid=msg.pid, org=org, effective_ms=effective)
    announce_on_behalf(ctx, msg.pid, who, "patients.bind", id=seq)


def _set_key(ctx: Context, binding: dict[str, Any]) -> None:
    pid = binding["pid"]
    previous = ctx.state.get(f"patients/key/{pid}")
    if previous is not None:
        ctx.state.delete(f"patients/bykey/{bytes(previous['key']).hex()}")
    ctx.state.put(
        f"patients/key/{pid}",
        {k: binding[k] for k in ("pid", "key", "org", "practitioner", "evidence_hash", "tx")}
        | {"time": ctx.time_ms},
    )
    ctx.state.put(f"patients/bykey/{bytes(binding['key']).hex()}", pid)


def rebinding(state: StateView, seq: int) -> dict[str, Any] | None:
    """Rebinding `seq` of some patient's key: pending, done, cancelled or failed."""
    found: dict[str, Any] | None = state.get(f"patients/rebind/{seq:012d}")
    return found


def pending_rebind(state: StateView, pid: str) -> dict[str, Any] | None:
    seq = state.get(f"patients/pending/{pid}")
    found: dict[str, Any] | None = (
        None if seq is None else state.get(f"patients/rebind/{int(seq):012d}")
    )
    return found


def cancel_bind(ctx: Context, msg: CancelBind) -> None:
    check_pid(msg.pid)
    binding = pending_rebind(ctx.state, msg.pid)
    if binding is None:
        raise TxError(Code.NOT_FOUND, "no rebinding of this patient's key is pending")
    by = may_cancel(ctx.state, ctx.signer, msg.pid, binding["org"], binding["time"])
    binding["status"] = "cancelled"
    binding["cancelled"] = {"by": by, "time": ctx.time_ms, "tx": ctx.tx_id}
    ctx.state.put(f"patients/rebind/{binding['id']:012d}", binding)
    ctx.state.delete(f"patients/pending/{msg.pid}")
    DUE.remove(ctx.state, binding["effective_ms"], binding["id"])
    ctx.emit("patient.rebind_cancelled", id=binding["id"], pid=msg.pid, by=by)


def end_block(ctx: Context) -> None:
    for seq in DUE.pop_due(ctx.state, ctx.time_ms):
        binding = ctx.state.get(f"patients/rebind/{seq:012d}")
        if binding is None or binding["status"] != "pending":
            continue
        ctx.state.delete(f"patients/pending/{binding['pid']}")
        hexkey = bytes(binding["key"]).hex()
        key = bytes(binding["key"])
        if (
            ctx.state.has(f"patients/bykey/{hexkey}")
            or identity.key_registered(ctx.state, key)
            or member_of_key(ctx.state, key)
        ):
            # The key was bound elsewhere meanwhile: the rebinding cannot happen.
            binding["status"] = "failed"
            ctx.emit("patient.rebind_failed", id=seq, pid=binding["pid"], org=binding["org"])
        else:
            binding["status"] = "done"
            _set_key(ctx, binding)
            ctx.emit("patient.key_replaced", pid=binding["pid"], org=binding["org"])
        ctx.state.put(f"patients/rebind/{seq:012d}", binding)


def q_key(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"patients/key/{args.get('pid')}")
    return found


def q_pending(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    """The patient's pending key rebinding, with its effective time (or None)."""
    pid = args.get("pid")
    return pending_rebind(state, pid) if isinstance(pid, str) else None


#: How many of the latest acts in a patient's name `patients/notices` returns.
MAX_NOTICES = 50


def q_notices(state: StateView, args: dict[str, Any]) -> dict[str, Any]:
    """What the patient's portal warns about: who holds their records since when, the latest
    acts hospitals signed in their name (newest first), and a pending key rebinding."""
    pid = args.get("pid")
    if not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "patients/notices needs pid")
    acts = [v for _, v in state.scan(f"patients/acted/{pid}/")]
    return {
        "custodians": custodies(state, pid),
        "acts": acts[::-1][:MAX_NOTICES],
        "rebind": pending_rebind(state, pid),
    }


def q_of_key(state: StateView, args: dict[str, Any]) -> str | None:
    key = args.get("key")
    if not isinstance(key, bytes):
        raise TxError(Code.INVALID_BODY, "patients/of_key needs key bytes")
    return patient_of_key(state, key)


CONTRACTS = [
    Contract(
        name="patients",
        version=1,
        messages={
            "patients.bind": Message("patients.bind", Bind, bind),
            "patients.cancel_bind": Message("patients.cancel_bind", CancelBind, cancel_bind),
        },
        queries={
            "patients/key": q_key,
            "patients/of_key": q_of_key,
            "patients/pending": q_pending,
            "patients/notices": q_notices,
        },
        end_block=end_block,
    )
]
