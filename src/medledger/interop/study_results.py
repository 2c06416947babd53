"""A federated query's published result as tables and chart bars: what the CLI prints, the
researcher's page shows and an RO-Crate carries as CSV, from one definition.

The result is `study_query.finish`'s (on the chain when the query is done); the query document
gives the histogram's edges and the quantiles' levels. A suppressed figure (`None` in the
result) is the text `suppressed` in every table and a marked bar in a chart, never 0: a reader
must not mistake "fewer than k" for "none".

A noised figure that `study_query.finish` clamped to the range the true one can be in (a mean
at the query's `value.min` or `value.max`, a standard deviation at 0 or at the value range) is
not data either: it reads `3.000 (clamped)` in every table, never a plain number, and the
`clamped` table says which figures and why (`clamped`). The chain's result does not say it
(adding it would change the bytes the blocks commit): it is derived here, from the result and
the query, for every view.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from medledger.contracts import study_query
from medledger.contracts.study_query import decimal_text

SUPPRESSED = "suppressed"
#: Appended to a clamped figure in every table: `3.000 (clamped)`.
CLAMPED = "(clamped)"
#: Said wherever a result without noise is shown (docs/security.md): its suppression is the
#: result's only, not a protection.
NO_NOISE = (
    "no noise: a suppressed figure is left out of this result only; every member can sum the "
    "answers on the chain into every cell, and two results can be subtracted"
)
_TABLE_LABELS = {"y": "yes", "n": "no"}


@dataclass(frozen=True)
class Table:
    name: str  # the file stem in a crate: summary, histogram, quantiles, table2x2, global
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def csv(self) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue().encode()


@dataclass(frozen=True)
class Bar:
    label: str
    value: int | None  # None: suppressed


@dataclass(frozen=True)
class Series:
    """One chart: a title, what it plots, and its bars."""

    title: str
    description: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Clamped:
    """A published figure noise carried to or past the bound of what the data can give."""

    stratum: str
    figure: str  # mean | stddev
    shown: str  # the figure as the result has it: the bound
    why: str


def clamped(doc: dict[str, Any], result: dict[str, Any]) -> list[Clamped]:
    """The figures of a noised result shown at a bound `study_query.finish` clamps to.

    Without noise the totals are exact and no figure is ever clamped. With noise, `finish`
    clamps a stratum's mean into [value.min, value.max] and its variance into [0, (value.max -
    value.min)^2]: a figure at one of those bounds is where noise carried it (or past it), not
    where the data put it. Counts, histogram bins, 2x2 cells and the unit mismatch are clamped
    at 0 too, but 0 is under k (k >= 2, `governance`), so such a figure is suppressed, never
    shown; quantiles come from a published histogram only (every bin >= k)."""
    if result.get("noise", "none") == "none":
        return []
    q = study_query.parse(doc)
    low, high = q.cohort.value_min or 0, q.cohort.value_max or 0
    # The bounds as `finish` writes a figure (three decimals), to compare with the result's.
    low_text, high_text, zero_text, spread_text = (
        study_query.three_decimals(Fraction(fixed, study_query.SCALE))
        for fixed in (low, high, 0, high - low)
    )
    found = []
    for s in result.get("strata") or []:
        stratum = str(s.get("stratum"))
        mean, stddev = s.get("mean"), s.get("stddev")
        if mean is not None and mean in (low_text, high_text):
            side, bound = ("below", "value.min") if mean == low_text else ("above", "value.max")
            about = "; its stddev is taken about that bound" if stddev is not None else ""
            found.append(
                Clamped(
                    stratum,
                    "mean",
                    str(mean),
                    f"noise carried the mean to or {side} the query's {bound} ({mean}), outside "
                    f"what the data can give: shown at that bound, not a measured value{about}",
                )
            )
        if stddev is not None and stddev in (zero_text, spread_text):
            low_side = stddev == zero_text
            found.append(
                Clamped(
                    stratum,
                    "stddev",
                    str(stddev),
                    "noise carried the variance to 0 or below: shown as 0, not a measured value"
                    if low_side
                    else "noise carried the variance to or above (value.max - value.min)^2, "
                    "past what the data can give: shown at that bound, not a measured value",
                )
            )
    return found


def caveat(result: dict[str, Any]) -> str | None:
    """What a reader of this result must be told besides its figures, if anything."""
    return NO_NOISE if result.get("noise") == "none" else None


def uncounted(record: dict[str, Any]) -> str | None:
    """How many enrolled patients the answerers counted nowhere (research v3 `dropped`), if
    any: a short count is said, never silent (node/study_partials.py)."""
    n = int(record.get("dropped") or 0)
    if not n:
        return None
    return (
        f"{n} enrolled patient{'s' if n > 1 else ''} counted nowhere: their count-once link "
        "was too young when the query started, or two hospitals' nodes disagreed on who "
        "counts them"
    )


def _text(value: Any) -> str:
    return SUPPRESSED if value is None else str(value)


def _number(fixed: int) -> str:
    return str(decimal_text(fixed))


def bin_labels(q: study_query.StudyQuery) -> list[str]:
    """`[3, 5)` ... and the last bin closed: `[10, 20]`."""
    edges = q.histogram_edges
    labels = [f"[{_number(a)}, {_number(b)})" for a, b in zip(edges, edges[1:], strict=False)]
    if labels:
        labels[-1] = labels[-1][:-1] + "]"
    return labels


def tables(
    doc: dict[str, Any], result: dict[str, Any], *, mark_clamped: bool = True
) -> list[Table]:
    """The result's tables, in a fixed order; only those the query asked for.

    `mark_clamped=False` renders them as crates written before clamped figures were marked
    (session 13) hold them, so that `crate verify` still recognises those crates."""
    q = study_query.parse(doc)
    strata: list[dict[str, Any]] = list(result.get("strata") or [])
    bounded = clamped(doc, result) if mark_clamped else []
    marked = {(c.stratum, c.figure) for c in bounded}

    def figure(s: dict[str, Any], column: str) -> str:
        text = _text(s.get(column))
        return f"{text} {CLAMPED}" if (str(s["stratum"]), column) in marked else text

    found = []
    summary_cols = [c for c in ("count", "mean", "stddev") if q.asks(c)]
    if summary_cols:
        found.append(
            Table(
                "summary",
                "Patients and values per stratum",
                ("stratum", *("patients" if c == "count" else c for c in summary_cols)),
                tuple((str(s["stratum"]), *(figure(s, c) for c in summary_cols)) for s in strata),
            )
        )
    if q.asks("histogram"):
        labels = bin_labels(q)
        found.append(
            Table(
                "histogram",
                f"Patients per value bin ({q.value_of} value of each patient)",
                ("stratum", "bin", "patients"),
                tuple(
                    (str(s["stratum"]), label, _text(None if s["histogram"] is None else n))
                    for s in strata
                    for label, n in zip(labels, s["histogram"] or [None] * len(labels), strict=True)
                ),
            )
        )
    if q.asks("quantiles"):
        levels = [_number(x) for x in q.quantiles]  # milli, as SCALE
        found.append(
            Table(
                "quantiles",
                "Quantiles, interpolated within the histogram's bins",
                ("stratum", "quantile", "value"),
                tuple(
                    (str(s["stratum"]), level, _text(value))
                    for s in strata
                    for level, value in zip(
                        levels, s.get("quantiles") or [None] * len(levels), strict=True
                    )
                ),
            )
        )
    if q.asks("table2x2"):
        found.append(
            Table(
                "table2x2",
                "Patients by rows (yes/no) and columns (yes/no)",
                ("stratum", "rows", "columns", "patients"),
                tuple(
                    (
                        str(s["stratum"]),
                        _TABLE_LABELS[cell[0]],
                        _TABLE_LABELS[cell[1]],
                        _text(None if s["table2x2"] is None else s["table2x2"][cell]),
                    )
                    for s in strata
                    for cell in study_query.TABLE_CELLS
                ),
            )
        )
    if "unit_mismatch" in result:
        found.append(
            Table(
                "global",
                "Across strata",
                ("figure", "value"),
                (("patients with a record of the cohort's code in another unit",
                  _text(result["unit_mismatch"])),),
            )
        )  # fmt: skip
    if bounded:
        found.append(
            Table(
                "clamped",
                "Figures clamped: noise carried them outside what the data can give",
                ("stratum", "figure", "shown", "why"),
                tuple((c.stratum, c.figure, c.shown, c.why) for c in bounded),
            )
        )
    return found


def charts(doc: dict[str, Any], result: dict[str, Any]) -> list[Series]:
    """What to draw: each stratum's histogram when one was asked, else patients per stratum."""
    q = study_query.parse(doc)
    strata: list[dict[str, Any]] = list(result.get("strata") or [])
    if q.asks("histogram"):
        labels = bin_labels(q)
        return [
            Series(
                f"Value distribution, {s['stratum']}",
                f"Patients per bin of the {q.value_of} value, stratum {s['stratum']}"
                + ("; the histogram is suppressed (a bin under k)" if not s["histogram"] else ""),
                tuple(
                    Bar(label, None if s["histogram"] is None else s["histogram"][i])
                    for i, label in enumerate(labels)
                ),
            )
            for s in strata
        ]
    if q.asks("count"):
        return [
            Series(
                "Patients per stratum",
                "Patients in the cohort per stratum; a suppressed stratum has fewer than k",
                tuple(Bar(str(s["stratum"]), s.get("count")) for s in strata),
            )
        ]
    return []


