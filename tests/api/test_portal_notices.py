"""The patient's portal shows what hospitals did in the patient's name: an erasure asked on the
portal waits 72 h (contracts/erasure.py), and every act signed on their behalf is listed with
the hospitals that hold their records (contracts/patients.py, `patients/notices`)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from medledger.web.site import create_app

from .conftest import Api, _hidden_fields


def test_an_erasure_asked_on_the_portal_is_pending_and_listed_as_an_act_in_my_name(
    api: Api,
) -> None:
    browser = TestClient(create_app(api.services))
    token = api.token(f"Patient/{api.pid}", "patient/*.cruds", api.pid)["Authorization"][7:]
    page = browser.post("/login", data={"token": token, "next": "/portal"}).text
    assert "no hospital acted in your name" in page
    assert "takes effect after 72 hours" in page
    asked = browser.post("/portal/erasure", data=_hidden_fields(page))
    assert asked.status_code == 200, asked.text  # the redirect back to the portal, followed
    assert "pending until" in asked.text and "Nothing is erased before then" in asked.text
    assert "filed in your name by CHU de Lyon" in asked.text  # the hospital by its name
    assert "asked for erasure" in asked.text  # in "Acts in my name", by chu-lyon's portal
    assert "through this portal" in asked.text
    assert api.services.node.engine.query("erasure/status", {"pid": api.pid}) is None
    pending = api.services.node.engine.query("erasure/pending", {"pid": api.pid})
    assert pending["signed"]["channel"] == "portal"
