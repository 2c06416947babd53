"""Patients' keys: a patient may sign their own consents with an Ed25519 key bound to their pid.

A patient has no account on the chain, only a pseudonym. A hospital that has met the patient
(identity checked at the desk, or through the portal's login) attests the binding of a key to
the pid, with the hash of its evidence (the signed form, the portal's login record), so that a
contested binding can be traced to a hospital and a document. A rebinding (lost phone) is the
same tx and emits `patient.key_replaced`, which the portal shows to the patient.

Everything a patient may do (consent, enrol, withdraw, request erasure) may also be done by a
hospital *on the patient's behalf*: then the hash of the evidence (the paper form, a recorded
call) is mandatory, so that every such act points to a document a DPO can ask for.
`acting_for_patient` is the one place that decides which of the two a tx is.

State (prefix `patients/`):
    patients/key/<pid>          the bound key, who attested it, evidence hash, time
    patients/bykey/<key hex>    key -> pid (signer lookup)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medledger.contracts.common import member_of_key
from medledger.contracts.records import acting_org, check_pid
from medledger.ledger.contract import Context, Contract, Message
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView


@dataclass
class Bind:
    pid: str
    key: bytes
    evidence_hash: bytes


@dataclass(frozen=True)
class ActingFor:
    """Who signed an act of a patient: the patient's own key, or a hospital on their behalf."""

    by: str  # "patient" or "hospital"
    org: str  # the hospital acting on behalf ("" when the patient signed)
    practitioner: str  # "" for the hospital's organisation key or the patient
    evidence_hash: bytes  # b"" when the patient signed

    @property
    def on_behalf(self) -> bool:
        return self.by == "hospital"

    def to_obj(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "org": self.org,
            "practitioner": self.practitioner,
            "evidence_hash": self.evidence_hash,
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


def acting_for_patient(ctx: Context, pid: str, evidence_hash: bytes) -> ActingFor:
    """The patient's own key, or an active hospital key with the evidence's hash (mandatory).

    A patient key bound to another pid is refused outright: it must never act for someone else,
    even with evidence.
    """
    signer_pid = patient_of_key(ctx.state, ctx.signer)
    if signer_pid is not None:
        if signer_pid != pid:
            raise TxError(Code.UNAUTHORIZED, "signer is another patient's key")
        return ActingFor("patient", "", "", b"")
    org, practitioner = acting_org(ctx)
    if not evidence_hash:
        raise TxError(
            Code.INVALID_BODY,
            "field evidence_hash: required when a hospital acts on the patient's behalf",
        )
    check_hash(evidence_hash, "evidence_hash")
    return ActingFor("hospital", org, practitioner or "", evidence_hash)


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
