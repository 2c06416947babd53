"""What one hospital's own records say of its enrolled patients, for one study query.

`match` decides a FHIR resource against a criterion of the query (the record-level rules of
docs/architecture.md, "Federated study queries"), through the record's facts
(`interop.research_facts.record_facts`: type, category, codings, value and unit, date);
`facts` reads the hospital's vault for a set of patients and returns one `PatientFacts` per
patient: sex and birth date from its Patient resource, which criteria some record matched,
the patient's value per `value_of`, and how many records of a cohort code came in another
unit.

What is read, and how (`Evaluator(..., source=...)`):
- "digest" (the default): each patient's sealed research digest (`Vault.research_digests`),
  one row per consent category holding the facts of its latest own records, rebuilt from the
  records when stale. Only the rows of the consented categories the query's types can fall
  in are read and decrypted (a category the patient did not consent to is never processed
  for the study); of them, the facts of a type the query asks are used, as the record path
  below uses them; the "demographics" row (the Patient's facts) only of the patients whose
  records matched the cohort, when the query filters or stratifies by sex or age.
- "records": the records themselves (`Vault.latest_records`), two passes: the clinical
  records of the wanted types (a record of any other type is never decrypted; an
  Observation or a DiagnosticReport, whose category depends on its content, is decrypted
  and dropped unused when `category_of` puts it elsewhere), then the matched patients'
  Patient resources.
Either way: only the records this hospital is custodian of (`is_copy` false: a copy held of
another hospital's record is that hospital's to report), only the latest version of each.
The two give the same facts (tests/research/test_digest_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from medledger.contracts.study_query import (
    MAX_ABS_VALUE,
    Criterion,
    PatientFacts,
    StudyQuery,
    better_value,
    criteria,
)
from medledger.interop.metadata import categories_of_type
from medledger.interop.research_facts import (
    BIRTH,
    CATEGORY,
    CODINGS,
    DATE,
    DIGESTER,
    SEX,
    TYPE,
    UNIT,
    UNIT_CODE,
    VALUE,
    clinical_date,
    fixed,
    record_facts,
)
from medledger.vault import ReadKeys, Vault

__all__ = [
    "NO",
    "Evaluator",
    "Match",
    "clinical_date",
    "fixed",
    "match",
    "match_facts",
    "needs_demographics",
    "wanted_codes",
]


@dataclass(frozen=True)
class Match:
    """One record against one criterion: `ok`, and the record's (date, value) when it has a
    numeric value; `unit_mismatch` when only its unit kept it out."""

    ok: bool
    value: tuple[str, int] | None = None
    unit_mismatch: bool = False


NO = Match(False)


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
    return match_facts(record_facts(resource), criterion, codes)


def match_facts(
    facts: Sequence[Any],
    criterion: Criterion,
    codes: frozenset[tuple[str, str]] | None = None,
) -> Match:
    """`match` of a record given by its facts (`record_facts`, or a research digest's)."""
    if facts[TYPE] not in criterion.types:  # never "Patient" (CLINICAL_TYPES)
        return NO
    if criterion.codes:
        wanted = wanted_codes(criterion) if codes is None else codes
        if not any((system, code) in wanted for system, code in facts[CODINGS]):
            return NO
    value = facts[VALUE]
    if criterion.unit and value is not None and criterion.unit not in facts[UNIT : UNIT_CODE + 1]:
        return Match(False, unit_mismatch=True)
    bounded = criterion.value_min is not None or criterion.value_max is not None
    if (bounded or criterion.unit) and value is None:
        return NO
    if value is not None and (
        (criterion.value_min is not None and value < criterion.value_min)
        or (criterion.value_max is not None and value > criterion.value_max)
    ):
        return NO
    date = facts[DATE]
    if criterion.date_from or criterion.date_to:
        if not date:
            return NO
        if criterion.date_from and date < criterion.date_from:
            return NO
        # A partial date ("2024-03") compares below any day of its month: inside [from, to].
        if criterion.date_to and date > criterion.date_to:
            return NO
    if value is None:
        return Match(True)
    # A criterion without a value range keeps any value (a viral load in millions): within
    # the bounds a partial may carry; a value statistic asks a range inside them anyway.
    return Match(True, (date, min(max(value, -MAX_ABS_VALUE), MAX_ABS_VALUE)))


def needs_demographics(q: StudyQuery) -> bool:
    """The Patient resource is read only when sex or age filters or stratifies the query."""
    return bool(q.sexes or q.uses_age or "sex" in q.stratify)


class Evaluator:
    """Reads the vault once for a query and a set of patients (this hospital's records):
    through the patients' research digests (`source="digest"`) or their records."""

    def __init__(
        self,
        vault: Vault,
        q: StudyQuery,
        categories: Iterable[str],
        *,
        source: Literal["digest", "records"] = "digest",
    ) -> None:
        self.vault = vault
        self.q = q
        self.categories = frozenset(categories)
        self.source = source
        self.criteria = criteria(q)
        self.codes = {name: wanted_codes(c) for name, c in self.criteria.items()}
        self.types = frozenset(t for c in self.criteria.values() for t in c.types)
        self.demographics = needs_demographics(q)
        #: record versions whose facts were used: decrypted ("records"), or read from a
        #: digest and of a type and category the query may ask ("digest")
        self.decrypted = 0

    def _wanted(self, resource_type: str) -> bool:
        return resource_type in self.types and bool(
            categories_of_type(resource_type) & self.categories
        )

    def facts(self, pids: Iterable[str]) -> dict[str, PatientFacts]:
        """{pid: facts} for each patient this hospital holds own records of (others left out).

        The clinical records first; then the Patient's sex and birth date only of the
        patients whose records matched the cohort here: for any other, another custodian's
        facts or none decide, and their demographics are not read."""
        if self.source == "digest":
            return self._from_digests(pids)
        return self._from_records(pids)

    def _new(self) -> PatientFacts:
        return PatientFacts(matched=dict.fromkeys(self.criteria, False))

    def _from_digests(self, pids: Iterable[str]) -> dict[str, PatientFacts]:
        wanted = {t for t in self.types if self._wanted(t)}
        # The consented categories the query's types can fall in: no other row is read.
        asked = {c for t in wanted for c in categories_of_type(t)} & self.categories
        found: dict[str, PatientFacts] = {}
        keys = ReadKeys()  # a patient's key, unwrapped in the first pass, serves the second
        later = ["demographics"] if self.demographics else []  # fetched now, opened if matched
        for pid, entries in self.vault.research_digests(
            pids, DIGESTER, asked, keys=keys, prefetch=later
        ):
            facts = found[pid] = self._new()
            for entry in entries:
                if entry[TYPE] in wanted:
                    self.decrypted += 1
                    self._use(facts, entry)
        if self.demographics:
            matched = [pid for pid, facts in found.items() if facts.matched.get("cohort")]
            demographics = self.vault.research_digests(
                matched, DIGESTER, ["demographics"], keys=keys
            )
            for pid, entries in demographics:
                for entry in entries:  # in rid order, the last one decides (as records)
                    if entry[TYPE] == "Patient":
                        self.decrypted += 1
                        found[pid].sex, found[pid].birth_date = entry[SEX], entry[BIRTH]
        return found

    def _from_records(self, pids: Iterable[str]) -> dict[str, PatientFacts]:
        wanted = [t for t in sorted(self.types) if t != "Patient" and self._wanted(t)]
        found: dict[str, PatientFacts] = {}
        keys = ReadKeys()  # a patient's keys, unwrapped in the first pass, serve the second
        for info, data in self.vault.latest_records(pids, decrypt=wanted, keys=keys):
            facts = found.get(info.pid)
            if facts is None:
                facts = found[info.pid] = self._new()
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
        entry = record_facts(resource)
        if entry[TYPE] == "Patient":
            facts.sex, facts.birth_date = entry[SEX], entry[BIRTH]
            return
        self._use(facts, entry)

    def _use(self, facts: PatientFacts, entry: Sequence[Any]) -> None:
        """Fold one clinical record's facts into the patient's (its category consented)."""
        if entry[CATEGORY] not in self.categories:
            return
        for name, criterion in self.criteria.items():
            m = match_facts(entry, criterion, self.codes[name])
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
