"""FHIR search as a clinician's app uses it: each parameter with its R4 meaning, what is not
applied said so (never echoed), patient scoping, _include, _elements, _summary and frozen pages.

The `api` fixture holds one patient of the generator: 20 Observations (5 codes, 4 visit days,
vital signs and labs), 4 Encounters, 4 DiagnosticReports, 2 Conditions, 1 AllergyIntolerance.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from medledger.interop.synth import generate

from .conftest import Api, eventually

LOINC = "http://loinc.org"
HEMOGLOBIN = "718-7"
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"


def _stored(api: Api, resource_type: str) -> list[dict[str, Any]]:
    """The patient's resources of a type as the vault holds them (what searches run over)."""
    found = []
    for rid in api.rids:
        if api.services.vault.info(rid).resource_type == resource_type:
            found.append(orjson.loads(api.services.vault.get(rid)))
    return found


def _staff(api: Api) -> dict[str, str]:
    return api.token("Practitioner/dr-martin", "user/*.rs")


def _get(api: Api, path: str, headers: dict[str, str] | None = None) -> Any:
    r = api.client.get(path, headers=headers or _staff(api))
    assert r.status_code == 200, r.text
    return r.json()


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _outcome(bundle: dict[str, Any]) -> str:
    found = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    return " ".join(i["diagnostics"] for o in found for i in o["issue"])


def _self(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    url = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    return parse_qsl(urlsplit(url).query)


def _codes(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource["code"]["coding"]}


# -- the defect of issue 12: filters answered with every Observation -----------------------


def test_a_code_search_answers_that_code_only_and_the_self_link_says_so(api: Api) -> None:
    everything = _stored(api, "Observation")
    wanted = [o for o in everything if HEMOGLOBIN in _codes(o)]
    assert 0 < len(wanted) < len(everything)
    bundle = _get(api, f"/fhir/Observation?patient={api.patient_rid}&code={LOINC}|{HEMOGLOBIN}")
    assert bundle["total"] == len(wanted)
    assert {o["id"] for o in _matches(bundle)} == {o["id"] for o in wanted}
    assert ("code", f"{LOINC}|{HEMOGLOBIN}") in _self(bundle)
    assert not _outcome(bundle)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (HEMOGLOBIN, {HEMOGLOBIN}),  # any system
        (f"{LOINC}|{HEMOGLOBIN}", {HEMOGLOBIN}),
        (f"|{HEMOGLOBIN}", set()),  # no system: ours all carry LOINC
        (f"{LOINC}|", {"85354-9", "8867-4", "29463-7", "718-7", "2857-1"}),
        (f"{HEMOGLOBIN},29463-7", {HEMOGLOBIN, "29463-7"}),  # comma = OR
        ("http://snomed.info/sct|718-7", set()),
    ],
)
def test_token_forms(api: Api, value: str, expected: set[str]) -> None:
    bundle = _get(api, f"/fhir/Observation?patient={api.patient_rid}&code={value}&_count=100")
    found = {c for o in _matches(bundle) for c in _codes(o)}
    assert found == expected
    assert bundle["total"] == sum(1 for o in _stored(api, "Observation") if _codes(o) & expected)


def test_code_text_and_not_and_repeated_parameters_are_and(api: Api) -> None:
    base = f"/fhir/Observation?patient={api.patient_rid}&_count=100"
    hemoglobin = _matches(_get(api, f"{base}&code:text=HEMOGLOBIN"))
    assert hemoglobin and all(HEMOGLOBIN in _codes(o) for o in hemoglobin)
    others = _matches(_get(api, f"{base}&code:not={LOINC}|{HEMOGLOBIN}"))
    assert len(others) == 20 - len(hemoglobin) and not any(HEMOGLOBIN in _codes(o) for o in others)
    labs = _matches(_get(api, f"{base}&category=laboratory"))
    assert labs and all(o["category"][0]["coding"][0]["code"] == "laboratory" for o in labs)
    # AND: laboratory and a vital-sign code never meet
    assert _get(api, f"{base}&category=laboratory&code=29463-7")["total"] == 0
    assert _get(api, f"{base}&category=laboratory&code={HEMOGLOBIN}")["total"] == len(hemoglobin)
    assert _get(api, f"{base}&status=final")["total"] == 20
    assert _get(api, f"{base}&status=preliminary")["total"] == 0


