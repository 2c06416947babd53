"""What the API needs from one hospital's node, gathered in one object.

The API is a thin layer: it authenticates the caller, asks `decide` whether the access is
allowed (the consortium's single `authorize`, through the ledger), records every access or
denial on the chain, and serves the vault's bytes as they were received.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medledger.api.tokens import Claims
from medledger.ingest import Ingestor
from medledger.ledger.keys import SigningKey, write_secret
from medledger.node import Node
from medledger.vault import Vault

_PRACTITIONER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_RIDS_PER_ENTRY = 200  # the contract takes up to access.MAX_RIDS
_ENTRIES_PER_TX = 25  # 5,000 rids: well inside a tx's size limit


def issuer_key(home: Path) -> SigningKey:
    """The hospital's built-in token issuer key (made on first use, mode 0600)."""
    path = home / "keys" / "issuer.key"
    if not path.exists():
        write_secret(path, SigningKey.generate().seed.hex() + "\n")
    return SigningKey.from_file(path)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    basis: str
    reason: str


@dataclass
class HospitalServices:
    node: Node
    vault: Vault
    base_url: str = "http://127.0.0.1"
    trusted_issuers: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _meta_cache: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(self.node, self.vault)
        key = issuer_key(self.node.config.home)
        self.trusted_issuers.setdefault(self.issuer_id, key.public_key)

    @property
    def org(self) -> str:
        return self.node.config.org

    @property
    def issuer_id(self) -> str:
        return f"urn:medledger:{self.org}:issuer"

    @property
    def audience(self) -> str:
        return f"urn:medledger:{self.org}:fhir"

    # -- who is asking ---------------------------------------------------------------
    def actor_of(self, claims: Claims) -> str:
        kind, _, ident = claims.subject.partition("/")
        if kind == "Practitioner":
            return f"practitioner:{self.org}/{ident}"
        if kind == "Patient":
            return f"patient:{claims.patient or ident}"
        return f"org:{self.org}"

    def practitioner_key(self, claims: Claims) -> bytes | None:
        kind, _, ident = claims.subject.partition("/")
        if kind != "Practitioner" or not _PRACTITIONER_ID.match(ident):
            return None  # never a path outside keys/practitioners/
        path = self.node.config.practitioner_key_path(ident)
        if not path.exists():
            return None
        return SigningKey.from_file(path).public_key

    # -- deciding and recording ---------------------------------------------------------
    def record_meta(self, info: Any) -> dict[str, Any]:
        """What authorize needs to know of a stored record: custodian, type and category."""
        cache_key = (info.rid, info.version)
        meta = self._meta_cache.get(cache_key)
        if meta is None:
            import orjson

            from medledger.interop.metadata import category_of

            resource = orjson.loads(self.vault.get(info.rid, info.version))
            meta = {
                "custodian": info.custodian,
                "type": info.resource_type,
                "category": category_of(resource),
            }
            if len(self._meta_cache) > 50_000:
                self._meta_cache.clear()
            self._meta_cache[cache_key] = meta
        return meta

    def decide(self, claims: Claims, pid: str, meta: dict[str, Any], purpose: str) -> Decision:
        """Patients may read their own data; everyone else goes through the ledger's authorize."""
        if claims.patient is not None:
            if claims.patient == pid:
                return Decision(True, "patient", "")
            return Decision(False, "", "a patient token only reaches its own patient")
        if claims.subject.startswith("Practitioner/"):
            key = self.practitioner_key(claims)
            if key is None:
                return Decision(False, "", f"{claims.subject} is not a practitioner of {self.org}")
        elif claims.subject.startswith("Device/") and any(
            s.startswith("system/") for s in claims.scopes
        ):
            key = self.node.org_key.public_key  # a backend service acting for the hospital
        else:
            return Decision(False, "", f"{claims.subject} is neither a practitioner nor a system")
        result = self.node.engine.query(
            "authorize/check",
            {
                "key": key,
                "pid": pid,
                "meta": meta,
                "purpose": purpose,
                "at_ms": int(time.time() * 1000),
            },
        )
        return Decision(bool(result["allowed"]), str(result["basis"]), str(result["reason"]))

    def record_access(
        self,
        claims: Claims,
        pid: str,
        action: str,
        purpose: str,
        decision: Decision,
        rids: list[str],
        *,
        wait: bool,
    ) -> None:
        """Write the access (or denial) on the chain; `wait` until committed for remote reads.

        The contract bounds every field (access.MAX_REASON, MAX_BASIS, MAX_RIDS): a reason is
        clipped, and a long list of records becomes several entries, in several txs if need be.
        """
        from medledger.contracts.access import MAX_REASON

        base = {
            "actor": self.actor_of(claims),
            "actor_org": self.org,
            "pid": pid,
            "action": action,
            "purpose": purpose,
            "outcome": "granted" if decision.allowed else "denied",
            "basis": decision.basis,
            "reason": decision.reason[:MAX_REASON],
        }
        # Every record served is named: large pages become several entries of one tx.
        chunks = [rids[i : i + _RIDS_PER_ENTRY] for i in range(0, len(rids), _RIDS_PER_ENTRY)]
        entries = [{**base, "rids": chunk} for chunk in chunks] or [{**base, "rids": []}]
        for start in range(0, len(entries), _ENTRIES_PER_TX):
            self._log(entries[start : start + _ENTRIES_PER_TX], wait)

    def _log(self, entries: list[dict[str, Any]], wait: bool) -> None:
        if wait:
            self.node.wallet.send("access.log", {"entries": entries})
        else:
            submitted = self.node.wallet.submit("access.log", {"entries": entries})
            if not submitted.accepted:
                from medledger.wallet import TxRejected

                raise TxRejected("access.log", submitted.check.code, submitted.check.log, "check")
