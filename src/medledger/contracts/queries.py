"""Typed reads of committed state for code outside the contracts: one function per query.

Callers in the node, the API, the pages, the exchange and the CLI read the chain through
these functions and never spell a query path or a state key. Each function calls the
engine's `query(path, args)` underneath, so the same call works over the in-process solo
engine and over ABCI for the CometBFT RpcEngine; the paths are the ones the contracts
register (see each contract's `CONTRACTS`) plus the ledger's own two (`ledger/nonce`,
`ledger/tx`), so adding a read here changes no state and no app hash.

The argument is anything with the engine's `query` method (the `Engine` protocol); it is
typed structurally here so the contracts layer does not import the consensus layer.
"""

from __future__ import annotations

from typing import Any, Protocol

Row = dict[str, Any]


class Queryable(Protocol):
    """What these reads need of an engine: its committed-state query."""

    def query(self, path: str, data: Any = None) -> Any: ...


# --- the ledger itself (answered by ledger/app.py, not by a contract) --------------------


def nonce(engine: Queryable, signer: bytes) -> int:
    """The last nonce the chain accepted from this signer (0 before its first tx)."""
    return int(engine.query("ledger/nonce", {"signer": signer}))


def tx_location(engine: Queryable, tx_id: bytes) -> Row | None:
    """Where a committed tx is (`height`, `index`), or None if it is not committed."""
    found: Row | None = engine.query("ledger/tx", {"id": tx_id})
    return found


# --- access ------------------------------------------------------------------------------


def access_of_patient(engine: Queryable, pid: str) -> list[Row]:
    """The access log entries about a pid (who read what, when, on which basis)."""
    rows: list[Row] = engine.query("access/of_patient", {"pid": pid})
    return rows


def access_seq(engine: Queryable, key: bytes) -> int:
    """The last audit-journal sequence on the chain of the hospital `key` signs for (access
    v2; 0 on v1, which has none)."""
    if contract_versions(engine).get("access", 1) < 2:
        return 0
    return int(engine.query("access/seq", {"key": key}))


# --- authorize ---------------------------------------------------------------------------


def authorize_check(engine: Queryable, args: Row) -> Row:
    """The contract's decision for `{key | actor, pid, purpose, meta, at_ms}`."""
    decision: Row = engine.query("authorize/check", args)
    return decision


# --- consent -----------------------------------------------------------------------------


def consent_get(engine: Queryable, consent_id: int) -> Row | None:
    found: Row | None = engine.query("consent/get", {"id": consent_id})
    return found


def consent_list(engine: Queryable, pid: str) -> list[Row]:
    rows: list[Row] = engine.query("consent/list", {"pid": pid})
    return rows


def consent_requests(engine: Queryable, pid: str) -> list[Row]:
    rows: list[Row] = engine.query("consent/requests", {"pid": pid})
    return rows


# --- emergency ---------------------------------------------------------------------------


def emergency_list(
    engine: Queryable, *, org: str | None = None, pid: str | None = None, unreviewed: bool = False
) -> list[Row]:
    """Emergency openings, newest first, filtered by opener's org, pid or review state."""
    args: Row = {"unreviewed": unreviewed}
    if org is not None:
        args["org"] = org
    if pid is not None:
        args["pid"] = pid
    rows: list[Row] = engine.query("emergency/list", args)
    return rows


# --- erasure -----------------------------------------------------------------------------


def erasure_status(engine: Queryable, pid: str = "", request: int = 0) -> Row | None:
    """An erasure request, by its number or by the pid it concerns, once filed; else None."""
    found: Row | None = engine.query("erasure/status", {"id": request} if request else {"pid": pid})
    return found


def erasure_pending(engine: Queryable, pid: str) -> Row | None:
    """An erasure asked on the patient's behalf and still waiting its delay, else None."""
    found: Row | None = engine.query("erasure/pending", {"pid": pid})
    return found


# --- escrow ------------------------------------------------------------------------------


def escrow_status(engine: Queryable, org: str) -> Row:
    """A member's key escrow: `record` (holders, hashes, threshold, epoch) or None, whether it
    is `current`, the `holders` and `threshold` the params name today, and `rebind` (the
    executed rebind proposal that lets holders release) or `release_refused` (why not)."""
    found: Row = engine.query("escrow/status", {"org": org})
    return found


# --- governance --------------------------------------------------------------------------


def members(engine: Queryable) -> list[Row]:
    """The consortium's member hospitals (`org`, keys, ...)."""
    rows: list[Row] = engine.query("governance/members", {})
    return rows


def member_orgs(engine: Queryable) -> list[str]:
    return [str(m["org"]) for m in members(engine)]


def governance_params(engine: Queryable) -> dict[str, int]:
    """The consortium's governance parameters (`backup_replicas`, `custody_quota_mb`, ...)."""
    params: dict[str, int] = engine.query("governance/params", {})
    return params


def contract_versions(engine: Queryable) -> dict[str, int]:
    """The active version of each contract."""
    versions: dict[str, int] = engine.query("governance/contracts", {})
    return versions


