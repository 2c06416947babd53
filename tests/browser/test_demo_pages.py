"""The pages as a person opening the served demo meets them: the demo's story is played (solo
engine, the demo's own consortium), then a real Chromium signs in as the featured patient, as
clinicians of two hospitals and as a visitor of the explorer. Every page is checked with
axe-core (no serious or critical WCAG violation); screenshots are kept as test artefacts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medledger.cli._runtime import Sandbox
from medledger.cli._scenario import Hospital, Story, play
from medledger.cli.demo import PORTAL_SCOPES, demo_consortium, demo_token

pytestmark = pytest.mark.browser


@dataclass
class DemoEnd:
    story: Story
    urls: dict[str, str]  # org -> base URL
    homes: dict[str, Path]

    def token(self, org: str, subject: str, scope: str, patient: str | None = None) -> str:
        return demo_token(self.homes[org], org, subject, scope, patient)

    def patient_token(self) -> str:
        pid = self.story.patient_pid
        return self.token("chu-lyon", f"Patient/{pid}", PORTAL_SCOPES, pid)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnd]:
    homes = demo_consortium(tmp_path_factory.mktemp("demo") / "demo-net", "solo")
    with Sandbox(homes) as sandbox:
        hospitals = [Hospital(r.node, r.vault) for r in sandbox.runtimes]
        story = play(hospitals, lambda _: None, patients=6)
        yield DemoEnd(
            story,
            {r.org: r.api_url for r in sandbox.runtimes},
            {r.org: r.node.config.home for r in sandbox.runtimes},
        )


def accessible(page: Any) -> None:
    """axe-core on the page as it stands: no serious or critical violation."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{page.url}: " + "; ".join(bad)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; a missing page (a favicon too) or a server error it receives is a failure
    (a refusal, 400 to 409, is an answer)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    failed: list[str] = []
    tab.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        yield tab
        assert not [f for f in failed if not f.startswith(("400", "401", "403", "409"))], failed
    finally:
        context.close()


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url)
    page.fill("[name=token]", token)
    page.click("button[type=submit]")


def test_the_patient_reads_their_records_across_hospitals_by_name(
    demo: DemoEnd, page: Any, shot: Any
) -> None:
    sign_in(page, f"{demo.urls['chu-lyon']}/portal", demo.patient_token())
    page.wait_for_selector("#who")
    signed_in = page.inner_text("#signed-in")
    assert demo.story.patient_pid[:16] not in signed_in  # a name, not a pseudonym
    assert "years" in signed_in
    body = page.inner_text("main")
    assert "Your records are held at:" in body and "CHU de Lyon" in body and "AP-HP Paris" in body
    assert " kg" in body or " %" in body  # results with their units
    # Who accessed my data: in words, grouped, and filtered on demand.
    assert "for your treatment" in body and "under your consent #1" in body
    assert "org:" not in body and "practitioner:" not in body  # no raw actor ids
    # What a study is, and the study of the demo (the page once crashed on it).
    assert "A study is research approved by an ethics committee" in body
    assert "lille-2026-014" in body
    shot(page, "portal")
    accessible(page)

    page.select_option("#f-who", "chu-lille")
    page.click("#trail-filter button")
    page.wait_for_selector("#who")
    trail = page.locator("#trail-filter + table").inner_text()
    assert "CHU de Lille" in trail and "dr-dubois" not in trail
    accessible(page)  # the filtered page too
    with page.expect_download() as download:  # each line's proof, to check offline
        page.locator("a[href^='/portal/proof/']").first.click()
    assert download.value.suggested_filename.startswith("proof-")


def test_the_patient_grants_and_revokes_a_consent_through_the_form(
    demo: DemoEnd, page: Any, shot: Any
) -> None:
    sign_in(page, f"{demo.urls['chu-lyon']}/portal", demo.patient_token())
    page.wait_for_selector("#grant-form")
    page.select_option("#g-grantee", "org:chu-bordeaux")
    page.check("#grant-form input[value=labs]")
    page.check("#grant-form input[value=imaging]")
    page.click("#grant-form button")
    page.wait_for_selector("#consents")
    consents = page.locator("#consents + table").inner_text()
    row = next(line for line in consents.splitlines() if "CHU de Bordeaux" in line)
    assert "laboratory results, imaging" in row or "imaging, laboratory results" in row
    assert "active" in row
    shot(page, "consent-granted")
    number = row.split()[0]
    page.click(f"button[aria-label='Revoke consent {number}']")
    page.wait_for_selector("#consents")
    consents = page.locator("#consents + table").inner_text()
    row = next(line for line in consents.splitlines() if line.startswith(f"{number}\t"))
    assert "revoked" in row
    accessible(page)


