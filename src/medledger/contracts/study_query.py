"""A federated study query: the declarative document, the answer vector, and its disclosure control.

A study's query travels to the data: every hospital evaluates it over the records it holds of
the study's enrolled patients, and only the aggregate comes back (`tally`, plus the
hospital's own noise when epsilon > 0: `answer_noise`, an exact discrete Laplace drawn from
hash bits of a seed only that hospital can compute, yet the same on every re-run; summed
across hospitals under pairwise masks). The combined totals become the published result in
`finish`: small cells suppressed, then the derived statistics. The masked answers are public,
so their sum is too: noise drawn by the contract from a public seed could be taken off by
anyone. All of it runs inside consensus: integers and `Fraction`s only, no float.

The document's semantics are in `docs/architecture.md` ("Federated study queries"); this module
is its single definition. Values are fixed-point integers (`SCALE`): "7.25" -> 7250.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from medledger.contracts.categories import ALL, check_categories
from medledger.ledger import codec
from medledger.ledger.errors import Code as ErrorCode
from medledger.ledger.errors import TxError

SCALE = 1000  # values and epsilon: fixed point, three decimals

MAX_DOCUMENT = 16 * 1024  # canonical CBOR bytes
MAX_TYPES = 8
MAX_CODES = 64
MAX_SYSTEM = 200
MAX_CODE = 64
MAX_UNIT = 64
MAX_ABS_VALUE = 10**6 * SCALE
MAX_QUANTILES = 10
MAX_EDGES = 32
MAX_AGE_BANDS = 12
MAX_AGE = 150
MAX_EPSILON = 10 * SCALE
MAX_CELLS = 4096
MAX_UNIT_MISMATCH = 10**6

#: FHIR resource types a criterion may name: clinical types that carry a patient (the patient
#: compartment's, as ingestion files them; not Patient itself nor the administrative ones).
CLINICAL_TYPES: frozenset[str] = frozenset(
    {
        "AdverseEvent",
        "AllergyIntolerance",
        "BodyStructure",
        "CarePlan",
        "ClinicalImpression",
        "Condition",
        "DeviceRequest",
        "DeviceUsage",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "EpisodeOfCare",
        "FamilyMemberHistory",
        "Goal",
        "ImagingSelection",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "Media",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "MolecularSequence",
        "NutritionIntake",
        "NutritionOrder",
        "Observation",
        "Procedure",
        "QuestionnaireResponse",
        "RiskAssessment",
        "ServiceRequest",
        "Specimen",
    }
)

SEXES = ("female", "male", "other", "unknown")  # Patient.gender
VALUE_OF = ("last", "first", "min", "max")
KINDS = ("count", "mean", "stddev", "quantiles", "histogram", "table2x2")
STRATA_DIMS = ("sex", "age_band")
CRITERIA = ("cohort", "rows", "columns")
TABLE_CELLS = ("yy", "yn", "ny", "nn")  # (has rows, has columns): y = yes, n = no
CONFLICT = "?"  # a birth date two hospitals disagree on: unknown

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_BIRTH = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?\Z")
_DECIMAL = re.compile(r"^-?\d{1,7}(\.\d{1,3})?\Z")
_LIMB = 32  # sum of squares travels as two cells: high and low 32 bits of each square


@dataclass(frozen=True)
class Code:
    """A coding: system AND code must both equal a record's."""

    system: str
    code: str


@dataclass(frozen=True)
class Criterion:
    """What a record must be to match (see the module's docs for each test)."""

    types: tuple[str, ...]
    codes: tuple[Code, ...] = ()
    value_min: int | None = None  # fixed point (SCALE)
    value_max: int | None = None
    unit: str = ""
    date_from: str = ""  # "YYYY-MM-DD" or ""
    date_to: str = ""


@dataclass(frozen=True)
class Statistic:
    """One statistic asked; its own parameters only (quantiles, edges, the 2x2's criteria)."""

    kind: str
    q: tuple[int, ...] = ()  # quantiles, milli: 0.25 -> 250
    edges: tuple[int, ...] = ()  # histogram edges, fixed point
    rows: Criterion | None = None  # table2x2
    columns: Criterion | None = None


@dataclass(frozen=True)
class StudyQuery:
    categories: tuple[str, ...]
    cohort: Criterion
    age_min: int | None
    age_max: int | None
    sexes: tuple[str, ...]  # () = any
    age_on: str  # "" until the contract fixes it at approval
    value_of: str
    statistics: tuple[Statistic, ...]
    stratify: tuple[str, ...]
    age_bands: tuple[int, ...]
    epsilon_milli: int

    def stat(self, kind: str) -> Statistic | None:
        return next((s for s in self.statistics if s.kind == kind), None)

    def asks(self, *kinds: str) -> bool:
        return any(s.kind in kinds for s in self.statistics)

    @property
    def histogram_edges(self) -> tuple[int, ...]:
        found = self.stat("histogram")
        return found.edges if found else ()

    @property
    def quantiles(self) -> tuple[int, ...]:
        found = self.stat("quantiles")
        return found.q if found else ()

    @property
    def uses_age(self) -> bool:
        return self.age_min is not None or self.age_max is not None or "age_band" in self.stratify

    def with_age_on(self, age_on: str) -> StudyQuery:
        """The same query with the reference date fixed (the contract's, at approval)."""
        _date(age_on, "age_on")
        return replace(self, age_on=age_on)


