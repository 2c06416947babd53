"""What one hospital's own records say of its enrolled patients, for one study query.

`match` decides a FHIR resource against a criterion of the query (the record-level rules of
docs/architecture.md, "Federated study queries"); `facts` reads the hospital's vault for a set
of patients and returns one `PatientFacts` per patient: sex and birth date from its Patient
resource, which criteria some record matched, the patient's value per `value_of`, and how many
records of a cohort code came in another unit.

What is read, and how:
- only the records this hospital is custodian of (`is_copy` false): a copy held of another
  hospital's record is that hospital's to report (it sends its own partial facts);
- only the latest version of each record;
- only records whose type can fall in one of the query's categories: a record of any other
  type is never decrypted (`interop.metadata.categories_of_type`); an Observation or a
  DiagnosticReport, whose category depends on its content, is decrypted and dropped unused
  when `category_of` puts it elsewhere;
- the Patient resource, for gender and birthDate, only when the query filters or stratifies
  by sex or age, and only of the patients whose records here matched the cohort;
- two passes of `Vault.latest_records` (one statement per few hundred patients, each key
  set unwrapped once): the clinical records of the wanted types, then the matched
  patients' Patient resources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import orjson

from medledger.contracts.study_query import (
    MAX_ABS_VALUE,
    SCALE,
    Criterion,
    PatientFacts,
    StudyQuery,
    better_value,
    criteria,
)
from medledger.interop.metadata import categories_of_type, category_of, main_codings
from medledger.vault import ReadKeys, Vault

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


@dataclass(frozen=True)
class Match:
    """One record against one criterion: `ok`, and the record's (date, value) when it has a
    numeric value; `unit_mismatch` when only its unit kept it out."""

    ok: bool
    value: tuple[str, int] | None = None
    unit_mismatch: bool = False


NO = Match(False)


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


#: Digits after the point in a fixed-point value (SCALE is a power of ten).
_SCALE_DIGITS = len(str(SCALE)) - 1


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


def _quantity(resource: Mapping[str, Any]) -> tuple[int, str, str] | None:
    q = resource.get("valueQuantity")
    if q is None or not isinstance(q, dict | Mapping):
        return None
    value = fixed(q.get("value"))
    if value is None:
        return None
    return value, str(q.get("unit") or ""), str(q.get("code") or "")


def wanted_codes(criterion: Criterion) -> frozenset[tuple[str, str]]:
    """The criterion's (system, code) pairs, as `match` compares them."""
    return frozenset((c.system, c.code) for c in criterion.codes)


def match(
    resource: Mapping[str, Any],
    criterion: Criterion,
    codes: frozenset[tuple[str, str]] | None = None,
) -> Match:
    """Does this record match the criterion (type, codes, unit and value range, date range)?
    `codes`: `wanted_codes(criterion)`, when the caller made it once for many records."""
    if resource.get("resourceType") not in criterion.types:
        return NO
    if criterion.codes:
        wanted = wanted_codes(criterion) if codes is None else codes
        if wanted.isdisjoint(main_codings(resource)):
            return NO
    quantity = _quantity(resource)
    if criterion.unit and quantity is not None and criterion.unit not in quantity[1:]:
        return Match(False, unit_mismatch=True)
    bounded = criterion.value_min is not None or criterion.value_max is not None
    if (bounded or criterion.unit) and quantity is None:
        return NO
    if quantity is not None and (
        (criterion.value_min is not None and quantity[0] < criterion.value_min)
        or (criterion.value_max is not None and quantity[0] > criterion.value_max)
    ):
        return NO
    date = clinical_date(resource)
    if criterion.date_from or criterion.date_to:
        if not date:
            return NO
        if criterion.date_from and date < criterion.date_from:
            return NO
        # A partial date ("2024-03") compares below any day of its month: inside [from, to].
        if criterion.date_to and date > criterion.date_to:
            return NO
    if quantity is None:
        return Match(True)
    # A criterion without a value range keeps any value (a viral load in millions): within
    # the bounds a partial may carry; a value statistic asks a range inside them anyway.
    return Match(True, (date, min(max(quantity[0], -MAX_ABS_VALUE), MAX_ABS_VALUE)))


def needs_demographics(q: StudyQuery) -> bool:
    """The Patient resource is read only when sex or age filters or stratifies the query."""
    return bool(q.sexes or q.uses_age or "sex" in q.stratify)


class Evaluator:
    """Reads the vault once for a query and a set of patients (this hospital's records)."""

    def __init__(self, vault: Vault, q: StudyQuery, categories: Iterable[str]) -> None:
        self.vault = vault
        self.q = q
        self.categories = frozenset(categories)
        self.criteria = criteria(q)
        self.codes = {name: wanted_codes(c) for name, c in self.criteria.items()}
        self.types = frozenset(t for c in self.criteria.values() for t in c.types)
        self.demographics = needs_demographics(q)
        #: record versions decrypted (what the tests check was never read)
        self.decrypted = 0

    def _wanted(self, resource_type: str) -> bool:
        return resource_type in self.types and bool(
            categories_of_type(resource_type) & self.categories
        )

    def facts(self, pids: Iterable[str]) -> dict[str, PatientFacts]:
        """{pid: facts} for each patient this hospital holds own records of (others left out).

        The clinical records first; then the Patient resource (sex, birth date) only of the
        patients whose records matched the cohort here: for any other, another custodian's
        facts or none decide, and their demographics are not read."""
        wanted = [t for t in sorted(self.types) if t != "Patient" and self._wanted(t)]
        found: dict[str, PatientFacts] = {}
        keys = ReadKeys()  # a patient's keys, unwrapped in the first pass, serve the second
        for info, data in self.vault.latest_records(pids, decrypt=wanted, keys=keys):
            facts = found.get(info.pid)
            if facts is None:
                facts = found[info.pid] = PatientFacts(matched=dict.fromkeys(self.criteria, False))
            if data is not None:
                self.decrypted += 1
                self._read(facts, orjson.loads(data))
        if self.demographics:
            matched = [pid for pid, facts in found.items() if facts.matched.get("cohort")]
            for info, data in self.vault.latest_records(
                matched, decrypt=["Patient"], types=["Patient"], keys=keys
            ):
                if data is not None:
                    self.decrypted += 1
                    self._read(found[info.pid], orjson.loads(data))
        return found

    def _read(self, facts: PatientFacts, resource: Any) -> None:
        if not isinstance(resource, dict):
            return
        if resource.get("resourceType") == "Patient":
            gender, birth = resource.get("gender"), resource.get("birthDate")
            facts.sex = gender if gender in ("female", "male", "other", "unknown") else ""
            facts.birth_date = birth if isinstance(birth, str) else ""
            return
        if category_of(resource) not in self.categories:
            return
        for name, criterion in self.criteria.items():
            m = match(resource, criterion, self.codes[name])
            if name != "cohort":
                facts.matched[name] = facts.matched[name] or m.ok
                continue
            if m.unit_mismatch:
                facts.unit_mismatch += 1
            if m.ok:
                facts.matched[name] = True
                if m.value is not None:  # what `PatientFacts.merge` keeps, without a copy
                    facts.value = (
                        m.value
                        if facts.value is None
                        else better_value(facts.value, m.value, self.q.value_of)
                    )
