"""Patients' keys: a patient may sign their own consents with an Ed25519 key bound to their pid.

A patient has no account on the chain, only a pseudonym. A hospital that has met the patient
(identity checked at the desk, or through the portal's login) attests the binding of a key to
the pid, with the hash of its evidence (the signed form, the portal's login record), so that a
contested binding can be traced to a hospital and a document. Only a custodian of the patient
(same test as below) may bind or rebind: a bound key acts as the patient, so a member that
never treated them must not be able to bind a key of its own to their pid. A rebinding (lost
phone) is the same tx and emits `patient.key_replaced`, which the portal shows to the patient.

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
What a hospital grants *itself* this way is also notified (consent.py).

State (prefix `patients/`):
    patients/key/<pid>          the bound key, who attested it, evidence hash, time
    patients/bykey/<key hex>    key -> pid (signer lookup)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medledger.contracts.common import check_id, member_of_key
from medledger.contracts.identity import resolve_actor
from medledger.contracts.records import acting_org, check_pid, is_custodian
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView


@dataclass
class Bind:
    pid: str
    key: bytes
    evidence_hash: bytes


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
    practitioner, roles = _taker(ctx.state, actor.org, actor.practitioner, taken_by)
    if not REQUEST_ROLES.intersection(roles):
        raise TxError(
            Code.UNAUTHORIZED,
            f"practitioner {org}/{practitioner} lacks a role allowed to take a patient's "
            f"request ({', '.join(sorted(REQUEST_ROLES))})",
        )
    return ActingFor("hospital", org, practitioner, evidence_hash, "desk")


def _taker(
    state: StateView, org: str, signer: str | None, taken_by: str
) -> tuple[str, tuple[str, ...]]:
    """The practitioner who took the request at the desk, and their roles."""
    if signer is not None:
        if taken_by and taken_by != signer:
            raise TxError(
                Code.UNAUTHORIZED,
                "field taken_by: a practitioner signs only the requests they took themself",
            )
        record = state.get(f"id/prac/{org}/{signer}")
        return signer, tuple(record["roles"])
    if not taken_by:
        raise TxError(
            Code.INVALID_BODY,
            "field taken_by: name the practitioner who took the patient's request",
        )
    check_id(taken_by, "taken_by")
    record = state.get(f"id/prac/{org}/{taken_by}")
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


def bind(ctx: Context, msg: Bind) -> None:
    org, practitioner = acting_org(ctx, role="admin")
    check_pid(msg.pid)
    check_hash(msg.evidence_hash, "evidence_hash")
    if not is_custodian(ctx.state, msg.pid, org):
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
    if member_of_key(ctx.state, msg.key) or ctx.state.has(f"id/key/{hexkey}"):
        raise TxError(Code.CONFLICT, "field key: this key belongs to a hospital or practitioner")
    previous = ctx.state.get(f"patients/key/{msg.pid}")
    if previous is not None:
        ctx.state.delete(f"patients/bykey/{bytes(previous['key']).hex()}")
    ctx.state.put(
        f"patients/key/{msg.pid}",
        {
            "pid": msg.pid,
            "key": msg.key,
            "org": org,
            "practitioner": practitioner or "",
            "evidence_hash": msg.evidence_hash,
            "time": ctx.time_ms,
            "tx": ctx.tx_id,
        },
    )
    ctx.state.put(f"patients/bykey/{hexkey}", msg.pid)
    if previous is None:
        ctx.emit("patient.key_bound", pid=msg.pid, org=org)
    else:
        ctx.emit("patient.key_replaced", pid=msg.pid, org=org)


def q_key(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = state.get(f"patients/key/{args.get('pid')}")
    return found


def q_of_key(state: StateView, args: dict[str, Any]) -> str | None:
    key = args.get("key")
    if not isinstance(key, bytes):
        raise TxError(Code.INVALID_BODY, "patients/of_key needs key bytes")
    return patient_of_key(state, key)


CONTRACTS = [
    Contract(
        name="patients",
        version=1,
        messages={"patients.bind": Message("patients.bind", Bind, bind)},
        queries={"patients/key": q_key, "patients/of_key": q_of_key},
    )
]
