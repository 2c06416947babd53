"""medledger's contracts, registered in one place.

Each contract module owns its messages, state (a key prefix), handlers and queries, and
exposes `CONTRACTS`: every version it knows. Governance activates one version of each. The
vocabulary of consent categories and purposes (`categories`) lives here too; `interop`
classifies records into it.

May import: ledger (and host). Pure functions over explicit state: no I/O, no clock.
"""

from __future__ import annotations

from medledger.ledger.contract import Contract, Registry


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
