"""Clinical rules shown to the clinician over the timeline: advice, never a refusal."""

from __future__ import annotations

from datetime import date
from typing import Any

from medledger.web.records import EXAM_CATEGORIES


def duplicate_exams(rows: list[dict[str, Any]], window_days: int = 42) -> list[str]:
    """Warn when the same exam (same LOINC or imaging code) was done at another hospital within
    the window: the clinician may not need to order it again. Exams only (labs, imaging,
    procedures, reports): vital signs are taken at every visit on purpose."""
    by_code: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["category"] in EXAM_CATEGORIES and r["code"] and r["date"]:
            by_code.setdefault(r["code"], []).append(r)
    warnings = []
    for code, items in sorted(by_code.items()):
        items.sort(key=lambda r: r["date"])
        for a, b in zip(items, items[1:], strict=False):
            if a["source"] == b["source"]:
                continue
            try:
                gap = abs(
                    (date.fromisoformat(b["date"][:10]) - date.fromisoformat(a["date"][:10])).days
                )
            except ValueError:
                continue
            if gap <= window_days:
                warnings.append(
                    f"{b['title'] or code}: done at {a['source']} on {a['date'][:10]} and at "
                    f"{b['source']} on {b['date'][:10]} ({gap} days apart)"
                )
    return warnings
