"""`World`: a three-hospital chain for the care-contract tests.

Named practitioners, a patient with a bound key and records at h0, driven block by block
with an explicit block time. `tests/contracts/test_*.py` build one per test.
"""

from __future__ import annotations

import hashlib
from typing import Any

from medledger.contracts.authorize import Decision, authorize
from medledger.contracts.common import DAY_MS
from medledger.contracts.records import META_CT_SIZES
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import BlockOutcome, TxResult
from medledger.ledger.store import StateView
from tests.support.ledger import T0, make_net, run_block

#: The hash of a break-the-glass justification ("unconscious" and a note, kept off chain).
JUSTIFICATION = hashlib.sha256(b"unconscious, found at 3 am").digest()
HOUR = 3600 * 1000
EVIDENCE = hashlib.sha256(b"signed paper form").digest()

PRACTITIONERS = {
    "h0/dr-a": ["physician"],
    "h0/dpo-a": ["dpo"],
    "h0/res-a": ["researcher"],
    "h1/dr-b": ["physician"],
    "h1/nurse-b": ["nurse"],
    "h1/er-b": ["emergency", "physician"],
    "h1/er-b2": ["emergency"],
    "h1/dpo-b": ["dpo"],
    "h1/res-b": ["researcher"],
    "h1/admin-b": ["admin"],
    "h2/dr-c": ["physician"],
}


def pid_of(name: str) -> str:
    return hashlib.sha256(b"pid:" + name.encode()).hexdigest()


class World:
    def __init__(self) -> None:
        self.net = make_net(3)
        self.app = self.net.app()
        self.now = T0
        self.keys: dict[str, SigningKey] = dict(self.net.orgs)
        self.commitments: dict[str, bytes] = {}
        regs = []
        for ref, roles in PRACTITIONERS.items():
            org, prac = ref.split("/")
            key = SigningKey(hashlib.sha256(ref.encode()).digest())
            self.keys[ref] = key
            regs.append(
                self.net.tx(
                    self.net.orgs[org],
                    "identity.register",
                    {"practitioner": prac, "key": key.public_key, "roles": roles},
                )
            )
        self.block(*regs)
        self.pid = pid_of("alice")
        self.records("h0", self.pid, ["r-labs", "r-doc", "r-img"])
        self.patient = self.bind("alice")  # by h0, a custodian of alice

    # -- driving the chain ---------------------------------------------------------------
    def block(self, *txs: bytes, at: int | None = None) -> BlockOutcome:
        self.now = at if at is not None else self.now + 1000
        out = run_block(self.app, list(txs), self.net.solo, time_ms=self.now)
        return out  # type: ignore[no-any-return]

    def tx(self, who: str | SigningKey, kind: str, body: dict[str, Any]) -> bytes:
        key = self.keys[who] if isinstance(who, str) else who
        return self.net.tx(key, kind, body)

    def send(
        self, who: str | SigningKey, kind: str, body: dict[str, Any], at: int | None = None
    ) -> TxResult:
        return self.block(self.tx(who, kind, body), at=at).results[0]

    def ok(
        self, who: str | SigningKey, kind: str, body: dict[str, Any], at: int | None = None
    ) -> TxResult:
        result = self.send(who, kind, body, at)
        assert result.ok, (kind, result)
        return result

    def q(self, path: str, args: dict[str, Any]) -> Any:
        return self.app.query_obj(path, args)

    @property
    def state(self) -> StateView:
        return StateView(self.app.store)

    # -- fixtures of the story -----------------------------------------------------------
    def bind(self, name: str) -> SigningKey:
        key = SigningKey(hashlib.sha256(b"patient:" + name.encode()).digest())
        self.keys[f"patient:{name}"] = key
        if not self.q("records/of_patient", {"pid": pid_of(name), "custodian": "h0"}):
            self.records("h0", pid_of(name), [f"r-{name}"])  # only a custodian binds a key
        # A first key is bound by a custodian of at least a day (custody_min_age_ms).
        since = self.state.get(f"rec/custody/{pid_of(name)}/h0")
        self.ok(
            "h0",
            "patients.bind",
            {"pid": pid_of(name), "key": key.public_key, "evidence_hash": EVIDENCE},
            at=max(self.now + 1000, int(since) + DAY_MS),
        )
        return key

    def records(self, org: str, pid: str, rids: list[str], at: int | None = None) -> None:
        entries = []
        for rid in rids:
            commitment = hashlib.sha256(b"commitment:" + rid.encode()).digest()
            self.commitments[rid] = commitment
            entries.append(
                {
                    "rid": rid,
                    "pid": pid,
                    "commitment": commitment,
                    "meta_ct": b"c" * META_CT_SIZES[0],
                }
            )
        self.ok(org, "records.register", {"entries": entries}, at=at)

    def grant(self, grantee: str, **extra: Any) -> int:
        body = {
            "pid": self.pid,
            "grantee": grantee,
            "categories": ["labs"],
            "purpose": "treatment",
            "start_ms": self.now,
            **extra,
        }
        result = self.ok("patient:alice", "consent.grant", body)
        return int(next(e.get("id") for e in result.events if e.type == "consent.granted"))  # type: ignore[arg-type]

    def study(self, study: str = "s1", categories: list[str] | None = None, **extra: Any) -> None:
        body = {
            "study": study,
            "protocol_hash": hashlib.sha256(study.encode()).digest(),
            "ethics_ref": "CPP-2026-001",
            "categories": categories or ["labs"],
            "min_cohort": 2,
            **extra,
        }
        self.ok("h1/res-b", "research.register", body)

    def open_emergency(self, who: str = "h1/er-b", **extra: Any) -> TxResult:
        return self.ok(
            who, "emergency.open", {"pid": self.pid, "reason_hash": JUSTIFICATION, **extra}
        )

    def refer(self, date_ms: int, **extra: Any) -> TxResult:
        body = {
            "pid": self.pid,
            "to": "h1",
            "date_ms": date_ms,
            "categories": ["labs", "imaging"],
            "procedure_hash": hashlib.sha256(b"letter").digest(),
            "evidence_hash": EVIDENCE,
            **extra,
        }
        return self.ok("h0/dr-a", "referral.create", body)

    def vote_policy(self, action: str, args: dict[str, Any]) -> TxResult:
        propose = self.tx("h0", "governance.propose", {"action": action, "args": args})
        out = self.block(propose)
        assert out.results[0].ok, out.results[0]
        pid = int(next(e.get("id") for e in out.results[0].events if e.type == "proposal.created"))  # type: ignore[arg-type]
        return self.ok("h1", "governance.vote", {"proposal": pid, "approve": True})

    def auth(
        self,
        actor: str | bytes,
        category: str = "labs",
        purpose: str = "treatment",
        custodian: str = "h0",
        at: int | None = None,
        pid: str | None = None,
        **meta: Any,
    ) -> Decision:
        who: str | bytes = actor
        if isinstance(actor, str) and actor in self.keys:
            who = self.keys[actor].public_key
        return authorize(
            self.state,
            who,
            pid or self.pid,
            {"custodian": custodian, "category": category, "type": "Observation", **meta},
            purpose,
            self.now if at is None else at,
        )