def test_a_clinician_in_paris_sees_the_patient_across_hospitals(
    demo: DemoEnd, page: Any, shot: Any
) -> None:
    token = demo.token("aphp-paris", "Practitioner/dr-dubois", "user/*.cruds")
    sign_in(page, f"{demo.urls['aphp-paris']}/clinician", token)
    page.fill("#find-patient", demo.story.patient_ins)
    page.click("form[action='/clinician/find'] button")
    page.wait_for_selector("#patient-header")
    header = page.inner_text("#patient-header")
    assert "years" in header and demo.story.patient_ins in header and "INS" in header
    title = page.inner_text("h1")
    assert not title.startswith("Patient ")  # their name
    table = page.locator("main table").last.inner_text()
    assert "CHU de Lyon" in table and "AP-HP Paris" in table  # one timeline, two hospitals
    assert "not yours to see" not in page.inner_text("main")
    assert page.locator("figure.trend svg polyline").count() >= 1  # repeated labs, drawn
    shot(page, "clinician-paris")
    accessible(page)


def test_the_explorer_shows_the_engine_and_verifies_after_sign_in(
    demo: DemoEnd, page: Any, shot: Any
) -> None:
    base = demo.urls["chu-lyon"]
    page.goto(f"{base}/explorer")
    validators = page.locator("main table").first.inner_text()
    assert "orders blocks" in validators and "the solo engine" in validators
    assert "\t0\t" not in validators  # no "voting power 0" for every hospital
    accessible(page)
    page.click("text=Verify the chain")  # a visitor: asked to sign in first
    token = demo.token("chu-lyon", "Practitioner/dr-martin", "user/*.rs")
    page.fill("[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/explorer")
    page.click("text=Verify the chain")
    page.wait_for_selector("text=ok: replayed")
    shot(page, "explorer-verified")
    accessible(page)  # the verification's answer too
    page.goto(f"{base}/explorer/block/2")
    accessible(page)


def test_the_home_and_sign_in_pages_are_accessible(demo: DemoEnd, page: Any) -> None:
    base = demo.urls["aphp-paris"]
    for path in ("/", "/portal", "/clinician"):
        page.goto(f"{base}{path}")
        accessible(page)


def test_a_clinicians_empty_view_and_a_refusal_page_are_accessible(
    demo: DemoEnd, page: Any
) -> None:
    token = demo.token("aphp-paris", "Practitioner/dr-dubois", "user/*.cruds")
    sign_in(page, f"{demo.urls['aphp-paris']}/clinician", token)
    page.wait_for_selector("#find-patient")
    accessible(page)  # signed in, no patient yet
    page.fill("#find-patient", "not an INS")
    page.click("form[action='/clinician/find'] button")
    page.wait_for_selector("main p.bad")  # the refusal names what is wrong
    accessible(page)


def test_the_portal_speaks_the_browsers_language_and_switches(
    demo: DemoEnd, browser: Any, shot: Any
) -> None:
    context = browser.new_context(locale="fr-FR", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, f"{demo.urls['chu-lyon']}/portal", demo.patient_token())
        page.wait_for_selector("#who")
        assert page.inner_text("h1") == "Mon dossier de santé"
        assert page.get_attribute("html", "lang") == "fr"
        body = page.inner_text("main")
        assert "Qui a consulté mes données" in body and "pour vos soins" in body
        assert "selon votre consentement n°1" in body
        shot(page, "portail-fr")
        accessible(page)
        page.click("header nav.lang a[lang=en]")
        page.wait_for_selector("#who")
        assert page.inner_text("h1") == "My health records"
        assert page.get_attribute("html", "lang") == "en"
    finally:
        context.close()


def test_the_researcher_sees_the_studys_federated_query_its_figures_and_a_suppressed_one(
    demo: DemoEnd, page: Any, shot: Any
) -> None:
    token = demo.token("chu-lille", "Practitioner/dr-chercheuse", "user/*.rs")
    sign_in(page, f"{demo.urls['chu-lille']}/research", token)
    page.wait_for_selector("text=Heart failure outcomes")  # the title Lille keeps
    assert "lille-2026-014/q0001" in page.inner_text("main")
    accessible(page)
    page.click("text=lille-2026-014/q0001")
    page.wait_for_selector("text=Contributors")
    main = page.inner_text("main")
    assert "done" in main and "enrolled patients" in main
    # The study's 30-odd patients publish counts, means and the women's histogram; the men's
    # histogram has a bin under k: suppressed in the tables, its two bars drawn hatched.
    female = page.locator("tr:has(td:text-is('sex=female'))").first.inner_text()
    assert "suppressed" not in female and re.search(r"\b\d{2}\b", female), female
    assert page.locator("td:has-text('suppressed')").count() >= 2
    assert page.locator("svg[role=img]").count() == 2  # one histogram per sex
    assert page.locator("rect.suppressed").count() == 2  # drawn hatched, not as 0
    shot(page, "research-query")
    accessible(page)
