"""The patient's records as people read them: the rows of the portal and of the clinician
timeline (values with units, reference ranges, flags, codes by their display), the patient's
header (name, sex, age, identifiers) and the trends of repeated results.

Everything here reads the FHIR JSON the vault holds; nothing is sent anywhere. Which records a
token reaches is decided as an API search would (`timeline_rows`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import orjson

from medledger.api.auth import allows
from medledger.api.fhir import LocalRecords
from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims

_INS_OIDS = ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11")
#: Categories whose repetition is worth a warning: an exam done again. Vital signs are taken at
#: every visit on purpose.
EXAM_CATEGORIES = frozenset({"labs", "imaging", "procedures", "diagnostic-reports"})


def timeline_rows(svc: HospitalServices, pid: str, claims: Claims) -> list[dict[str, Any]]:
    """Local records of the patient that the token's scopes reach (as an API search would),
    newest first, with their source hospital and what a reader needs of each."""
    from medledger.interop.metadata import extract_metadata

    rows = []
    for info in LocalRecords(svc).latest(pid):
        allowed = allows(claims, info.resource_type, "search")
        if allowed is None:
            continue
        resource = orjson.loads(svc.vault.get(info.rid))
        if not allowed.covers(resource):
            continue
        meta = extract_metadata(resource)
        rows.append(
            {
                "rid": info.rid,
                "type": info.resource_type,
                "date": meta.get("date") or "",
                "title": meta.get("title") or "",
                "code": meta.get("code") or "",
                "category": meta.get("category") or "",
                "source": info.custodian,
                "copy": info.is_copy,
                **reading(resource),
            }
        )
    rows.sort(key=lambda r: r["date"], reverse=True)
    return rows


def reading(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What a clinician reads of a result: `value` ("7.2 mmol/L", "120/80 mmHg"), `number` and
    `unit` (for trends), `range` ("4.0–6.0"), `flag` ("high", "low", "abnormal" or "")."""
    value, number, unit = _value(resource)
    if not value:  # a panel (blood pressure): its components' values, one unit
        parts = [_value(p) for p in resource.get("component") or [] if isinstance(p, Mapping)]
        numbers = [v.removesuffix(f" {u}") if u else v for v, _, u in parts if v]
        units = {u for v, _, u in parts if v}
        if numbers:
            unit = units.pop() if len(units) == 1 else ""
            value = "/".join(numbers) + (f" {unit}" if unit else "")
    low, high = _range(resource)
    normal = ""
    if low is not None and high is not None:
        normal = f"{_num(low)}–{_num(high)}"
    elif high is not None:
        normal = f"≤ {_num(high)}"
    elif low is not None:
        normal = f"≥ {_num(low)}"
    return {
        "value": value,
        "number": number,
        "unit": unit,
        "range": normal,
        "flag": _flag(resource, number, low, high),
    }


def _num(x: float) -> str:
    return f"{x:g}"


def _value(element: Mapping[str, Any]) -> tuple[str, float | None, str]:
    q = element.get("valueQuantity")
    if isinstance(q, Mapping) and isinstance(q.get("value"), int | float):
        unit = str(q.get("unit") or q.get("code") or "")
        number = float(q["value"])
        return (f"{_num(number)} {unit}".strip(), number, unit)
    if isinstance(element.get("valueString"), str):
        return (element["valueString"], None, "")
    concept = element.get("valueCodeableConcept")
    if isinstance(concept, Mapping):
        return (display_of(concept), None, "")
    for key in ("valueInteger", "valueBoolean"):
        if key in element and not isinstance(element[key], Mapping | list):
            return (str(element[key]), None, "")
    return ("", None, "")


def _range(resource: Mapping[str, Any]) -> tuple[float | None, float | None]:
    for rr in resource.get("referenceRange") or []:
        if not isinstance(rr, Mapping):
            continue
        low = rr.get("low", {}).get("value") if isinstance(rr.get("low"), Mapping) else None
        high = rr.get("high", {}).get("value") if isinstance(rr.get("high"), Mapping) else None
        ok = (isinstance(low, int | float) or low is None) and (
            isinstance(high, int | float) or high is None
        )
        if ok and (low is not None or high is not None):
            return (None if low is None else float(low), None if high is None else float(high))
    return (None, None)


_INTERPRETATION = {"H": "high", "HH": "high", "L": "low", "LL": "low", "A": "abnormal"}


def _flag(
    resource: Mapping[str, Any], number: float | None, low: float | None, high: float | None
) -> str:
    for concept in _objects(resource.get("interpretation")):
        for coding in _objects(concept.get("coding")):
            found = _INTERPRETATION.get(str(coding.get("code", "")).upper())
            if found:
                return found
    if number is not None and high is not None and number > high:
        return "high"
    if number is not None and low is not None and number < low:
        return "low"
    return ""


