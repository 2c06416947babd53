"""The facts a study query can ask of one FHIR record, in the compact form the vault seals.

A study query (`contracts.study_query`) decides a record by its type, consent category, main
codings, numeric value with its unit, and clinical date; a Patient resource gives sex and
birth date. `record_facts` keeps exactly these, as a short list that JSON encodes compactly:
the vault keeps them per patient and consent category in the sealed research digest
(`vault/digest.py`; a Patient's fall in "demographics"), and
`research.evaluate` matches criteria against them, whether they come from the digest or from
a record just decrypted (one matcher for both).

`DIGESTER` is what a vault is given to keep its digests (its `version` is bound into each
digest's associated data: a change of the facts' shape makes every older digest fail to open,
and it is rebuilt from the records, never read in the old shape).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from medledger.contracts.study_query import SCALE
from medledger.interop.metadata import category_of, main_codings, types_in

#: The clinical date, first present (a Period's start), as the query document defines it.
_DATE_FIELDS = (
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "onsetDateTime",
    "onsetPeriod",
    "recordedDate",
    "authoredOn",
    "issued",
    "performedDateTime",
    "performedPeriod",
    "date",
)
#: Digits after the point in a fixed-point value (SCALE is a power of ten).
_SCALE_DIGITS = len(str(SCALE)) - 1
#: A stored value is kept within ±this (JSON integers are 64-bit); every query bound is far
#: inside it (`MAX_ABS_VALUE`), so comparisons and the matcher's clamp give the same result.
VALUE_LIMIT = 2**62
_SEXES = ("female", "male", "other", "unknown")

# Positions in a record's facts (a list: the digest holds thousands of them).
TYPE, CATEGORY, CODINGS, VALUE, UNIT, UNIT_CODE, DATE = range(7)
# A Patient's facts: ["Patient", sex, birth date].
SEX, BIRTH = 1, 2


def clinical_date(resource: Mapping[str, Any]) -> str:
    """The record's clinical date, `YYYY-MM-DD` (or the partial date it gives), else ""."""
    for name in _DATE_FIELDS:
        value = resource.get(name)
        if value is None:
            continue
        if isinstance(value, dict | Mapping):
            value = value.get("start")
        if isinstance(value, str) and len(value) >= 4:
            return value[:10]
    return ""


def fixed(value: Any) -> int | None:
    """A JSON number as a fixed-point integer (`SCALE`), rounded half to even; None when it is
    no finite number (a bool, a string, NaN)."""
    kind = type(value)
    if kind is int and -(10**18) < value < 10**18:  # larger ones: Decimal's precision decides
        return value * SCALE  # type: ignore[no-any-return]
    if kind is float:  # most lab values: "7.4" needs no Decimal (the same digits, exactly)
        text = repr(value)
        whole, _, decimals = text.partition(".")
        if decimals.isdigit() and len(decimals) <= _SCALE_DIGITS and whole.lstrip("-").isdigit():
            return int(whole + decimals.ljust(_SCALE_DIGITS, "0"))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        scaled = (Decimal(str(value)) * SCALE).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        return None
    return int(scaled) if scaled.is_finite() else None


def record_facts(resource: Mapping[str, Any]) -> list[Any]:
    """What a study query can ask of this record.

    A Patient: `["Patient", sex, birth date]` (sex one of female/male/other/unknown, else "";
    the birth date as given, else ""). Any other resource: `[type, category, [[system, code],
    ...], value, unit, unit code, clinical date]`, the value fixed point (`SCALE`) or None
    when the record has no numeric valueQuantity (then the units are "")."""
    rt = resource.get("resourceType")
    if rt == "Patient":
        gender, birth = resource.get("gender"), resource.get("birthDate")
        return [
            "Patient",
            gender if gender in _SEXES else "",
            birth if isinstance(birth, str) else "",
        ]
    value: int | None = None
    unit = code = ""
    q = resource.get("valueQuantity")
    if isinstance(q, dict | Mapping):
        value = fixed(q.get("value"))
        if value is not None:
            value = min(max(value, -VALUE_LIMIT), VALUE_LIMIT)
            unit, code = str(q.get("unit") or ""), str(q.get("code") or "")
    return [
        str(rt) if rt is not None else "",
        category_of(resource),
        [list(pair) for pair in main_codings(resource)],
        value,
        unit,
        code,
        clinical_date(resource),
    ]


class ResearchDigester:
    """`record_facts` with the record's consent category and the version of its shape, as
    `Vault` takes a digester (it keeps a patient's facts one sealed row per category)."""

    version = "research-facts/1"

    def __call__(self, resource: dict[str, Any]) -> tuple[str, list[Any]]:
        return category_of(resource), record_facts(resource)

    def types_in(self, categories: Collection[str]) -> frozenset[str] | None:
        return types_in(categories)


DIGESTER = ResearchDigester()
