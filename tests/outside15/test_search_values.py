"""A search value a boolean parameter cannot take (`active=maybe`, `active=TRUE`): malformed,
so a 400 naming the parameter (README: "a malformed value is always a 400"), not an empty
result that looks like a search that was applied and found nothing."""

from __future__ import annotations

import httpx

from tests.api.conftest import Api


def _read(api: Api, path: str) -> httpx.Response:
    response: httpx.Response = api.client.get(
        path, headers=api.token("Practitioner/dr-martin", "user/*.rs")
    )
    return response


def test_a_boolean_search_value_other_than_true_or_false_is_malformed(api: Api) -> None:
    base = f"/fhir/Patient?_id={api.patient_rid}"
    assert _read(api, f"{base}&active=true").json()["total"] == 1
    assert _read(api, f"{base}&active=false").json()["total"] == 0
    assert _read(api, f"{base}&active:not=false").json()["total"] == 1
    for value in ("maybe", "TRUE", "1", "http://x|true"):
        response = _read(api, f"{base}&active={value}")
        assert response.status_code == 400, value
        assert response.json()["issue"][0]["expression"] == ["active"]