def _objects(value: Any) -> list[Mapping[str, Any]]:
    """The objects of a JSON array (a record's odd shape shows less, never fails the page)."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


#: A record's type as a patient reads it (translated by the pages).
TYPE_WORDS = {
    "Observation": "result",
    "Condition": "diagnosis",
    "Encounter": "visit",
    "DiagnosticReport": "report",
    "ImagingStudy": "imaging",
    "MedicationRequest": "prescription",
    "MedicationStatement": "medication",
    "AllergyIntolerance": "allergy",
    "Immunization": "vaccination",
    "Procedure": "procedure",
    "Patient": "identity",
    "DocumentReference": "document",
    "Composition": "document",
    "Bundle": "document",
    "Consent": "consent",
}


def display_of(concept: Mapping[str, Any]) -> str:
    """A CodeableConcept as a person reads it: its text, else its first coding's display,
    else its code."""
    if isinstance(concept.get("text"), str) and concept["text"]:
        return str(concept["text"])
    codings = [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]
    for c in codings:
        if c.get("display"):
            return str(c["display"])
    return str(codings[0].get("code", "")) if codings else ""


def patient_header(
    svc: HospitalServices, rows: list[dict[str, Any]], today: date | None = None
) -> dict[str, Any]:
    """Name, sex, age and identifiers of a patient, from the newest Patient resource among the
    `rows` the reader was allowed (its own first, else a copy): a token or grounds that do not
    reach the Patient resource show no name and no INS. Empty fields when there is none."""
    patients = [r for r in rows if r["type"] == "Patient"]
    patients.sort(key=lambda r: bool(r["copy"]))  # stable: rows come newest first
    if not patients:
        return {"name": "", "sex": "", "age": None, "birth": "", "identifiers": []}
    resource = orjson.loads(svc.vault.get(patients[0]["rid"]))
    return header_of(resource, today or date.today())


def header_of(patient: Mapping[str, Any], today: date) -> dict[str, Any]:
    names = [n for n in patient.get("name") or [] if isinstance(n, Mapping)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    name = (
        str(official.get("text") or "")
        or " ".join(
            [*(str(g) for g in official.get("given") or []), str(official.get("family") or "")]
        ).strip()
    )
    birth = str(patient.get("birthDate") or "")
    age = None
    try:
        born = date.fromisoformat(birth[:10]) if len(birth) >= 10 else None
    except ValueError:
        born = None
    if born is not None:
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    identifiers = []
    for ident in patient.get("identifier") or []:
        if not isinstance(ident, Mapping) or not ident.get("value"):
            continue
        system = str(ident.get("system") or "")
        label = "INS" if any(oid in system for oid in _INS_OIDS) else _id_label(ident)
        identifiers.append({"label": label, "value": str(ident["value"])})
    sex = {"male": "male", "female": "female", "other": "other", "unknown": "unknown"}
    return {
        "name": name,
        "sex": sex.get(str(patient.get("gender") or ""), ""),
        "age": age,
        "birth": birth,
        "identifiers": identifiers,
    }


def _id_label(ident: Mapping[str, Any]) -> str:
    kind = ident.get("type")
    if isinstance(kind, Mapping):
        shown = display_of(kind)
        if shown:
            return shown
    return "identifier"


def trends(rows: list[dict[str, Any]], minimum: int = 2) -> list[dict[str, Any]]:
    """Repeated numeric results of one code (across hospitals), oldest first, with the points
    of an inline SVG chart (360×110: x is the date, y from the lowest to the highest value)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("number") is not None and r["code"] and r["date"]:
            series.setdefault(r["code"], []).append(r)
    charts = []
    for code, points in sorted(series.items()):
        if len(points) < minimum or len({p["unit"] for p in points}) != 1:
            continue  # mixed units are not drawn on one axis
        points = sorted(points, key=lambda p: p["date"])
        values = [float(p["number"]) for p in points]
        days = [_day(p["date"]) for p in points]
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        first, last = min(days), max(days)
        width, height, pad = 360, 110, 20
        when_span = (last - first) or 1
        drawn = [
            {
                "x": round(pad + (d - first) / when_span * (width - 2 * pad), 1),
                "y": round(height - pad - (v - lo) / span * (height - 2 * pad), 1),
                "label": f"{p['date'][:10]}: {p['value']} ({p['source']})",
                "source": p["source"],
            }
            for p, v, d in zip(points, values, days, strict=True)
        ]
        charts.append(
            {
                "code": code,
                "title": points[-1]["title"] or code,
                "unit": points[-1]["unit"],
                "low": _num(lo),
                "high": _num(hi),
                "first": points[0]["date"][:10],
                "last": points[-1]["date"][:10],
                "points": drawn,
                "polyline": " ".join(f"{d['x']},{d['y']}" for d in drawn),
                "width": width,
                "height": height,
            }
        )
    return charts


def _day(iso: str) -> int:
    """Days since 1970 of an ISO date (the x axis of a trend); 0 when unreadable."""
    try:
        return date.fromisoformat(iso[:10]).toordinal()
    except ValueError:
        return 0


def hospital_names(svc: HospitalServices) -> dict[str, str]:
    """Each member's name by its org code, from the chain (an unknown code shows as itself)."""
    from medledger.contracts import queries

    return {str(m["org"]): str(m["name"]) for m in queries.members(svc.node.engine)}