def proposals(engine: Queryable, status: str | None = None) -> list[Row]:
    rows: list[Row] = engine.query(
        "governance/proposals", {} if status is None else {"status": status}
    )
    return rows


# --- identity ----------------------------------------------------------------------------


def practitioners(engine: Queryable, org: str | None = None) -> list[Row]:
    """Registered practitioners, of one hospital or (org None) of all."""
    rows: list[Row] = engine.query("identity/practitioners", {} if org is None else {"org": org})
    return rows


def actor_of_key(engine: Queryable, key: bytes) -> Row | None:
    """The practitioner or hospital a public key signs for, else None."""
    found: Row | None = engine.query("identity/actor", {"key": key})
    return found


# --- patients ----------------------------------------------------------------------------


def patient_notices(engine: Queryable, pid: str) -> Row:
    notices: Row = engine.query("patients/notices", {"pid": pid})
    return notices


# --- policies ----------------------------------------------------------------------------


def policy_list(engine: Queryable) -> list[Row]:
    rows: list[Row] = engine.query("policies/list", {})
    return rows


def policy_params(engine: Queryable) -> dict[str, int]:
    """The consortium's timing parameters (delays, windows) in milliseconds."""
    params: dict[str, int] = engine.query("policies/params", {})
    return params


def policy_schema(engine: Queryable) -> str:
    return str(engine.query("policies/schema", {}))


# --- records -----------------------------------------------------------------------------


def records_of_patient(engine: Queryable, pid: str, custodian: str | None = None) -> list[Row]:
    """The care-record index entries of a pid, of one custodian or of all."""
    args: Row = {"pid": pid} if custodian is None else {"pid": pid, "custodian": custodian}
    rows: list[Row] = engine.query("records/of_patient", args)
    return rows


def record_entry(engine: Queryable, rid: str) -> Row | None:
    found: Row | None = engine.query("records/entry", {"rid": rid})
    return found


def record_versions(engine: Queryable, rid: str | None) -> list[Row]:
    """Every registered version of a record, oldest first."""
    rows: list[Row] = engine.query("records/versions", {"rid": rid})
    return rows


#: records.MAX_CUSTODY_PAGE, the default page of records/custody_of (this module imports no
#: contract; tests/contracts/test_queries.py checks that the two agree).
CUSTODY_PAGE = 10_000


def custody_of(engine: Queryable, org: str) -> list[str]:
    """Every pid whose custody at org runs now (what a recovering hospital must get back),
    asked page by page."""
    pids: list[str] = []
    while True:
        args: Row = {"org": org, "after": pids[-1]} if pids else {"org": org}
        page: list[str] = engine.query("records/custody_of", args)
        pids.extend(page)
        if not page or len(page) < CUSTODY_PAGE:
            return pids


def shredded(engine: Queryable, holder: str, pid: str) -> Row | None:
    """The holder's on-chain statement that it shredded a pid's records, else None."""
    found: Row | None = engine.query("records/shredded", {"holder": holder, "pid": pid})
    return found


def shred_in_force(engine: Queryable, holder: str, pid: str) -> Row | None:
    """The holder's shred statement of pid if it still covers what the holder keeps of the
    patient: None without one, or once the patient came back to the holder (a record it
    registered after the statement: a new generation of keys that no erasure named)."""
    statement = shredded(engine, holder, pid)
    if statement is None:
        return None
    since = int(statement["time"])
    if any(int(r.get("time", 0)) > since for r in records_of_patient(engine, pid, holder)):
        return None
    return statement


# --- referral ----------------------------------------------------------------------------


def referral_status(engine: Queryable, referral_id: int) -> Row | None:
    found: Row | None = engine.query("referral/status", {"id": referral_id})
    return found


# --- research ----------------------------------------------------------------------------


def study(engine: Queryable, study_id: str) -> Row | None:
    found: Row | None = engine.query("research/study", {"study": study_id})
    return found


def studies(engine: Queryable) -> list[Row]:
    rows: list[Row] = engine.query("research/studies", {})
    return rows


def study_releases(engine: Queryable, study_id: str) -> list[Row]:
    rows: list[Row] = engine.query("research/releases", {"study": study_id})
    return rows


def study_query(engine: Queryable, query_id: str) -> Row | None:
    """A study query whole (research v2): document, approvals, answerers, answers, result."""
    found: Row | None = engine.query("research/query", {"query": query_id})
    return found


def study_queries(engine: Queryable, study_id: str) -> list[Row]:
    rows: list[Row] = engine.query("research/queries", {"study": study_id})
    return rows


def study_budget(engine: Queryable, study_id: str) -> Row | None:
    found: Row | None = engine.query("research/budget", {"study": study_id})
    return found


def research_of_patient(engine: Queryable, pid: str) -> list[Row]:
    """The studies a pid is enrolled in or was asked to join."""
    rows: list[Row] = engine.query("research/of_patient", {"pid": pid})
    return rows
