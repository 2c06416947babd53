"""The clinician view in a real browser: a refusal, then break-the-glass with its reason."""

from __future__ import annotations

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.ledger.keys import SigningKey
from medledger.node.notes import NoteStore

pytestmark = pytest.mark.browser


def test_break_the_glass_opens_a_copy_held_from_another_hospital(served, browser, shot) -> None:
    api, url = served
    base = url.removesuffix("/fhir")
    svc = api.services
    node, vault = svc.node, svc.vault
    # A record of this patient held here as a copy of AP-HP Paris's (what the sync agent
    # stores): Lyon's clinicians may not read it without a basis.
    paris_bundle = generate(1, ["aphp-paris", "chu-lyon"], seed=5)["aphp-paris"][0]
    obs = next(
        e["resource"]
        for e in paris_bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )
    obs["subject"] = {"reference": f"Patient/{api.patient_rid}"}
    vault.put(
        api.pid,
        "copy-obs-1",
        1,
        orjson.dumps(obs),
        resource_type="Observation",
        custodian="aphp-paris",
        is_copy=True,
    )
    key = SigningKey.generate()
    key.save(node.config.practitioner_key_path("dr-urgence"))
    node.wallet.send(
        "identity.register",
        {"practitioner": "dr-urgence", "key": key.public_key, "roles": ["physician", "emergency"]},
    )
    ins = next(
        i["value"]
        for e in generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]["entry"]
        if e["resource"]["resourceType"] == "Patient"
        for i in e["resource"]["identifier"]
        if "1.2.250.1.213.1.4" in i["system"]
    )
    token = api.token("Practitioner/dr-urgence", "user/*.rs")["Authorization"][7:]
    page = browser.new_page()
    try:
        page.goto(f"{base}/clinician")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.fill("input[name=patient]", ins)
        page.click("text=Find")
        page.wait_for_selector("#break-glass")
        assert "no consent" in page.content() or "not yours to see" in page.content()
        shot(page, "refused")
        page.select_option("select[name=reason]", "unconscious")
        page.fill("input[name=note]", "brought in unconscious, cardiac history unknown")
        page.click("#break-glass")
        page.wait_for_load_state()
        assert page.locator("#break-glass").count() == 0
        assert "AP-HP Paris" in page.locator("main table").last.inner_text()
        shot(page, "after-break-glass")
    finally:
        page.close()
    opened = node.engine.query("emergency/list", {"org": "chu-lyon"})
    assert opened and "reason" not in opened[0]  # the reason stays at the hospital, hashed
    kept = NoteStore(node.config.home).get(bytes(opened[0]["reason_hash"]))
    assert kept is not None and kept["reason"] == "unconscious"
