"""`erase` jobs: crypto-shred the copies held here, then attest on the chain."""

from __future__ import annotations

from typing import Any

from medledger.contracts import queries
from medledger.contracts.erasure import Attest
from medledger.exchange.sync._base import AgentBase
from medledger.exchange.sync.store import Job
from medledger.node.replicas import drop_erased
from medledger.node.shredding import state_shredded
from medledger.vault import PatientErased
from medledger.vault.replication import item_name


class ErasureJobs(AgentBase):
    """The `erase` job."""

    def _erase(self, job: Job) -> str:
        """Crypto-shred the copies held here, then attest on the chain.

        Only copies: a hospital's own care records are erased by its DPO (`medledger erase`),
        never by the agent. A custodian that shredded its records (`records.shredded`, no
        request) takes only the copies of its records with it: the copies of other
        custodians, whose records still exist, may lawfully stay. A patient's erasure request
        takes every copy. A holder of copies only then erases the patient as a whole (their
        patient key), posts `records.shredded` and attests with it. A holder that also keeps
        its own care records (under legal retention) shreds the copies apart (their key
        sets, see vault/keys.py) and attests with the vault's receipt digest itself: a
        `records.shredded` entry would tell every node that its own records were erased.
        """
        pid = job.pid
        if job.ref == 0:
            return self._erase_copies_of(pid, job.custodian)
        try:
            infos = self.vault.records_of(pid)
        except PatientErased:
            infos = []
        if any(not i.is_copy for i in infos):
            return self._erase_copies_apart(job)
        since = self.vault.journal_head()
        receipt = self.vault.erase(pid)
        self.store.forget_keys(pid)
        with self.store.tx() as db:
            db.execute("DELETE FROM interest WHERE pid = ?", (pid,))
            db.execute("DELETE FROM jobs WHERE pid = ? AND kind = 'sync'", (pid,))
        # The wrapped key goes from this hospital's replica peers too, trash included, once
        # the statement is committed (node/shredding.py, as for a custodian's erasure).
        if queries.shredded(self.node.engine, self.org, pid) is None:
            state_shredded(self.node, self.vault, pid, receipt, since)
        else:  # a retried job, or an earlier generation's statement: the key still goes
            drop_erased(self.node, self.vault, since, (item_name("key", pid),))
        attested = self._attest(pid, job.ref, receipt.records_shredded + receipt.copies_shredded)
        self.vault.purge_pending()
        return f"{receipt.copies_shredded} copies erased" + (", attested" if attested else "")

    def _erase_copies_of(self, pid: str, custodian: str) -> str:
        """The custodian shredded its records of the patient: shred the copies held of them
        (their key set) and forget its metadata key, nothing else. No request asks for an
        attestation, and no `records.shredded` is posted: this hospital erased no patient.
        From then on the vault refuses new copies of that custodian's records of the patient
        until the DPO reinstates them (`medledger vault reinstate`)."""
        since = self.vault.journal_head()
        receipt = self.vault.erase_copies(pid, custodian)  # PatientErased: nothing left here
        self.store.forget_keys(pid, custodian)
        with self.store.tx() as db:
            db.execute(
                "DELETE FROM jobs WHERE pid = ? AND kind = 'sync' AND custodian = ?",
                (pid, custodian),
            )
        drop_erased(self.node, self.vault, since)  # no attestation: the journal retries
        if not receipt.copies_shredded:
            return f"no copy of {custodian}'s records held here"
        self.vault.purge_pending()
        return f"{receipt.copies_shredded} copies of {custodian}'s records erased"

    def _erase_copies_apart(self, job: Job) -> str:
        """Shred every copy of the patient held here while this hospital's own care records
        stay, and attest the request with the vault's receipt."""
        pid = job.pid
        since = self.vault.journal_head()
        receipt = self.vault.erase_copies(pid)  # idempotent: a retry attests the same
        self.store.forget_keys(pid)
        with self.store.tx() as db:
            db.execute("DELETE FROM interest WHERE pid = ?", (pid,))
            db.execute("DELETE FROM jobs WHERE pid = ? AND kind = 'sync'", (pid,))
        replicas = drop_erased(self.node, self.vault, since)  # the copies' key sets
        attested = self._attest(
            pid,
            job.ref,
            receipt.copies_shredded,
            receipt.digest,
            copies_only=True,
            replicas=replicas,
        )
        self.vault.purge_pending()
        return f"{receipt.copies_shredded} copies erased apart from the own care records" + (
            ", attested" if attested else ""
        )

    def _obligation(self, pid: str, request: int) -> dict[str, Any] | None:
        try:
            status = queries.erasure_status(self.node.engine, pid, request)
        except Exception:
            return None
        if not status:
            return None
        for ob in status.get("obligations", []):
            if ob["holder"] == self.org:
                ob["request"] = status["id"]
                found: dict[str, Any] = ob
                return found
        return None

    def _attest(
        self,
        pid: str,
        request: int,
        count: int,
        digest: bytes = b"",
        copies_only: bool = False,
        replicas: tuple[list[str], list[str]] = ([], []),
    ) -> bool:
        ob = self._obligation(pid, request)
        if ob is None or ob["status"] != "pending":
            return False
        custody = ob.get("custody")
        if copies_only and custody is not None and custody["status"] != "refused":
            # The care records' retention has run out: attesting now would attest their
            # erasure too, which is the DPO's act (`medledger erase`), not the agent's.
            return False
        dropped, pending = replicas
        self.node.wallet.send_message(
            Attest(
                request=ob["request"],
                digest=digest,
                records=count,
                replicas_dropped=dropped,
                replicas_pending=pending,
            )
        )
        return True
