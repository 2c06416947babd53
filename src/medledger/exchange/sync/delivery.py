"""Referral deliveries, both sides.

The referring custodian's `deliver` job pushes the referral's records to the receiver (and
logs the export on the chain); the receiver's gateway hands the push to `receive_delivery`,
and its `confirm` job checks every delivered commitment is held (fetching what did not
arrive) before confirming on the chain.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import orjson

from medledger.contracts import queries
from medledger.contracts.identity import resolve_actor
from medledger.contracts.referral import Confirm, Deliver
from medledger.exchange.client import (
    ExchangeError,
    FetchedRecord,
    verify_fetched,
)
from medledger.exchange.gateway import Caller, Refused, b64
from medledger.exchange.policy import record_meta
from medledger.exchange.sync._base import AgentBase
from medledger.exchange.sync.store import Job
from medledger.node import decisions
from medledger.node.indexing import check_commitment, open_meta
from medledger.vault import PatientErased, RecordNotFound

log = logging.getLogger(__name__)


class DeliveryJobs(AgentBase):
    """The `deliver` and `confirm` jobs, and the receiving side of a delivery."""

    def _deliver(self, job: Job) -> str:
        ref = self._referral(job.ref)
        if ref is None or ref["from"] != self.org:
            return "no such referral from here"
        if ref["status"] != "admitted":
            return f"referral is {ref['status']}"
        pid, receiver = ref["pid"], ref["to"]
        mine = {
            e["rid"]: e
            for e in queries.records_of_patient(self.node.engine, pid, self.org)
            if not e.get("shredded")
        }
        key = self.vault.metadata_key(pid)
        with self.policy.state() as state:
            receiver_actor = resolve_actor(state, self._member_key(receiver))
            if receiver_actor is None:
                raise Refused(409, f"{receiver} is not a member")
            chosen: list[tuple[dict[str, Any], Any]] = []
            for rid in ref["rids"] or sorted(mine):
                entry = mine.get(rid)
                if entry is None:
                    raise Refused(409, f"record {rid} is not held here")
                meta = open_meta(key, rid, entry["version"], entry["meta_ct"])
                if not ref["rids"] and meta.get("category") not in ref["categories"]:
                    continue
                d = self.policy.decide(
                    receiver_actor, pid, record_meta(entry, meta), "treatment", state=state
                )
                chosen.append((entry, d))
        if not chosen:
            return "no record of the referral's categories to deliver"
        records, rids, commitments = [], [], []
        for entry, _ in chosen:
            rid, version = entry["rid"], entry["version"]
            records.append(
                {
                    "rid": rid,
                    "version": version,
                    "resource_type": self.vault.info(rid, version).resource_type,
                    "resource": b64(self.vault.get(rid, version)),
                    "salt": b64(self.vault.salt(pid, rid, version)),
                }
            )
            rids.append(rid)
            commitments.append(bytes(entry["commitment"]))
        payload = {"referral": job.ref, "pid": pid, "records": records}
        # The hash of the body the receiver gets (its evidence keeps the body): in our log.
        digest = hashlib.sha256(orjson.dumps(payload)).hexdigest()
        log.info(
            "%s: referral %s delivery to %s, body sha256 %s", self.org, job.ref, receiver, digest
        )
        denied = [(e, d) for e, d in chosen if not d.allowed]
        decision = denied[0][1] if denied else chosen[0][1]
        # The push is this hospital's own act (the receiver signed no request, and an entry
        # naming another hospital's actor needs its signed request): the basis, the referral,
        # says to whom, and `to` names the receiver on the patient's trail (access v3; v4
        # checks it is the referral's).
        push = decisions.Access(
            f"org:{self.org}", self.org, pid, "export", "treatment", to=receiver
        )
        self.node.audit.log(decisions.audit(push, decision, rids), wait=True)
        if denied:
            raise Refused(403, f"delivery refused by authorize: {decision.reason}")
        self.client.deliver(receiver, payload)
        self.node.wallet.send_message(Deliver(id=job.ref, rids=rids, commitments=commitments))
        return f"{len(rids)} records delivered to {receiver}"

    def _member_key(self, org: str) -> bytes:
        for member in queries.members(self.node.engine):
            if member["org"] == org:
                return bytes(member["key"])
        raise Refused(409, f"{org} is not a member")

    # -- referral delivery, receiving side ------------------------------------------------
    def receive_delivery(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """The gateway's /deliveries: check the referral and each record, store the copies."""
        ref_id, pid, records = args.get("referral"), args.get("pid"), args.get("records")
        if not isinstance(ref_id, int) or not isinstance(pid, str) or not isinstance(records, list):
            raise Refused(400, "body: referral (int), pid and records expected")
        ref = self._referral(ref_id)
        if ref is None or ref["to"] != self.org or ref["pid"] != pid:
            raise Refused(404, f"no referral {ref_id} of this patient to {self.org}")
        if ref["from"] != caller.actor.org:
            raise Refused(403, f"referral {ref_id} is from {ref['from']}, not {caller.actor.org}")
        if ref["status"] not in ("admitted", "delivered", "confirmed"):
            raise Refused(409, f"referral {ref_id} is {ref['status']}")
        checked = []
        for rec in records:
            versions = queries.record_versions(self.node.engine, rec.get("rid"))
            try:
                commitment = verify_fetched(versions, rec, ref["from"], pid)
            except ExchangeError as exc:
                raise Refused(422, exc.reason) from None
            checked.append(
                FetchedRecord.from_wire(rec, ref["from"], pid, f"referral:{ref_id}", commitment)
            )
        try:
            stored = self.store_copies(checked)
        except PatientErased:
            raise Refused(410, "this patient's data was erased here") from None
        self._wake.set()
        return {"stored": stored, "received": len(checked)}

    def _confirm(self, job: Job) -> str:
        ref = self._referral(job.ref)
        if ref is None or ref["to"] != self.org:
            return "no such referral to here"
        if ref["status"] != "delivered":
            return f"referral is {ref['status']}"
        delivered = ref["obligation"]["delivered"]
        pid = ref["pid"]
        missing = [
            rid
            for rid, c in zip(delivered["rids"], delivered["commitments"], strict=True)
            if not self._holds(pid, rid, bytes(c))
        ]
        if missing:  # the push did not arrive (or not yet): fetch under the referral
            fetched = self.client.fetch(ref["from"], pid, missing, "treatment")
            self.store_copies(fetched.records)
        for rid, c in zip(delivered["rids"], delivered["commitments"], strict=True):
            if not self._holds(pid, rid, bytes(c)):
                raise ExchangeError(ref["from"], 0, f"record {rid} not received intact yet")
        commitments = [bytes(c) for c in delivered["commitments"]]
        self.node.wallet.send_message(Confirm(id=job.ref, commitments=commitments))
        return f"{len(delivered['rids'])} records confirmed"

    def _holds(self, pid: str, rid: str, commitment: bytes) -> bool:
        """Is a copy of this record, whose bytes hash to the commitment, in the vault?"""
        try:
            versions = self.vault.versions(rid)
        except RecordNotFound:
            return False
        for version in reversed(versions):
            try:
                data = self.vault.get(rid, version)
                salt = self.vault.salt(pid, rid, version)
            except RecordNotFound:
                continue
            if check_commitment(salt, data, commitment):
                return True
        return False
