"""The patient portal in a real browser: who accessed my data."""

from __future__ import annotations

import pytest

from ..api.conftest import eventually

pytestmark = pytest.mark.browser


def test_a_patient_sees_a_clinicians_read_with_its_basis(served, browser, shot) -> None:
    api, url = served
    base = url.removesuffix("/fhir")
    staff = api.token("Practitioner/dr-martin", "user/*.rs")
    r = api.client.get(f"/fhir/Patient/{api.patient_rid}", headers=staff)
    assert r.status_code == 200
    eventually(
        lambda: any(
            e["actor"] == "practitioner:chu-lyon/dr-martin"
            for e in api.services.node.engine.query("access/of_patient", {"pid": api.pid})
        )
    )
    token = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)["Authorization"][7:]
    page = browser.new_page()
    try:
        page.goto(f"{base}/portal")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_selector("#who")
        rows = page.locator("#trail-filter + table tbody tr")
        texts = [rows.nth(i).inner_text() for i in range(rows.count())]
        assert any(
            "dr-martin, CHU de Lyon" in t and "as the hospital that made the record" in t
            for t in texts
        ), texts
        shot(page, "who-accessed-my-data")
        with page.expect_download() as download:
            page.locator("a[href^='/portal/proof/']").first.click()
        assert download.value.suggested_filename.startswith("proof-")
    finally:
        page.close()
