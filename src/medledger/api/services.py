"""What the API needs from one hospital's node, gathered in one object.

The API is a thin layer: it authenticates the caller, asks `decide` whether the access is
allowed (the consortium's single `authorize`, through the ledger), records every access or
denial on the chain, and serves the vault's bytes as they were received. A write is allowed
by `author_of`: the token's practitioner as the chain knows them at that moment.

Signed-out tokens (`SignedOut`) are kept in the hospital home (`signed-out-tokens`, one
`<token id> <exp>` a line) until they expire, so a restart of the node does not bring a
signed-out token back. The id is `tokens.content_id`: the hash of the decoded header and
payload, so no re-spelling of a token (tokens decode strictly anyway) escapes a sign-out.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medledger.api.outcomes import FhirError
from medledger.api.tokens import Claims, outside_launch, patient_of
from medledger.contracts import queries
from medledger.contracts.authorize import Decision
from medledger.host.secretfile import SecretFileExists, write_secret
from medledger.ledger.keys import SigningKey
from medledger.node import Node, decisions
from medledger.node.ingest import Ingestor
from medledger.vault import Vault

_PRACTITIONER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Request bodies: FHIR writes up to this many bytes (config.json `api.max_body_bytes`),
#: page forms up to `api.max_form_bytes`. Larger ones are refused with 413 unread.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_FORM_BYTES = 64 * 1024
_RIDS_PER_ENTRY = 200  # the contract takes up to access.MAX_RIDS


def issuer_key(home: Path) -> SigningKey:
    """The hospital's built-in token issuer key (made on first use, mode 0600)."""
    path = home / "keys" / "issuer.key"
    if not path.exists():
        # Never replaced once made: a second worker racing here keeps the first one's key.
        with contextlib.suppress(SecretFileExists):
            write_secret(path, SigningKey.generate().seed.hex() + "\n")
    return SigningKey.from_file(path)


