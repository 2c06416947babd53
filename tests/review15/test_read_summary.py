"""review15, on outside15's reads with `_summary`: a read refuses `_summary=true` or `text`
(400, as it must: it would not apply them), but its message said "(count, data, false)", the
search's list, when `count` is refused on a read too: a client following it gets a second
400. The message names what a read takes: data, false."""

from __future__ import annotations

from tests.api.conftest import Api


def test_a_reads_refused_summary_names_only_what_a_read_takes(api: Api) -> None:
    headers = api.token("Practitioner/dr-martin", "user/*.rs")
    for value in ("true", "text"):
        response = api.client.get(
            f"/fhir/Patient/{api.patient_rid}?_summary={value}", headers=headers
        )
        assert response.status_code == 400, value
        diagnostics = response.json()["issue"][0]["diagnostics"]
        assert diagnostics.endswith("is not supported on a read (data, false)"), diagnostics
        assert "count" not in diagnostics
    counted = api.client.get(f"/fhir/Patient/{api.patient_rid}?_summary=count", headers=headers)
    assert counted.status_code == 400
    assert "applies to a search, not a read" in counted.json()["issue"][0]["diagnostics"]
