"""review15, on outside15's search by POST: the form body takes nothing from the GET search's
guards. What it serves is on the patient's trail as a GET search's is (one `search` entry
per record served, the practitioner as actor), the launch context still limits it, and a
patient named in the URL and another in the form match nothing (both filters apply)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import STRANGER_PID, Api, eventually


def _searches(api: Api) -> list[dict[str, Any]]:
    trail: list[dict[str, Any]] = api.services.node.engine.query(
        "access/of_patient", {"pid": api.pid}
    )
    return [e for e in trail if e["action"] == "search" and e["outcome"] == "granted"]


def test_a_search_by_post_is_on_the_trail_and_keeps_every_guard(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    before = len(_searches(api))
    form = {"patient": api.patient_rid, "code": "http://loinc.org|718-7"}
    posted = api.client.post("/fhir/Observation/_search", data=form, headers=headers).json()
    assert posted["total"] == 4
    assert eventually(lambda: len(_searches(api)) > before)
    logged = _searches(api)[before:]
    assert {e["actor"] for e in logged} == {"practitioner:chu-lyon/dr-martin"}
    assert sum(len(e["rids"]) for e in logged) == 4

    both = api.client.post(
        f"/fhir/Observation/_search?patient={STRANGER_PID}", data=form, headers=headers
    )
    assert both.status_code in (403, 404) or both.json()["total"] == 0, both.text

    launched = api.token("Practitioner/dr-martin", "patient/*.rs launch", patient=api.pid)
    other = api.client.post(
        "/fhir/Observation/_search", data={"patient": STRANGER_PID}, headers=launched
    )
    assert other.status_code in (403, 404), other.text
