"""The search module alone: FHIR date ranges and prefixes, token and string matching, what
`parse` refuses or leaves out, and the snapshot store's bounds (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from medledger.api.outcomes import FhirError
from medledger.api.search import (
    DateRange,
    MatchContext,
    Query,
    Snapshots,
    date_range,
    parse,
    strict_handling,
)

BASE = "https://h.example/fhir"


def _match(resource_type: str, query: str, resource: dict[str, Any]) -> bool:
    items = [tuple(p.split("=", 1)) for p in query.split("&")]
    parsed = parse(resource_type, items, strict=True, base=BASE)  # type: ignore[arg-type]
    return all(f.matches(resource, MatchContext(BASE)) for f in parsed.filters)


def test_a_date_covers_its_precision() -> None:
    assert date_range("2024") == DateRange(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    )
    leap = date_range("2024-02")
    assert leap.high is not None and leap.low is not None and (leap.high - leap.low).days == 29
    local = date_range("2024-02-03T10:00+02:00")
    assert local.low == datetime(2024, 2, 3, 8, 0, tzinfo=UTC)
    assert local.high == datetime(2024, 2, 3, 8, 1, tzinfo=UTC)
    fine = date_range("2024-02-03T10:00:05.25Z")
    assert fine.low is not None and fine.high is not None
    assert (fine.high - fine.low).total_seconds() == pytest.approx(0.01)
    for bad in ("2024-13", "2024-02-30", "24-02-03", "2024-02-03T25:00Z", "today"):
        with pytest.raises(ValueError):
            date_range(bad)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("date=2020", True),
        ("date=2020-03", True),
        ("date=2020-03-01", False),  # the period runs on past that day
        ("date=gt2020-03-01", True),
        ("date=lt2020-03-01", False),  # starts on 3 March
        ("date=sa2020-03-03", False),  # starts on that day, not after it
        ("date=sa2020-03-02", True),
        ("date=eb2020-03-20", True),
        ("date=eb2020-03-09", False),
        ("date=ge2020-03-09&date=le2020-03-09", True),  # runs on both sides of that day
        ("date=ne2020", False),
    ],
)
def test_prefixes_against_a_period(query: str, expected: bool) -> None:
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "period": {"start": "2020-03-03T09:00:00Z", "end": "2020-03-10T17:00:00Z"},
    }
    assert _match("Encounter", query, encounter) is expected


def test_an_open_period_reaches_forever() -> None:
    ongoing = {"resourceType": "Encounter", "period": {"start": "2020-03-03T09:00:00Z"}}
    assert _match("Encounter", "date=gt2090", ongoing)
    assert not _match("Encounter", "date=eb2090", ongoing)


def test_tokens_strings_and_references() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "A,1"}],
        "name": [{"family": "Lefèvre", "given": ["Zoé"]}],
        "active": True,
    }
    assert _match("Patient", r"identifier=urn:mrn|A\,1", patient)  # an escaped comma
    assert not _match("Patient", "identifier=urn:mrn|A", patient)
    assert _match("Patient", "family=lefev", patient)  # case and accents folded, prefix
    assert not _match("Patient", "family=efev", patient)
    assert _match("Patient", "family:contains=EFEV", patient)
    assert not _match("Patient", "family:exact=Lefevre", patient)
    assert _match("Patient", "name=zoe", patient) and _match("Patient", "active=true", patient)
    assert _match("Patient", "gender:missing=true", patient)
    observation = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "encounter": {"reference": f"{BASE}/Encounter/e1"},
    }
    assert _match("Observation", "encounter=Encounter/e1", observation)
    assert _match("Observation", "encounter=e1", observation)
    assert _match("Observation", f"encounter={BASE}/Encounter/e1", observation)
    assert not _match(
        "Observation", "encounter=https://other.example/fhir/Encounter/e1", observation
    )
    assert _match("Observation", "code:not=1234-5", observation)


def test_parse_leaves_out_what_it_cannot_apply_and_strict_refuses_it() -> None:
    items = [("code", "718-7"), ("foo", "1"), ("date", "ap2020"), ("_sort", "code")]
    lenient = parse("Observation", items, strict=False, base=BASE)
    assert [f.name for f in lenient.filters] == ["code"]
    assert [n for n, _ in lenient.not_applied] == ["foo", "date", "_sort"]
    assert lenient.self_query() == "code=718-7"
    with pytest.raises(FhirError) as refused:
        parse("Observation", items, strict=True, base=BASE)
    assert refused.value.status == 400 and "foo" in refused.value.diagnostics
    assert strict_handling("respond-async; handling=strict")
    assert not strict_handling("handling=lenient")


def test_snapshots_expire_to_410_for_their_owner_only() -> None:
    now = [0.0]
    store = Snapshots(max_age=60, clock=lambda: now[0])
    alice, bob = ("iss", "Practitioner/a", None), ("iss", "Practitioner/b", None)
    snap = store.put(alice, "Observation", "search", [("r1", 1), ("r2", 1)], Query("Observation"))
    assert store.get(snap.token, alice).items == (("r1", 1), ("r2", 1))
    with pytest.raises(FhirError) as foreign:
        store.get(snap.token, bob)
    assert foreign.value.status == 404
    now[0] = 61
    with pytest.raises(FhirError) as expired:
        store.get(snap.token, alice)
    assert expired.value.status == 410
    with pytest.raises(FhirError) as still_foreign:
        store.get(snap.token, bob)
    assert still_foreign.value.status == 404


def test_snapshots_are_bounded_in_entries_and_per_caller() -> None:
    store = Snapshots(max_entries=10, per_owner=2)
    alice, bob = ("iss", "a", None), ("iss", "b", None)
    first = store.put(alice, "Observation", "search", [("r", 1)] * 6, Query("Observation"))
    second = store.put(bob, "Observation", "search", [("r", 1)] * 4, Query("Observation"))
    third = store.put(bob, "Observation", "search", [("r", 1)] * 3, Query("Observation"))
    assert len(store) == 2  # alice's (least recently used) made room
    with pytest.raises(FhirError):
        store.get(first.token, alice)
    store.put(bob, "Observation", "search", [("r", 1)], Query("Observation"))
    with pytest.raises(FhirError):  # two a caller at most here: bob's oldest went
        store.get(second.token, bob)
    assert store.get(third.token, bob).items