def test_condition_clinical_status_and_date(api: Api) -> None:
    base = f"/fhir/Condition?patient={api.patient_rid}"
    assert _get(api, f"{base}&clinical-status=active")["total"] == 2
    assert _get(api, f"{base}&clinical-status=resolved")["total"] == 0
    hypertension = _get(api, f"{base}&code=http://snomed.info/sct|38341003")
    (condition,) = _matches(hypertension)
    onset = condition["onsetDateTime"]
    assert _get(api, f"{base}&code=38341003&onset-date={onset[:4]}")["total"] == 1
    assert _get(api, f"{base}&code=38341003&onset-date=lt{onset[:4]}")["total"] == 0


@pytest.mark.parametrize(
    ("prefix", "keep"),
    [
        ("", lambda day, d: day == d),
        ("eq", lambda day, d: day == d),
        ("ne", lambda day, d: day != d),
        ("lt", lambda day, d: day < d),
        ("le", lambda day, d: day <= d),
        ("gt", lambda day, d: day > d),
        ("ge", lambda day, d: day >= d),
        ("sa", lambda day, d: day > d),
        ("eb", lambda day, d: day < d),
    ],
)
def test_date_prefixes_on_a_day(api: Api, prefix: str, keep: Any) -> None:
    # Effective times are Paris local times in the daytime: the UTC day is the same.
    observations = _stored(api, "Observation")
    days = sorted({o["effectiveDateTime"][:10] for o in observations})
    day = days[1]
    expected = {o["id"] for o in observations if keep(o["effectiveDateTime"][:10], day)}
    bundle = _get(api, f"/fhir/Observation?patient={api.patient_rid}&date={prefix}{day}&_count=100")
    assert {o["id"] for o in _matches(bundle)} == expected
    assert ("date", f"{prefix}{day}") in _self(bundle)


def test_partial_dates_and_ranges_and_periods(api: Api) -> None:
    observations = _stored(api, "Observation")
    year = min(o["effectiveDateTime"][:4] for o in observations)
    in_year = {o["id"] for o in observations if o["effectiveDateTime"].startswith(year)}
    base = f"/fhir/Observation?patient={api.patient_rid}&_count=100"
    assert {o["id"] for o in _matches(_get(api, f"{base}&date={year}"))} == in_year
    month = min(o["effectiveDateTime"][:7] for o in observations)
    in_month = {o["id"] for o in observations if o["effectiveDateTime"].startswith(month)}
    assert {o["id"] for o in _matches(_get(api, f"{base}&date={month}"))} == in_month
    # a range: repeated parameter = AND
    ranged = _get(api, f"{base}&date=ge{year}-01-01&date=lt{int(year) + 1}-01-01")
    assert {o["id"] for o in _matches(ranged)} == in_year
    # Encounter.period is a Period: an instant inside it is matched by `le`/`ge` around it
    (encounter, *_) = _stored(api, "Encounter")
    start = encounter["period"]["start"]
    bundle = _get(
        api, f"/fhir/Encounter?patient={api.patient_rid}&date=ge{start[:10]}&date=le{start[:10]}"
    )
    assert encounter["id"] in {e["id"] for e in _matches(bundle)}


