"""Following committed blocks: each block's events become interests and jobs.

    consent.granted to this hospital, referral to it, enrolment in its study
        -> interest in the patient; a `sync` job for each custodian of the patient
    record.registered / record.amended at another custodian, for a patient of interest
        -> a `sync` job for that custodian (jobs coalesce: one per custodian and patient)
    obligation.created with this hospital as the referring one   -> `deliver`
    referral.delivered to this hospital                          -> `confirm`
    erasure.notify to this hospital, or records.shredded by the custodian of copies held here
                                                                 -> `erase`

The jobs and the cursor move in one transaction (store.py); a block that gives nothing to
write moves the cursor in memory only (`Store.pass_block`: no fsync per empty block).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from medledger.contracts import queries
from medledger.exchange.events import block_events
from medledger.exchange.sync._base import AgentBase
from medledger.exchange.sync.store import _add_job
from medledger.ledger.results import BlockRecord

if TYPE_CHECKING:
    from medledger.exchange.events import StreamEvent


#: The event types `Planner._classify` acts on: the others are not even built.
PLANNED = frozenset(
    {
        "record.registered",
        "record.amended",
        "consent.granted",
        "consent.revoked",
        "referral.created",
        "referral.admitted",
        "referral.cancelled",
        "obligation.created",
        "referral.delivered",
        "study.enrolled",
        "study.withdrawn",
        "erasure.notify",
        "record.shredded",
    }
)


#: A block with nothing for the agent moves its cursor in memory only (`Store.pass_block`);
#: at every such height the cursor is stored anyway, which bounds what a restart re-reads.
_STORE_CURSOR_EVERY = 256


class Planner(AgentBase):
    """Turns committed blocks into the agent's interests and jobs."""

    def _follow(self, batch: int = 200) -> bool:
        cursor = self.store.cursor()
        latest = self._latest  # the block just committed, as the replica handed it over
        if latest is not None and latest.height == cursor + 1:
            self._plan(latest)  # no read of the block back from the store
            return True
        if cursor >= self.node.engine.height():
            return False
        n = 0
        for record in self.node.engine.blocks(cursor + 1):
            self._plan(record)
            n += 1
            if n >= batch or self._stop.is_set():
                break
        return n > 0

    def _plan(self, record: BlockRecord) -> None:
        """Turn one block's events into jobs, and move the cursor, in one transaction."""
        todo: list[tuple[str, str, str, str, int]] = []  # kind, custodian, pid, purpose, ref
        interests: list[tuple[str, str, str]] = []
        dropped: list[tuple[str, str]] = []
        for ev in block_events(record, PLANNED):
            self._classify(ev, todo, interests, dropped)
        if not (todo or interests or dropped) and record.height % _STORE_CURSOR_EVERY:
            self.store.pass_block(record.height)  # most blocks: no transaction, no fsync
            return
        with self.store.tx() as db:
            for pid, purpose, source in interests:
                db.execute(
                    "INSERT OR IGNORE INTO interest (pid, purpose, source, since_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (pid, purpose, source, record.header.time_ms),
                )
            ended: set[str] = set()
            for pid, source in dropped:
                gone = db.execute(
                    "DELETE FROM interest WHERE pid = ? AND source = ?", (pid, source)
                )
                if gone.rowcount:
                    ended.add(pid)
            for kind, custodian, pid, purpose, ref in todo:
                if kind == "sync":
                    purposes = [purpose] if purpose else self._purposes(db, pid)
                    for p in purposes:
                        _add_job(db, kind, custodian, pid, p, ref)
                else:
                    _add_job(db, kind, custodian, pid, purpose, ref)
            db.execute(
                "INSERT INTO cursor (id, height) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET height = excluded.height",
                (record.height,),
            )
        # An entitlement of this hospital ended: forget every key of the patient, whatever
        # else remains; the next sync asks again for only the categories still granted.
        for pid in ended:
            self.store.forget_keys(pid)

    @staticmethod
    def _purposes(db: sqlite3.Connection, pid: str) -> list[str]:
        rows = db.execute("SELECT DISTINCT purpose FROM interest WHERE pid = ?", (pid,)).fetchall()
        return [r[0] for r in rows]

    def _custodians(self, pid: str) -> list[str]:
        entries = queries.records_of_patient(self.node.engine, pid)
        return sorted({e["custodian"] for e in entries if e["custodian"] != self.org})

    def _study_sponsor(self, study: str) -> str | None:
        try:
            found = queries.study(self.node.engine, study)
        except Exception:
            return None
        return None if not found else str(found.get("sponsor"))

    def _grantee_is_me(self, grantee: str) -> bool:
        kind, _, rest = grantee.partition(":")
        if kind == "org":
            return rest == self.org
        if kind == "study":
            return self._study_sponsor(rest) == self.org
        return False  # a practitioner's own consent does not entitle the hospital's node

    def _classify(
        self,
        ev: StreamEvent,
        todo: list[tuple[str, str, str, str, int]],
        interests: list[tuple[str, str, str]],
        dropped: list[tuple[str, str]],
    ) -> None:
        a = ev.attrs
        pid = a.get("pid", "")
        t = ev.type
        if t in ("record.registered", "record.amended"):
            custodian = a.get("custodian", "")
            if custodian and custodian != self.org:
                todo.append(("sync", custodian, pid, "", 0))  # purposes of interest, if any
        elif t == "consent.granted" and self._grantee_is_me(a.get("grantee", "")):
            purpose = a.get("purpose", "treatment")
            grantee = a.get("grantee", "")
            if grantee.startswith("study:"):
                purpose = f"research:{grantee.partition(':')[2]}"
            interests.append((pid, purpose, f"consent:{a.get('id')}"))
            todo.extend(("sync", c, pid, purpose, 0) for c in self._custodians(pid))
        elif t == "consent.revoked" and self._grantee_is_me(a.get("grantee", "")):
            dropped.append((pid, f"consent:{a.get('id')}"))
        elif t in ("referral.created", "referral.admitted") and a.get("to") == self.org:
            source = f"referral:{a.get('id')}"
            interests.append((pid, "treatment", source))
            origin = a.get("from") or self._referral_from(int(a.get("id", 0)))
            if origin:
                todo.append(("sync", origin, pid, "treatment", 0))
        elif t == "referral.cancelled":
            dropped.append((pid, f"referral:{a.get('id')}"))
        elif t == "obligation.created" and a.get("from") == self.org:
            todo.append(("deliver", a.get("to", ""), pid, "treatment", int(a.get("referral", 0))))
        elif t == "referral.delivered" and a.get("to") == self.org:
            origin = self._referral_from(int(a.get("id", 0)))
            todo.append(("confirm", origin or "", pid, "treatment", int(a.get("id", 0))))
        elif t == "study.enrolled" and self._study_sponsor(a.get("study", "")) == self.org:
            purpose = f"research:{a.get('study')}"
            interests.append((pid, purpose, f"study:{a.get('study')}"))
            todo.extend(("sync", c, pid, purpose, 0) for c in self._custodians(pid))
        elif t == "study.withdrawn":
            dropped.append((pid, f"study:{a.get('study')}"))
        elif t == "erasure.notify" and a.get("holder") == self.org and a.get("action") == "erase":
            todo.append(("erase", "", pid, "", int(a.get("id", 0))))
        elif t == "record.shredded" and a.get("holder", self.org) != self.org:
            todo.append(("erase", a.get("holder", ""), pid, "", 0))

    def _referral_from(self, ref: int) -> str | None:
        found = self._referral(ref)
        return None if found is None else str(found["from"])

    def _referral(self, ref: int) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = queries.referral_status(self.node.engine, ref)
        except Exception:
            return None
        return found