class SignedOut:
    """Tokens signed out before their expiry (by `Claims.token_id`), kept in a file until then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._until: dict[str, int] = {}
        now = time.time()
        if path.exists():
            for line in path.read_text().splitlines():
                token_id, _, exp = line.partition(" ")
                if exp.isdigit() and int(exp) >= now:
                    self._until[token_id] = int(exp)

    def revoke(self, token_id: str, expires: int) -> None:
        with self._lock:
            now = time.time()
            self._until = {t: e for t, e in self._until.items() if e >= now}
            self._until[token_id] = expires
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(f"{t} {e}\n" for t, e in sorted(self._until.items())))
            tmp.replace(self.path)

    def revoked(self, token_id: str) -> bool:
        return token_id in self._until


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
        self.signed_out = SignedOut(self.node.config.home / "signed-out-tokens")
        # The pages' CSRF tokens are keyed by this secret (derived, so they survive a restart).
        self.csrf_secret = hashlib.sha256(b"medledger page forms\0" + key.seed).digest()
        api = self.node.config.api
        self.max_body_bytes = api.max_body_bytes or MAX_BODY_BYTES
        self.max_form_bytes = api.max_form_bytes or MAX_FORM_BYTES

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
            return f"patient:{ident}"  # who signed in, whatever launch context they carry
        return f"org:{self.org}"

    def practitioner_key(self, claims: Claims) -> bytes | None:
        kind, _, ident = claims.subject.partition("/")
        if kind != "Practitioner" or not _PRACTITIONER_ID.match(ident):
            return None  # never a path outside keys/practitioners/
        path = self.node.config.practitioner_key_path(ident)
        if not path.exists():
            return None
        return SigningKey.from_file(path).public_key

    def author_of(self, claims: Claims) -> str:
        """Who writes a record, as the access trail names them; 403 unless they may, now.

        A practitioner must be registered by this hospital on the chain, active (a revoked
        practitioner's unexpired token writes nothing) and hold a care role; a backend service
        with a system/ scope writes as the hospital itself; a patient writes no records."""
        from medledger.contracts.records import WRITER_ROLES

        kind, _, ident = claims.subject.partition("/")
        if kind == "Patient" or claims.patient is not None:  # no writes in a launch context
            raise FhirError(403, "forbidden", "patients cannot create records through this API")
        if kind == "Device" and any(s.startswith("system/") for s in claims.scopes):
            return f"org:{self.org}"
        if kind != "Practitioner":
            raise FhirError(
                403, "forbidden", f"{claims.subject} is neither a practitioner nor a system"
            )
        key = self.practitioner_key(claims)
        actor = None if key is None else queries.actor_of_key(self.node.engine, key)
        if actor is None or actor["org"] != self.org or actor["practitioner"] != ident:
            raise FhirError(
                403, "forbidden", f"{claims.subject} is not a practitioner registered by {self.org}"
            )
        if not actor["active"]:
            raise FhirError(
                403, "forbidden", f"{claims.subject} is revoked at {self.org}: writes nothing"
            )
        if not WRITER_ROLES.intersection(actor["roles"]):
            raise FhirError(
                403,
                "forbidden",
                f"role: {', '.join(actor['roles'])} may not write records "
                f"(needs one of {', '.join(sorted(WRITER_ROLES))})",
            )
        return f"practitioner:{self.org}/{ident}"

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
        """Patients may read their own data; everyone else goes through the ledger's authorize.

        A token is the patient only by `patient_of` (subject and launch context agree); a
        practitioner's launch context narrows them to that patient and grants nothing: they
        are still authorized as themselves (status, role, consent...)."""
        own = patient_of(claims)
        if own is not None:
            if own == pid:
                return Decision(True, "patient", "")
            return Decision(False, "", "other patient: a patient token only reaches its own")
        if outside_launch(claims, pid):
            return Decision(
                False, "", "other patient: the token's launch context is another patient"
            )
        if claims.subject.startswith("Practitioner/"):
            key = self.practitioner_key(claims)
            if key is None:
                why = f"unknown actor: {claims.subject} is not a practitioner of {self.org}"
                return Decision(False, "", why)
        elif claims.subject.startswith("Device/") and any(
            s.startswith("system/") for s in claims.scopes
        ):
            key = self.node.org_key.public_key  # a backend service acting for the hospital
        else:
            return Decision(
                False, "", f"unknown actor: {claims.subject} is neither a practitioner nor a system"
            )
        return decisions.decide(self.node.engine, key, pid, meta, purpose)

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

        The contract bounds every field (MAX_BASIS, MAX_RIDS): a long list of records becomes
        several entries, in several txs if need be. A denial's reason goes on the chain as its
        code (access.denial_code); the wording is the caller's answer, never on the chain.
        """
        access = self.access(claims, pid, action, purpose)
        self.log(decisions.audit(access, decision, rids, per_entry=_RIDS_PER_ENTRY), wait=wait)

    def access(self, claims: Claims, pid: str, action: str, purpose: str) -> decisions.Access:
        """The holder of `claims` acting at this hospital: a hospital's own act, no request."""
        return decisions.Access(self.actor_of(claims), self.org, pid, action, purpose)

    def decide_and_audit(
        self,
        claims: Claims,
        pid: str,
        meta: dict[str, Any],
        purpose: str,
        action: str,
        rids: list[str],
    ) -> decisions.Audited:
        """`decide`, and the audit entries naming `rids` (write them with `log`)."""
        return decisions.decide_and_audit(
            lambda: self.decide(claims, pid, meta, purpose),
            self.access(claims, pid, action, purpose),
            rids,
            per_entry=_RIDS_PER_ENTRY,
        )

    def log(self, entries: list[dict[str, Any]], *, wait: bool) -> None:
        """Write access entries through the hospital's audit journal (node/audit.py): durable
        here before this returns, so the caller may serve; on the chain in the next shared
        `access.log` tx. `wait` until committed (remote reads). If the journal cannot keep
        them, nothing is served: 503 with the reason, never a traceback."""
        self.log_later(entries, wait=wait)()

    def log_later(self, entries: list[dict[str, Any]], *, wait: bool) -> Callable[[], None]:
        """`log` in two steps: the entries are queued now, and the call returned returns once
        they are durable (raising as `log` does). Call it before anything leaves: a read
        prepares its answer meanwhile instead of waiting for the disk first."""
        from medledger.node.audit import JournalUnavailable
        from medledger.node.wallet import TxRejected

        try:
            logging = self.node.audit.begin(entries, wait=wait)
        except JournalUnavailable as exc:
            raise FhirError(503, "transient", f"the access cannot be recorded: {exc}") from None

        def durable() -> None:
            try:
                logging.end()
            except JournalUnavailable as exc:
                raise FhirError(503, "transient", f"the access cannot be recorded: {exc}") from None
            except (TimeoutError, TxRejected) as exc:
                raise FhirError(
                    503, "transient", f"the access was not recorded on the ledger: {exc}"
                ) from None

        return durable