def test_sort_by_date_both_ways_and_by_last_updated(api: Api) -> None:
    base = f"/fhir/Observation?patient={api.patient_rid}&_count=100"
    up = [o["effectiveDateTime"] for o in _matches(_get(api, f"{base}&_sort=date"))]
    down = [o["effectiveDateTime"] for o in _matches(_get(api, f"{base}&_sort=-date"))]
    assert up == sorted(up) and down == sorted(down, reverse=True) and up[0] != up[-1]
    by_time = _get(api, f"{base}&_sort=-_lastUpdated&_lastUpdated=gt2020")
    assert by_time["total"] == 20 and ("_sort", "-_lastUpdated") in _self(by_time)
    assert _get(api, f"{base}&_lastUpdated=lt2020")["total"] == 0


def test_summary_count_and_count_zero_give_the_total_only(api: Api) -> None:
    for ask in ("_summary=count", "_count=0"):
        bundle = _get(api, f"/fhir/Observation?patient={api.patient_rid}&{ask}&code={HEMOGLOBIN}")
        assert bundle["total"] == 4 and "entry" not in bundle


def test_elements_keep_what_is_asked_and_the_mandatory_ones_tagged_subsetted(api: Api) -> None:
    bundle = _get(api, f"/fhir/Observation?patient={api.patient_rid}&_elements=effective")
    for observation in _matches(bundle):
        assert set(observation) == {
            "resourceType",
            "id",
            "meta",
            "status",
            "code",
            "effectiveDateTime",
        }
        assert observation["meta"]["tag"][-1]["code"] == "SUBSETTED"


# -- what is not applied is said, never echoed ------------------------------------------------


def test_an_unknown_parameter_is_left_out_of_the_self_link_and_reported(api: Api) -> None:
    path = f"/fhir/Observation?patient={api.patient_rid}&code={HEMOGLOBIN}&value-quantity=gt10"
    bundle = _get(api, path + "&_has:Encounter:patient:status=finished")
    assert bundle["total"] == 4  # the code applied, the others not
    names = [name for name, _ in _self(bundle)]
    assert "value-quantity" not in names and not any(n.startswith("_has") for n in names)
    assert "value-quantity" in _outcome(bundle) and "_has:Encounter" in _outcome(bundle)
    # strict: refused, naming it
    r = api.client.get(path, headers={**_staff(api), "Prefer": "handling=strict"})
    assert r.status_code == 400 and "value-quantity" in r.json()["issue"][0]["diagnostics"]
    # every page says so, and no page link carries it
    first = _get(api, f"/fhir/Observation?patient={api.patient_rid}&flavour=x&_count=5")
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "flavour" not in nxt and "flavour" in _outcome(_follow(api, nxt, _staff(api)))
    # a search without its patient says what it did not apply
    r = api.client.get("/fhir/Observation?patient:identifier=urn:x|1", headers=_staff(api))
    assert r.status_code == 400 and "patient:identifier" in r.text


@pytest.mark.parametrize(
    "unsupported",
    ["date=ap2024-07-23", "code:above=718-7", "_sort=status", "_summary=true", "_include=*"],
)
def test_a_known_parameter_applied_partly_is_not_applied_at_all(api: Api, unsupported: str) -> None:
    bundle = _get(api, f"/fhir/Observation?patient={api.patient_rid}&{unsupported}&_count=100")
    assert bundle["total"] == 20 and len(_matches(bundle)) == 20
    name = unsupported.split("=")[0]
    assert name not in [n for n, _ in _self(bundle)] and name in _outcome(bundle)


def test_a_malformed_value_is_a_400_naming_it(api: Api) -> None:
    for bad in ("date=2024-13-45", "date=yesterday", "_count=many", "subject=Group/x"):
        r = api.client.get(
            f"/fhir/Observation?patient={api.patient_rid}&{bad}", headers=_staff(api)
        )
        assert r.status_code == 400, bad
        assert bad.split("=")[0] in r.json()["issue"][0]["diagnostics"]


# -- which patient ----------------------------------------------------------------------------


