"""The consent vocabulary: data categories and purposes that consents, referrals and studies name.

Ingestion (`medledger.interop.metadata`) classifies every record into these categories. The
vocabulary is part of the consensus rules, so it must not change under a running chain
without a new contract version.
"""

from __future__ import annotations

from medledger.ledger.errors import Code, TxError

#: Data categories, in the order a patient portal shows them.
CATEGORIES: tuple[str, ...] = (
    "demographics",
    "encounters",
    "conditions",
    "allergies",
    "medications",
    "immunizations",
    "labs",
    "vital-signs",
    "observations",
    "diagnostic-reports",
    "imaging",
    "procedures",
    "care-plans",
    "documents",
    "administrative",
    "other",
)
CATEGORY_SET = frozenset(CATEGORIES)

#: "Every category", written alone in a category list.
ALL = "*"

#: Why data is used. Research only ever goes to a study; emergency is break-the-glass care.
PURPOSES: tuple[str, ...] = ("treatment", "emergency", "research")

#: Roles a practitioner needs to act for each purpose (an organisation key acts for all).
PURPOSE_ROLES: dict[str, frozenset[str]] = {
    "treatment": frozenset({"physician", "nurse", "emergency"}),
    "emergency": frozenset({"physician", "nurse", "emergency"}),
    "research": frozenset({"researcher"}),
}


def check_categories(categories: list[str], field: str = "categories") -> list[str]:
    """Either exactly `["*"]`, or distinct names from the vocabulary (kept sorted, canonical)."""
    if categories == [ALL]:
        return [ALL]
    if not categories:
        raise TxError(Code.INVALID_BODY, f"field {field}: at least one category (or '*')")
    for c in categories:
        if c not in CATEGORY_SET:
            raise TxError(
                Code.INVALID_BODY,
                f"field {field}: unknown category {c!r} (known: {', '.join(CATEGORIES)}, or '*')",
            )
    if len(set(categories)) != len(categories):
        raise TxError(Code.INVALID_BODY, f"field {field}: a category is repeated")
    return sorted(categories)


def check_purpose(purpose: str, field: str = "purpose") -> str:
    if purpose not in PURPOSES:
        raise TxError(
            Code.INVALID_BODY,
            f"field {field}: unknown purpose {purpose!r} (known: {', '.join(PURPOSES)})",
        )
    return purpose


def covers(categories: list[str], category: str) -> bool:
    return category in categories or ALL in categories
