"""medledger's contracts, registered in one place.

Each contract module owns its messages, state (a key prefix), handlers and queries, and
exposes `CONTRACTS`: every version it knows. Governance activates one version of each. The
vocabulary of consent categories and purposes (`categories`) lives here too; `interop`
classifies records into it.

May import: ledger (and host). Pure functions over explicit state: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from medledger.ledger.contract import Contract, Registry
from medledger.ledger.errors import Code, TxError


def all_contracts() -> list[Contract]:
    from medledger.contracts import (
        access,
        authorize,
        consent,
        emergency,
        erasure,
        escrow,
        governance,
        identity,
        patients,
        policies,
        records,
        referral,
        research,
        research_queries,
    )

    return [
        *governance.CONTRACTS,
        *identity.CONTRACTS,
        *records.CONTRACTS,
        *access.CONTRACTS,
        *patients.CONTRACTS,
        *policies.CONTRACTS,
        *consent.CONTRACTS,
        *emergency.CONTRACTS,
        *referral.CONTRACTS,
        *research.CONTRACTS,
        *research_queries.CONTRACTS,
        *erasure.CONTRACTS,
        *authorize.CONTRACTS,
        *escrow.CONTRACTS,
    ]


def default_versions() -> dict[str, int]:
    """The version of each contract a new consortium starts with: the newest."""
    latest: dict[str, int] = {}
    for c in all_contracts():
        latest[c.name] = max(latest.get(c.name, 0), c.version)
    return latest


def default_registry() -> Registry:
    return Registry(all_contracts())


def check_genesis_params(params: dict[str, Any], versions: dict[str, int]) -> None:
    """Refuse, before a new genesis is written, a parameter that no contract knows or that a
    vote under these contract `versions` could not set (out of bounds, a crossed pair):
    TxError naming it. A node's InitChain applies the same rule (`replayed_genesis_params`)."""
    unknown = unknown_genesis_params(params)
    if unknown:
        raise TxError(Code.INVALID_BODY, f"field params.{unknown[0]}: no such parameter")
    replayed_genesis_params(params, versions)


def replayed_genesis_params(params: dict[str, Any], versions: dict[str, int]) -> None:
    """Refuse what a node's InitChain refuses of a genesis's parameters under its contract
    `versions` (governance.genesis_params, policies.genesis_params: from governance v5 a
    vote's rule, before it a value int() cannot read; from v6 a name no contract knows),
    TxError naming it. Before v6 unknown names are ignored there: `unknown_genesis_params` lists
    them."""
    from medledger.contracts import governance, policies

    governance.genesis_params(params, versions.get("governance", 0))
    policies.genesis_params(params, versions.get("governance", 0))


def unknown_genesis_params(params: dict[str, Any]) -> list[str]:
    """The names among a genesis's parameters that no contract knows (InitChain refuses them
    from governance v6, ignores them before)."""
    from medledger.contracts import governance, policies

    known = {*governance.DEFAULT_PARAMS, *policies.DEFAULT_PARAMS}
    return sorted(name for name in params if name not in known)