def test_patient_by_id_and_by_identifier_and_subject_forms(api: Api) -> None:
    by_id = _matches(_get(api, f"/fhir/Patient?_id={api.patient_rid}"))
    assert [p["id"] for p in by_id] == [api.patient_rid]
    patient = by_id[0]
    ins = next(i["value"] for i in patient["identifier"] if i["system"] == INS_NIR_TEST)
    by_ins = _get(api, f"/fhir/Patient?identifier={INS_NIR_TEST}|{ins}")
    assert [p["id"] for p in _matches(by_ins)] == [api.patient_rid]
    assert _get(api, f"/fhir/Patient?identifier={INS_NIR_TEST}|{ins}&gender=female")["total"] == (
        1 if patient["gender"] == "female" else 0
    )
    assert _get(api, f"/fhir/Patient?identifier={INS_NIR_TEST}|279126719720336")["total"] == 0
    bad_key = api.client.get(
        f"/fhir/Patient?identifier={INS_NIR_TEST}|279126719720389", headers=_staff(api)
    )
    assert bad_key.status_code == 400 and "not a valid INS" in bad_key.text
    for subject in (
        f"subject=Patient/{api.patient_rid}",
        f"subject={api.patient_rid}",
        f"subject:Patient={api.patient_rid}",
        f"patient=http://testserver/fhir/Patient/{api.patient_rid}",
        f"patient={api.pid}",
    ):
        assert _get(api, f"/fhir/Observation?{subject}&_summary=count")["total"] == 20, subject


def test_a_clinical_search_without_a_patient_is_refused_unless_pinned(api: Api) -> None:
    r = api.client.get("/fhir/Observation?code=718-7", headers=_staff(api))
    assert r.status_code == 400 and "patient" in r.json()["issue"][0]["diagnostics"]
    observation = _stored(api, "Observation")[0]
    pinned = _get(api, f"/fhir/Observation?_id={observation['id']}")
    assert [o["id"] for o in _matches(pinned)] == [observation["id"]]
    # a launch context is the patient
    ehr = api.token("Practitioner/dr-martin", "patient/*.rs launch", patient=api.pid)
    assert _get(api, f"/fhir/Observation?code={HEMOGLOBIN}", ehr)["total"] == 4


def test_the_category_of_a_scope_still_narrows_a_filtered_search(api: Api) -> None:
    scope = "patient/Observation.rs?category=laboratory"
    headers = api.token(f"Patient/{api.pid}", scope, api.pid)
    bundle = _get(api, "/fhir/Observation?code=29463-7,718-7&_count=100", headers)
    assert bundle["total"] == 4 and all(HEMOGLOBIN in _codes(o) for o in _matches(bundle))


# -- _include / _revinclude ---------------------------------------------------------------------


def test_include_patient_and_encounter_and_revinclude(api: Api) -> None:
    bundle = _get(
        api,
        f"/fhir/Observation?patient={api.patient_rid}&code={HEMOGLOBIN}"
        "&_include=Observation:patient&_include=Observation:encounter",
    )
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    kinds = sorted({r["resourceType"] for r in included})
    assert kinds == ["Encounter", "Patient"] and bundle["total"] == 4
    wanted = {o["encounter"]["reference"].split("/")[1] for o in _matches(bundle)}
    assert {r["id"] for r in included if r["resourceType"] == "Encounter"} == wanted
    rev = _get(api, f"/fhir/Patient?_id={api.patient_rid}&_revinclude=Observation:patient")
    assert rev["total"] == 1
    assert sum(1 for e in rev["entry"] if e["search"]["mode"] == "include") == 20
    # every included record is on the patient's trail like a match
    included_rids = {r["id"] for r in included}

    def logged() -> bool:
        trail = api.services.node.engine.query("access/of_patient", {"pid": api.pid})
        return included_rids <= {rid for e in trail if e["action"] == "search" for rid in e["rids"]}

    assert eventually(logged)


# -- frozen pages -----------------------------------------------------------------------------