# -- the chain's record of a query, as the pages and commands list it ----------------------


@dataclass(frozen=True)
class Answer:
    """What one hospital contributed: how many enrolled patients it answered for, its tx."""

    org: str
    patients: int
    tx: bytes


@dataclass(frozen=True)
class Approval:
    role: str  # ethics | custodian
    org: str
    by: str  # the DPO
    tx: bytes


def _entries(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """A record's per-org map or list as (org, entry) pairs, in org order."""
    if isinstance(value, dict):
        return sorted((str(k), v if isinstance(v, dict) else {}) for k, v in value.items())
    if isinstance(value, list):
        return sorted((str(v.get("org", "")), v) for v in value if isinstance(v, dict))
    return []


def answers(record: dict[str, Any]) -> list[Answer]:
    """The answers on the chain (`research/query`), one per hospital."""
    return [
        Answer(org, int(entry.get("patients", 0)), bytes(entry.get("tx", b"")))
        for org, entry in _entries(record.get("answers") or record.get("answered"))
    ]


def approvals(record: dict[str, Any]) -> list[Approval]:
    """The approvals on the chain, ethics first."""
    found = [
        Approval(
            str(entry.get("role", "")),
            org,
            str(entry.get("by", "") or entry.get("practitioner", "")),
            bytes(entry.get("tx", b"")),
        )
        for org, entry in _entries(record.get("approvals"))
    ]
    return sorted(found, key=lambda a: (a.role != "ethics", a.org))