# -- parsing -------------------------------------------------------------------------------


def _fail(field_: str, why: str) -> TxError:
    return TxError(ErrorCode.INVALID_BODY, f"field {field_}: {why}")


def _map(value: Any, field_: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field_, "an object")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _fail(
            f"{field_}.{unknown[0]}" if field_ != "query" else unknown[0],
            f"unknown field (known: {', '.join(allowed)})",
        )
    return value


def _list(value: Any, field_: str, most: int, least: int = 0) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(field_, "a list")
    if not least <= len(value) <= most:
        raise _fail(field_, f"{least}..{most} items")
    return value


def _text(value: Any, field_: str, most: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= most or not value.isprintable():
        raise _fail(field_, f"a text of 1..{most} printable characters")
    return value


def _int(value: Any, field_: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(field_, f"an integer in {low}..{high}")
    return value


def _fixed(value: Any, field_: str, bound: int = MAX_ABS_VALUE) -> int:
    """A decimal with at most three decimals (number, or text as `to_obj` writes it) as a
    fixed-point integer; never more digits than the bound allows are read."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(field_, "a number")
    if isinstance(value, int):
        if abs(value) > bound // SCALE:
            raise _fail(field_, f"at most {decimal_text(bound)} in absolute value")
        return value * SCALE
    if isinstance(value, str) and not _DECIMAL.match(value):
        raise _fail(field_, "a number with at most 3 decimals")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(field_, "a finite number")
    exact = Decimal(value if isinstance(value, str) else repr(value))
    if abs(exact) > Fraction(bound, SCALE):
        raise _fail(field_, f"at most {decimal_text(bound)} in absolute value")
    scaled = exact * SCALE
    if scaled != scaled.to_integral_value():
        raise _fail(field_, "at most 3 decimals")
    return int(scaled)


def decimal_text(fixed: int) -> int | str:
    """A fixed-point value as the document writes it: an integer when whole, else text."""
    if fixed % SCALE == 0:
        return fixed // SCALE
    sign = "-" if fixed < 0 else ""
    whole, frac = divmod(abs(fixed), SCALE)
    return f"{sign}{whole}.{frac:03d}".rstrip("0")


def _date(value: Any, field_: str) -> str:
    if not isinstance(value, str) or not _DATE.match(value):
        raise _fail(field_, "a date YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise _fail(field_, f"{value!r} is no calendar date") from None
    return value


def _partial_date(value: Any, field_: str) -> str:
    """A FHIR date, which may stop at the month or the year ("2024-03", "2024")."""
    if not isinstance(value, str) or not _BIRTH.match(value):
        raise _fail(field_, "a date YYYY, YYYY-MM or YYYY-MM-DD")
    _date((value + "-01-01")[:10], field_)
    return value


def _criterion(value: Any, field_: str) -> Criterion:
    doc = _map(value, field_, ("types", "codes", "value", "date"))
    if "types" not in doc:
        raise _fail(f"{field_}.types", "required")
    types = _list(doc["types"], f"{field_}.types", MAX_TYPES, 1)
    for i, t in enumerate(types):
        if not isinstance(t, str) or t not in CLINICAL_TYPES:
            raise _fail(
                f"{field_}.types[{i}]", f"{t!r} is not a clinical FHIR type that names a patient"
            )
    if len(set(types)) != len(types):
        raise _fail(f"{field_}.types", "a type is repeated")
    codes = []
    for i, c in enumerate(_list(doc.get("codes", []), f"{field_}.codes", MAX_CODES)):
        at = f"{field_}.codes[{i}]"
        coding = _map(c, at, ("system", "code"))
        for part in ("system", "code"):
            if part not in coding:
                raise _fail(f"{at}.{part}", "required")
        codes.append(
            Code(
                _text(coding["system"], f"{at}.system", MAX_SYSTEM),
                _text(coding["code"], f"{at}.code", MAX_CODE),
            )
        )
    if len(set(codes)) != len(codes):
        raise _fail(f"{field_}.codes", "a code is repeated")
    low = high = None
    unit = ""
    if "value" in doc:
        bounds = _map(doc["value"], f"{field_}.value", ("min", "max", "unit"))
        if not bounds:
            raise _fail(f"{field_}.value", "min, max or unit")
        if "min" in bounds:
            low = _fixed(bounds["min"], f"{field_}.value.min")
        if "max" in bounds:
            high = _fixed(bounds["max"], f"{field_}.value.max")
        if low is not None and high is not None and low > high:
            raise _fail(f"{field_}.value", "min is above max")
        if "unit" in bounds:
            unit = _text(bounds["unit"], f"{field_}.value.unit", MAX_UNIT)
    date_from = date_to = ""
    if "date" in doc:
        dates = _map(doc["date"], f"{field_}.date", ("from", "to"))
        if not dates:
            raise _fail(f"{field_}.date", "from or to")
        if "from" in dates:
            date_from = _date(dates["from"], f"{field_}.date.from")
        if "to" in dates:
            date_to = _date(dates["to"], f"{field_}.date.to")
        if date_from and date_to and date_from > date_to:
            raise _fail(f"{field_}.date", "from is after to")
    return Criterion(
        types=tuple(sorted(types)),
        codes=tuple(sorted(codes, key=lambda c: (c.system, c.code))),
        value_min=low,
        value_max=high,
        unit=unit,
        date_from=date_from,
        date_to=date_to,
    )


def _statistic(value: Any, field_: str) -> Statistic:
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        raise _fail(f"{field_}.kind", f"one of {', '.join(KINDS)}")
    kind = value["kind"]
    if kind == "quantiles":
        doc = _map(value, field_, ("kind", "q"))
        qs = _list(doc.get("q"), f"{field_}.q", MAX_QUANTILES, 1)
        q = tuple(_fixed(x, f"{field_}.q[{i}]", SCALE) for i, x in enumerate(qs))
        if any(not 0 < x < SCALE for x in q) or list(q) != sorted(set(q)):
            raise _fail(f"{field_}.q", "increasing fractions strictly between 0 and 1")
        return Statistic(kind, q=q)
    if kind == "histogram":
        doc = _map(value, field_, ("kind", "edges"))
        raw = _list(doc.get("edges"), f"{field_}.edges", MAX_EDGES, 2)
        edges = tuple(_fixed(x, f"{field_}.edges[{i}]") for i, x in enumerate(raw))
        if any(a >= b for a, b in itertools.pairwise(edges)):
            raise _fail(f"{field_}.edges", "strictly increasing")
        return Statistic(kind, edges=edges)
    if kind == "table2x2":
        doc = _map(value, field_, ("kind", "rows", "columns"))
        for part in ("rows", "columns"):
            if part not in doc:
                raise _fail(f"{field_}.{part}", "required")
        return Statistic(
            kind,
            rows=_criterion(doc["rows"], f"{field_}.rows"),
            columns=_criterion(doc["columns"], f"{field_}.columns"),
        )
    _map(value, field_, ("kind",))
    return Statistic(kind)


_TOP = (
    "categories",
    "cohort",
    "age",
    "sex",
    "age_on",
    "value_of",
    "statistics",
    "stratify",
    "age_bands",
    "epsilon",
)


def parse(doc: dict[str, Any]) -> StudyQuery:
    """The checked query of a document; `TxError(INVALID_BODY)` naming the first bad field."""
    _map(doc, "query", _TOP)
    for required in ("categories", "cohort", "statistics"):
        if required not in doc:
            raise _fail(required, "required")
    categories = doc["categories"]
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise _fail("categories", "a list of category names")
    if check_categories(categories) == [ALL]:
        raise _fail("categories", "a query names the categories it reads")
    cohort = _criterion(doc["cohort"], "cohort")
    age_min = age_max = None
    if "age" in doc:
        age = _map(doc["age"], "age", ("min", "max"))
        if "min" in age:
            age_min = _int(age["min"], "age.min", 0, MAX_AGE)
        if "max" in age:
            age_max = _int(age["max"], "age.max", 0, MAX_AGE)
        if age_min is not None and age_max is not None and age_min > age_max:
            raise _fail("age", "min is above max")
    sexes = _list(doc.get("sex", []), "sex", len(SEXES))
    for i, s in enumerate(sexes):
        if s not in SEXES:
            raise _fail(f"sex[{i}]", f"one of {', '.join(SEXES)}")
    if len(set(sexes)) != len(sexes):
        raise _fail("sex", "a value is repeated")
    age_on = _date(doc["age_on"], "age_on") if doc.get("age_on", "") != "" else ""
    value_of = doc.get("value_of", "last")
    if value_of not in VALUE_OF:
        raise _fail("value_of", f"one of {', '.join(VALUE_OF)}")
    statistics = [
        _statistic(s, f"statistics[{i}]")
        for i, s in enumerate(_list(doc["statistics"], "statistics", len(KINDS), 1))
    ]
    kinds = [s.kind for s in statistics]
    if len(set(kinds)) != len(kinds):
        raise _fail("statistics", "a kind is asked twice")
    stratify = _list(doc.get("stratify", []), "stratify", len(STRATA_DIMS))
    for i, s in enumerate(stratify):
        if s not in STRATA_DIMS:
            raise _fail(f"stratify[{i}]", f"one of {', '.join(STRATA_DIMS)}")
    if len(set(stratify)) != len(stratify):
        raise _fail("stratify", "a dimension is repeated")
    bands = _list(doc.get("age_bands", []), "age_bands", MAX_AGE_BANDS + 1)
    age_bands = tuple(_int(b, f"age_bands[{i}]", 0, MAX_AGE + 1) for i, b in enumerate(bands))
    if ("age_band" in stratify) != bool(age_bands):
        raise _fail("age_bands", "given exactly when stratify names age_band")
    if age_bands and (len(age_bands) < 2 or any(a >= b for a, b in itertools.pairwise(age_bands))):
        raise _fail("age_bands", "at least two strictly increasing edges")
    epsilon = _fixed(doc.get("epsilon", 0), "epsilon", MAX_EPSILON)
    if epsilon < 0:
        raise _fail("epsilon", "must not be negative")
    query = StudyQuery(
        categories=tuple(sorted(categories)),
        cohort=cohort,
        age_min=age_min,
        age_max=age_max,
        sexes=tuple(s for s in SEXES if s in sexes),
        age_on=age_on,
        value_of=value_of,
        statistics=tuple(sorted(statistics, key=lambda s: KINDS.index(s.kind))),
        stratify=tuple(stratify),
        age_bands=age_bands,
        epsilon_milli=epsilon,
    )
    _check_whole(query)
    return query


def _check_whole(q: StudyQuery) -> None:
    """Rules across fields: value bounds for value statistics, a histogram for quantiles."""
    low, high = q.cohort.value_min, q.cohort.value_max
    if q.asks("mean", "stddev", "quantiles", "histogram") and (low is None or high is None):
        raise _fail(
            "cohort.value", "min and max are required for mean, stddev, quantiles, histogram"
        )
    if q.asks("quantiles") and not q.asks("histogram"):
        raise _fail("statistics", "quantiles are read off a histogram: ask one too")
    edges = q.histogram_edges
    if edges and not edges[0] <= (low or 0) <= (high or 0) <= edges[-1]:
        raise _fail("statistics.histogram.edges", "must cover cohort.value's min..max")
    if len(cells(q)) > MAX_CELLS:
        raise _fail("statistics", f"the answer would have over {MAX_CELLS} cells")
    if len(codec.encode(to_obj(q))) > MAX_DOCUMENT:
        raise _fail("query", f"over {MAX_DOCUMENT} bytes in canonical CBOR")


# -- canonical form ------------------------------------------------------------------------


def _criterion_obj(c: Criterion) -> dict[str, Any]:
    obj: dict[str, Any] = {"types": list(c.types)}
    if c.codes:
        obj["codes"] = [{"system": x.system, "code": x.code} for x in c.codes]
    value: dict[str, Any] = {}
    if c.value_min is not None:
        value["min"] = decimal_text(c.value_min)
    if c.value_max is not None:
        value["max"] = decimal_text(c.value_max)
    if c.unit:
        value["unit"] = c.unit
    if value:
        obj["value"] = value
    dates = {k: v for k, v in (("from", c.date_from), ("to", c.date_to)) if v}
    if dates:
        obj["date"] = dates
    return obj


def _statistic_obj(s: Statistic) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": s.kind}
    if s.kind == "quantiles":
        obj["q"] = [decimal_text(x) for x in s.q]
    elif s.kind == "histogram":
        obj["edges"] = [decimal_text(x) for x in s.edges]
    elif s.kind == "table2x2":
        assert s.rows is not None and s.columns is not None
        obj["rows"] = _criterion_obj(s.rows)
        obj["columns"] = _criterion_obj(s.columns)
    return obj


def to_obj(q: StudyQuery) -> dict[str, Any]:
    """The canonical document (no floats, so CBOR-able); `parse(to_obj(q)) == q`."""
    obj: dict[str, Any] = {
        "categories": list(q.categories),
        "cohort": _criterion_obj(q.cohort),
        "value_of": q.value_of,
        "statistics": [_statistic_obj(s) for s in q.statistics],
        "epsilon": decimal_text(q.epsilon_milli),
    }
    age = {k: v for k, v in (("min", q.age_min), ("max", q.age_max)) if v is not None}
    if age:
        obj["age"] = age
    if q.sexes:
        obj["sex"] = list(q.sexes)
    if q.age_on:
        obj["age_on"] = q.age_on
    if q.stratify:
        obj["stratify"] = list(q.stratify)
    if q.age_bands:
        obj["age_bands"] = list(q.age_bands)
    return obj


def query_hash(q: StudyQuery) -> bytes:
    """SHA-256 of the canonical CBOR of `to_obj(q)`."""
    return hashlib.sha256(codec.encode(to_obj(q))).digest()


def criteria(q: StudyQuery) -> dict[str, Criterion]:
    """Every criterion a hospital evaluates, by name: cohort, and the 2x2's rows and columns."""
    found = {"cohort": q.cohort}
    table = q.stat("table2x2")
    if table is not None and table.rows is not None and table.columns is not None:
        found["rows"] = table.rows
        found["columns"] = table.columns
    return found


# -- the answer vector ---------------------------------------------------------------------


def strata(q: StudyQuery) -> list[str]:
    """Stratum names in cell order: "all", or e.g. "sex=female,age=18-40" (age in [18, 40))."""
    dims: list[list[str]] = []
    for dim in q.stratify:
        if dim == "sex":
            dims.append([f"sex={s}" for s in (q.sexes or SEXES)])
        else:
            dims.append([f"age={a}-{b}" for a, b in itertools.pairwise(q.age_bands)])
    if not dims:
        return ["all"]
    return [",".join(parts) for parts in itertools.product(*dims)]


def _stratum_cells(q: StudyQuery) -> list[str]:
    names = ["patients"]
    if q.asks("mean", "stddev"):
        names.append("sum")
    if q.asks("stddev"):
        names += ["sumsq.hi", "sumsq.lo"]
    names += [f"bin{i}" for i in range(max(len(q.histogram_edges) - 1, 0))]
    if q.asks("table2x2"):
        names += [f"t:{c}" for c in TABLE_CELLS]
    return names


def cells(q: StudyQuery) -> list[str]:
    """The answer vector's layout: per stratum `<stratum>/<cell>`, then `unit_mismatch` when the
    cohort names a unit. `sum` is of (value - value.min); the square sum travels as two cells."""
    per = _stratum_cells(q)
    names = [f"{s}/{c}" for s in strata(q) for c in per]
    if q.cohort.unit:
        names.append("unit_mismatch")
    return names


# -- what one hospital saw of one patient --------------------------------------------------


def _join_sex(a: str, b: str) -> str:
    return a if not b or a == b else b if not a else "unknown"


def _join_birth(a: str, b: str) -> str:
    """The more precise of two consistent birth dates; CONFLICT when they disagree."""
    if not b or a == b:
        return a
    if not a:
        return b
    if CONFLICT in (a, b):
        return CONFLICT
    short, long_ = sorted((a, b), key=len)
    return long_ if long_.startswith(short) else CONFLICT


def better_value(a: tuple[str, int], b: tuple[str, int], value_of: str) -> tuple[str, int]:
    """The value `value_of` keeps of two (clinical date, value): a total order, so any merge
    order gives the same. Undated records sort as the earliest. A hospital picks its own
    records' value with it too."""
    if value_of == "last":
        return max(a, b)
    if value_of == "first":
        return min(a, b)
    if value_of == "min":
        return min(a, b, key=lambda x: (x[1], x[0]))
    return max(a, b, key=lambda x: (x[1], x[0]))


@dataclass
class PatientFacts:
    """One patient as one hospital (or several, merged) saw them for one query."""

    sex: str = ""  # Patient.gender, or ""
    birth_date: str = ""  # "YYYY-MM-DD", "YYYY-MM", "YYYY", "" or CONFLICT
    matched: dict[str, bool] = field(default_factory=dict)  # criterion name -> a record matched
    value: tuple[str, int] | None = None  # (clinical date or "", fixed-point value) per value_of
    unit_mismatch: int = 0  # records of a cohort code in another unit

    def merge(self, other: PatientFacts, value_of: str) -> PatientFacts:
        """The facts of both (commutative and associative: any order of hospitals agrees)."""
        value = self.value
        if other.value is not None:
            value = other.value if value is None else better_value(value, other.value, value_of)
        return PatientFacts(
            sex=_join_sex(self.sex, other.sex),
            birth_date=_join_birth(self.birth_date, other.birth_date),
            matched={
                name: self.matched.get(name, False) or other.matched.get(name, False)
                for name in sorted(set(self.matched) | set(other.matched))
            },
            value=value,
            unit_mismatch=min(self.unit_mismatch + other.unit_mismatch, MAX_UNIT_MISMATCH),
        )

    def to_obj(self) -> dict[str, Any]:
        return {
            "sex": self.sex,
            "birth": self.birth_date,
            "matched": sorted(name for name, hit in self.matched.items() if hit),
            "value": list(self.value) if self.value is not None else None,
            "unit_mismatch": self.unit_mismatch,
        }

    @classmethod
    def from_obj(cls, obj: Any) -> PatientFacts:
        """Facts another hospital sent: every field checked and bounded (TxError naming it)."""
        doc = _map(obj, "facts", ("sex", "birth", "matched", "value", "unit_mismatch"))
        sex = doc.get("sex", "")
        if sex not in ("", *SEXES):
            raise _fail("facts.sex", f"one of {', '.join(SEXES)} or empty")
        birth = doc.get("birth", "")
        if not isinstance(birth, str) or not (birth in ("", CONFLICT) or _BIRTH.match(birth)):
            raise _fail("facts.birth", "YYYY, YYYY-MM or YYYY-MM-DD")
        matched = _list(doc.get("matched", []), "facts.matched", len(CRITERIA))
        if any(m not in CRITERIA for m in matched) or len(set(matched)) != len(matched):
            raise _fail("facts.matched", f"distinct names among {', '.join(CRITERIA)}")
        value = doc.get("value")
        if value is not None:
            pair = _list(value, "facts.value", 2, 2)
            if pair[0] != "":
                _partial_date(pair[0], "facts.value[0]")
            _int(pair[1], "facts.value[1]", -MAX_ABS_VALUE, MAX_ABS_VALUE)
            value = (pair[0], pair[1])
        mismatch = _int(doc.get("unit_mismatch", 0), "facts.unit_mismatch", 0, MAX_UNIT_MISMATCH)
        return cls(sex, birth, {m: True for m in matched}, value, mismatch)


def age_in_years(birth_date: str, on: str) -> int | None:
    """Whole years on `on`; a partial birth date is taken at the middle of its period
    (YYYY -> YYYY-07-01, YYYY-MM -> YYYY-MM-15); None when unknown or conflicting."""
    if not birth_date or birth_date == CONFLICT:
        return None
    parts = [int(p) for p in birth_date.split("-")]
    year, month, day = (parts + [7, 1])[:3] if len(parts) == 1 else (parts + [15])[:3]
    on_year, on_month, on_day = (int(p) for p in on.split("-"))
    return on_year - year - ((on_month, on_day) < (month, day))


def _stratum_of(q: StudyQuery, facts: PatientFacts) -> str | None:
    """The stratum a patient counts in, or None when out of the cohort."""
    if not facts.matched.get("cohort"):
        return None
    sex = facts.sex or "unknown"
    if q.sexes and sex not in q.sexes:
        return None
    age = None
    if q.uses_age:
        if not q.age_on:
            raise ValueError("the query's age_on is not fixed yet (the contract fixes it)")
        age = age_in_years(facts.birth_date, q.age_on)
        if age is None:
            return None
        if (q.age_min is not None and age < q.age_min) or (
            q.age_max is not None and age > q.age_max
        ):
            return None
    if q.asks("mean", "stddev", "histogram", "quantiles") and facts.value is None:
        return None
    parts = []
    for dim in q.stratify:
        if dim == "sex":
            parts.append(f"sex={sex}")
        else:
            assert age is not None
            band = next(
                (f"age={a}-{b}" for a, b in itertools.pairwise(q.age_bands) if a <= age < b), None
            )
            if band is None:
                return None  # outside every band: not in the cohort
            parts.append(band)
    return ",".join(parts) if parts else "all"


def tally(q: StudyQuery, patients: Iterable[PatientFacts]) -> list[int]:
    """The plain answer vector over these patients (each counted here once), in `cells(q)` order."""
    names = cells(q)
    at = {name: i for i, name in enumerate(names)}
    totals = [0] * len(names)
    low = q.cohort.value_min or 0
    high = q.cohort.value_max or 0
    edges = q.histogram_edges
    for facts in patients:
        if q.cohort.unit and facts.unit_mismatch:
            totals[at["unit_mismatch"]] += 1  # patients, not records: one patient moves it by 1
        stratum = _stratum_of(q, facts)
        if stratum is None:
            continue
        totals[at[f"{stratum}/patients"]] += 1
        if facts.value is not None and q.asks("mean", "stddev", "histogram"):
            value = min(max(facts.value[1], low), high)  # bounded: the noise's sensitivity
            if q.asks("mean", "stddev"):
                totals[at[f"{stratum}/sum"]] += value - low
            if q.asks("stddev"):
                square = (value - low) ** 2
                totals[at[f"{stratum}/sumsq.hi"]] += square >> _LIMB
                totals[at[f"{stratum}/sumsq.lo"]] += square & ((1 << _LIMB) - 1)
            if edges:
                totals[at[f"{stratum}/bin{_bin(edges, value)}"]] += 1
        if q.asks("table2x2"):
            row = "y" if facts.matched.get("rows") else "n"
            column = "y" if facts.matched.get("columns") else "n"
            totals[at[f"{stratum}/t:{row}{column}"]] += 1
    return totals


def _bin(edges: tuple[int, ...], value: int) -> int:
    """Bins are [e_i, e_i+1), the last one closed: [e_n-1, e_n]."""
    for i in range(len(edges) - 1):
        if value < edges[i + 1]:
            return i
    return len(edges) - 2


# -- noise ---------------------------------------------------------------------------------


class _Bits:
    """A deterministic stream of uniform integers from SHA-256(seed, name, counter)."""

    def __init__(self, seed: bytes, name: str) -> None:
        self._prefix = b"medledger/study-noise-cell\x00" + seed + b"\x00" + name.encode() + b"\x00"
        self._counter = 0
        self._pool = 0
        self._bits = 0

    def _take(self, n: int) -> int:
        while self._bits < n:
            block = hashlib.sha256(self._prefix + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._pool = (self._pool << 256) | int.from_bytes(block, "big")
            self._bits += 256
        self._bits -= n
        out = self._pool >> self._bits
        self._pool &= (1 << self._bits) - 1
        return out

    def below(self, m: int) -> int:
        """Uniform in [0, m): rejection sampling, exact."""
        n = (m - 1).bit_length()
        while True:
            x = self._take(n)
            if x < m:
                return x

    def bernoulli(self, p: Fraction) -> bool:
        return self.below(p.denominator) < p.numerator


def _bernoulli_exp(bits: _Bits, gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) exactly, gamma >= 0 rational (Canonne, Kamath, Steinke 2020)."""
    while gamma > 1:
        if not _bernoulli_exp(bits, Fraction(1)):
            return False
        gamma -= 1
    k = 1
    while bits.bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def discrete_laplace(bits: _Bits, scale: Fraction) -> int:
    """An integer Y with P(Y = y) proportional to exp(-|y| / scale) (CKS 2020, algorithm 2)."""
    t, s = scale.numerator, scale.denominator  # scale = t / s
    while True:
        u = bits.below(t)
        if not _bernoulli_exp(bits, Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp(bits, Fraction(1)):
            v += 1
        y = (u + t * v) // s
        negative = bits.below(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def noise(seed: bytes, name: str, scale: Fraction) -> int:
    """The noise of one quantity: reproducible from the seed and its name alone."""
    return discrete_laplace(_Bits(seed, name), scale)


def noise_message(query_id: str, noise_seed: bytes) -> bytes:
    """What an answerer's organisation key signs to draw its noise. Ed25519 signatures are
    deterministic (RFC 8032): a re-run gives the same signature, so the same noise."""
    return b"medledger/study-noise\x00" + query_id.encode() + b"\x00" + noise_seed


def answer_noise_seed(signature: bytes) -> bytes:
    """An answerer's secret noise seed, from its signature over `noise_message`."""
    return hashlib.sha256(b"medledger/study-noise-seed\x00" + signature).digest()


def noise_commitment(seed: bytes) -> bytes:
    """What the answer carries of the seed: an auditor shown the signature can check it and
    redraw the noise; nobody else can (the seed would remove the noise)."""
    return hashlib.sha256(b"medledger/study-noise-commitment\x00" + seed).digest()


def answer_noise(q: StudyQuery, seed: bytes) -> list[int]:
    """The noise an answerer adds to its plain tally, in `cells(q)` order, before masking.

    Every answerer adds the full noise on every cell (it need not know where the patients
    are): the combined answer then carries noise no coalition of the other answerers can take
    off. Scale: sensitivity x `releases_per_patient` / epsilon; zeros when epsilon is 0."""
    names = cells(q)
    if not q.epsilon_milli:
        return [0] * len(names)
    spread = (q.cohort.value_max or 0) - (q.cohort.value_min or 0)
    per = Fraction(releases_per_patient(q) * SCALE, q.epsilon_milli)
    # The square travels as two cells, each released (their sum is public): each has its own
    # sensitivity; the high one is 0 only when no square reaches 2^32.
    sensitivity = {"sum": spread, "sumsq.lo": spread * spread, "sumsq.hi": _square_hi(spread)}
    out = []
    for name in names:
        delta = sensitivity.get(name.rsplit("/", 1)[-1], 1)
        out.append(noise(seed, name, max(delta, 1) * per) if delta else 0)
    return out


def _square_hi(spread: int) -> int:
    """The most one patient adds to the `sumsq.hi` cell."""
    return (spread * spread) >> _LIMB


def releases_per_patient(q: StudyQuery) -> int:
    """How many noised quantities one patient can move: epsilon is split evenly over them.

    Strata are disjoint, so a patient moves one stratum's quantities (parallel composition):
    its `patients` cell (always published: the count, or what suppression is decided on),
    the value sum (mean, stddev), the square sum's low and, when a square reaches 2^32, high
    cell (stddev), one histogram bin, one 2x2 cell; and the global unit_mismatch."""
    spread = (q.cohort.value_max or 0) - (q.cohort.value_min or 0)
    return (
        1
        + int(q.asks("mean", "stddev"))
        + int(q.asks("stddev"))
        + int(q.asks("stddev") and _square_hi(spread) > 0)
        + int(q.asks("histogram"))
        + int(q.asks("table2x2"))
        + int(bool(q.cohort.unit))
    )


# -- the published result ------------------------------------------------------------------


def three_decimals(x: Fraction) -> str:
    """A rational as a decimal text with three decimals, rounded half to even: how `finish`
    writes a published figure (means, stddevs, quantiles)."""
    fixed = round(x * SCALE)
    sign = "-" if fixed < 0 else ""
    whole, frac = divmod(abs(fixed), SCALE)
    return f"{sign}{whole}.{frac:03d}"


def _clamp(x: Fraction, high: int) -> Fraction:
    """x within [0, high]: where the true figure is (noise may carry it out)."""
    return min(max(x, Fraction(0)), Fraction(high))


def _sqrt(x: Fraction) -> Fraction:
    """sqrt(x) to the nearest 1/SCALE, integers only."""
    scaled = x * SCALE * SCALE * 4
    return Fraction((math.isqrt(scaled.numerator // scaled.denominator) + 1) // 2, SCALE)


def finish(q: StudyQuery, totals: list[int], k: int) -> dict[str, Any]:
    """The published result of the combined totals (in `cells(q)` order; noised by the
    answerers when epsilon > 0, see `answer_noise`).

    Disclosure control: a stratum under k patients is withheld whole; a histogram or 2x2 table
    with a cell under k is withheld whole (its cells could otherwise be recovered from the
    stratum's count or another partition of it); the global unit_mismatch under k is withheld.
    The derived statistics (mean, stddev, quantiles) come from the released totals only, and
    every published figure is clamped to where the true one can be (post-processing).
    """
    names = cells(q)
    if len(totals) != len(names):
        raise ValueError(f"{len(totals)} totals for {len(names)} cells")
    total = dict(zip(names, totals, strict=True))
    low = q.cohort.value_min or 0
    spread = (q.cohort.value_max or 0) - low
    suppressed: list[str] = []
    out_strata: list[dict[str, Any]] = []
    edges = q.histogram_edges
    for stratum in strata(q):
        row: dict[str, Any] = {"stratum": stratum}
        out_strata.append(row)
        count = max(total[f"{stratum}/patients"], 0)
        withheld = count < k
        if withheld:
            suppressed.append(f"{stratum}: fewer than k patients")
        if q.asks("count"):
            row["count"] = None if withheld else count
        if q.asks("mean", "stddev"):
            mean = stddev = None
            if not withheld:
                mean_d = _clamp(Fraction(total[f"{stratum}/sum"], count), spread)
                mean = three_decimals((mean_d + low) / SCALE)
                if q.asks("stddev"):
                    square = (total[f"{stratum}/sumsq.hi"] << _LIMB) + total[f"{stratum}/sumsq.lo"]
                    variance = (square - count * mean_d * mean_d) / max(count - 1, 1)
                    variance = _clamp(variance, spread * spread)
                    stddev = three_decimals(_sqrt(variance) / SCALE)
            if q.asks("mean"):
                row["mean"] = mean
            if q.asks("stddev"):
                row["stddev"] = stddev
        if edges:
            bins = [max(total[f"{stratum}/bin{i}"], 0) for i in range(len(edges) - 1)]
            histogram = None
            if not withheld and min(bins) < k:
                suppressed.append(f"{stratum}/histogram: a bin under k")
            elif not withheld:
                histogram = bins
            row["histogram"] = histogram
            if q.asks("quantiles"):
                row["quantiles"] = [
                    _quantile(edges, histogram, Fraction(x, SCALE)) if histogram else None
                    for x in q.quantiles
                ]
        if q.asks("table2x2"):
            table = {c: max(total[f"{stratum}/t:{c}"], 0) for c in TABLE_CELLS}
            if not withheld and min(table.values()) < k:
                suppressed.append(f"{stratum}/table2x2: a cell under k")
            row["table2x2"] = None if withheld or min(table.values()) < k else table
    result: dict[str, Any] = {
        "k": k,
        "epsilon": decimal_text(q.epsilon_milli),
        "noise": "discrete-laplace, each answerer's" if q.epsilon_milli else "none",
        "strata": out_strata,
        "suppressed": suppressed,
    }
    if q.cohort.unit:
        mismatch = max(total["unit_mismatch"], 0)
        if mismatch < k:
            suppressed.append("unit_mismatch: under k")
        result["unit_mismatch"] = None if mismatch < k else mismatch
    return result


def _quantile(edges: tuple[int, ...], bins: list[int], q: Fraction) -> str | None:
    """The q-quantile interpolated linearly inside the histogram's bins (no rows to be exact)."""
    whole = sum(bins)
    if whole == 0:
        return None
    target = q * whole
    before = 0
    for i, b in enumerate(bins):
        if b and before + b >= target:
            inside = (target - before) / b
            return three_decimals((edges[i] + inside * (edges[i + 1] - edges[i])) / SCALE)
        before += b
    return three_decimals(Fraction(edges[-1], SCALE))