def _follow(api: Api, url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = api.client.get(url.replace("http://testserver", ""), headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_pages_serve_the_first_result_while_records_arrive(api: Api) -> None:
    headers = _staff(api)
    page = _get(api, f"/fhir/Observation?patient={api.patient_rid}&_count=6&_sort=date", headers)
    total = page["total"]
    seen = [o["id"] for o in _matches(page)]
    # the same person comes back with new results (same INS: same pid) between pages
    again = generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]
    result = api.services.ingestor.ingest_bytes(orjson.dumps(again), "again.json")
    assert not result.rejections and result.pids == {api.pid}
    while True:
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = _follow(api, nxt[0], headers)
        assert page["total"] == total
        seen += [o["id"] for o in _matches(page)]
    assert len(seen) == len(set(seen)) == total == 20
    # a new search sees what arrived
    fresh = _get(api, f"/fhir/Observation?patient={api.patient_rid}&_summary=count", headers)
    assert fresh["total"] > total
    # previous links walk back over the same result
    prev = [link["url"] for link in page["link"] if link["relation"] == "previous"]
    back = _follow(api, prev[0], headers)
    assert [o["id"] for o in _matches(back)] == seen[
        -(len(_matches(page)) + 6) : -len(_matches(page))
    ]


def test_a_page_link_answers_only_its_caller(api: Api) -> None:
    page = _get(api, f"/fhir/Observation?patient={api.patient_rid}&_count=5")
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    other = api.token("Device/chu-lyon-system", "system/*.rs")
    r = api.client.get(nxt.replace("http://testserver", ""), headers=other)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    made_up = nxt.split("_snapshot=")[0] + "_snapshot=not-a-token&_offset=5"
    r = api.client.get(made_up.replace("http://testserver", ""), headers=_staff(api))
    assert r.status_code == 404 and "run the search again" in r.text


def test_the_fixed_searches_echo_only_what_they_applied(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    for path in ("/fhir/Consent", "/fhir/AuditEvent"):
        bundle = _get(api, f"{path}?patient={api.patient_rid}&status=active", headers)
        assert ("patient", api.patient_rid) in _self(bundle)
        assert "status" not in dict(_self(bundle)) and "status" in _outcome(bundle)


def test_the_capability_statement_lists_what_search_applies(api: Api) -> None:
    statement = api.client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    assert "patient-scoped" in rest["documentation"]
    observation = next(r for r in rest["resource"] if r["type"] == "Observation")
    names = {p["name"] for p in observation["searchParam"]}
    assert {"_id", "_lastUpdated", "patient", "subject", "code", "category", "date"} <= names
    assert {"_sort", "_count", "_summary", "_elements"} <= names
    assert {"Observation:patient", "Observation:encounter"} <= set(observation["searchInclude"])
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert "Observation:patient" in patient["searchRevInclude"]
    # Medication is not served here (yet): its include is neither listed nor applied
    request = next(r for r in rest["resource"] if r["type"] == "MedicationRequest")
    assert "MedicationRequest:medication" not in request["searchInclude"]
    bundle = _get(
        api,
        f"/fhir/MedicationRequest?patient={api.patient_rid}&_include=MedicationRequest:medication",
    )
    assert "_include" not in dict(_self(bundle)) and "Medication is not served" in _outcome(bundle)


def test_each_page_decides_again_so_a_revocation_between_pages_applies(api: Api) -> None:
    headers = _staff(api)
    first = _get(api, f"/fhir/Observation?patient={api.patient_rid}&_count=5", headers)
    assert len(_matches(first)) == 5
    api.services.node.wallet.send("identity.revoke", {"practitioner": "dr-martin"})
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = _follow(api, nxt, headers)
    assert _matches(second) == [] and "5 matches are no longer allowed" in _outcome(second)

    def denied() -> bool:
        trail = api.services.node.engine.query("access/of_patient", {"pid": api.pid})
        return any(e["outcome"] == "denied" and e["action"] == "search" for e in trail)

    assert eventually(denied)
