"""`sync` jobs: obtain the custodian's metadata keys, then copy what authorize allows.

A job asks for the keys when it lacks one of the categories `authorize` grants it (asked on
this replica, category by category, as the gateway will), opens the custodian's index entries
its keys open, asks `authorize` locally what the custodian will grant, fetches the records it
does not hold yet (each checked against its commitment) and keeps them as copies.
"""

from __future__ import annotations

from typing import Any

from medledger.contracts import queries
from medledger.contracts.categories import CATEGORIES
from medledger.contracts.identity import resolve_actor
from medledger.exchange.client import ExchangeError
from medledger.exchange.policy import record_meta
from medledger.exchange.sync._base import AgentBase
from medledger.exchange.sync.store import Job, _now_ms
from medledger.node.indexing import MetadataError, epoch_of, open_meta
from medledger.vault import RecordConflict

FETCH_CHUNK = 200


def _categories(keys: dict[int, dict[str, bytes]]) -> set[str]:
    """The categories whose keys are held for the latest epoch held."""
    return set(keys[max(keys)]) if keys else set()


class PrefetchJobs(AgentBase):
    """The `sync` job: prefetch what this hospital is entitled to."""

    def _sync(self, job: Job) -> str:
        """Obtain the metadata key if needed, then copy what authorize allows and is missing.

        For research (`research:<study>`) only the key is obtained: studies get released
        datasets from custodians, not copies of records.
        """
        pid, custodian = job.pid, job.custodian
        purpose, _, study = job.purpose.partition(":")
        if self.vault.is_erased(pid):
            return "patient erased here"
        entries = [
            e
            for e in queries.records_of_patient(self.node.engine, pid, custodian)
            if not e.get("shredded")
        ]
        if not entries:
            return "nothing held there"
        entitled = self._entitled(custodian, pid, purpose, study or None)
        if not entitled:
            return "nothing grants this hospital access there"
        # Ask again when a category now granted has no key here, or an entry names an epoch
        # whose keys this hospital lacks (an entitlement ended since: the epoch moved on).
        epochs = {epoch_of(e["meta_ct"]) for e in entries}
        keys = self.store.keys(custodian, pid)
        if keys is None or not entitled <= _categories(keys) or not epochs <= set(keys):
            keys = self.client.metadata_key(custodian, pid, purpose, study or None)
            self.store.put_keys(custodian, pid, keys)
            if not epochs <= set(keys):  # the custodian's replica is behind this one's
                raise ExchangeError(custodian, 0, "metadata keys of a later epoch not served yet")
        if purpose == "research":
            categories = ", ".join(sorted(_categories(keys)))
            return f"metadata keys held for {categories} (research: no copies)"
        held: dict[str, int] = {}
        for info in self.vault.records_of(pid):
            if info.is_copy and info.custodian == custodian:
                held[info.rid] = max(held.get(info.rid, 0), info.version)
        wanted = self._wanted(entries, held, keys, pid, purpose)
        stored, missing = 0, []
        for i in range(0, len(wanted), FETCH_CHUNK):
            fetched = self.client.fetch(custodian, pid, wanted[i : i + FETCH_CHUNK], purpose)
            stored += self.store_copies(fetched.records)
            missing += fetched.missing
        if missing:  # listed in the index but not served: try again later
            raise ExchangeError(custodian, 0, f"{len(missing)} records not served yet")
        return f"{stored} records copied"

    def _entitled(self, custodian: str, pid: str, purpose: str, study: str | None) -> set[str]:
        """The categories of this custodian's records authorize grants this hospital now.

        Asked before requesting metadata keys (whose entries cannot be read yet): the same
        authorize, on this replica, for each category, as the gateway asks before sealing
        them. So a hospital never asks, and fills the custodian's audit trail with a denial,
        where nothing can grant it access, and asks again when a new entitlement (a broader
        consent, an emergency) covers a category whose key it lacks.
        """
        now = _now_ms()
        granted: set[str] = set()
        with self.policy.state() as state:
            me = resolve_actor(state, self.node.org_key.public_key)
            if me is None:
                return granted
            for category in CATEGORIES:
                meta: dict[str, Any] = {"custodian": custodian, "category": category, "type": ""}
                if study is not None:
                    meta["study"] = study
                if self.policy.decide(me, pid, meta, purpose, now, state=state).allowed:
                    granted.add(category)
        return granted

    def _wanted(
        self,
        entries: list[dict[str, Any]],
        held: dict[str, int],
        keys: dict[int, dict[str, bytes]],
        pid: str,
        purpose: str,
    ) -> list[str]:
        """The entries not held yet that authorize will let this hospital read now.

        Only the entries of the categories whose keys this hospital holds open; the others are
        of categories it is not granted, and stay closed (nothing says which they are).
        """
        wanted: list[str] = []
        now = _now_ms()
        with self.policy.state() as state:
            me = resolve_actor(state, self.node.org_key.public_key)
            if me is None:
                return []
            for e in entries:
                if held.get(e["rid"], 0) >= e["version"]:
                    continue
                try:
                    meta = open_meta(keys, e["rid"], e["version"], e["meta_ct"])
                except MetadataError:
                    continue
                d = self.policy.decide(me, pid, record_meta(e, meta), purpose, now, state=state)
                if d.allowed:
                    wanted.append(e["rid"])
        return wanted

    def store_copies(self, records: list[Any]) -> int:
        """Store checked records as copies under this hospital's keys; returns how many."""
        stored = 0
        for r in records:
            try:
                self.vault.put(
                    r.pid,
                    r.rid,
                    r.version,
                    r.resource,
                    resource_type=r.resource_type,
                    custodian=r.custodian,
                    is_copy=True,
                    salt=r.salt,
                )
                stored += 1
            except RecordConflict:
                continue  # held already (a concurrent job, or a delivery)
        return stored
