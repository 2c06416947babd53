"""In a real browser: the patient sees, in "who accessed my data", another hospital's read."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from medledger.api.services import issuer_key
from medledger.api.tokens import mint
from medledger.cli._runtime import Sandbox
from medledger.interop.synth import generate
from medledger.node.ingest import Ingestor

from ..api.conftest import eventually

pytestmark = pytest.mark.browser


def test_the_patient_sees_the_read_made_by_another_hospital(
    consortium: list[Path], browser, shot
) -> None:
    sandbox = Sandbox(consortium[:2])
    lyon, paris = sandbox.runtimes
    root = sandbox.root
    try:
        bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=9)["chu-lyon"][0]
        result = Ingestor(lyon.node, lyon.vault).ingest_bytes(orjson.dumps(bundle), "p.json")
        (pid,) = result.pids
        now = int(time.time() * 1000)
        lyon.node.wallet.send(
            "consent.grant",
            {
                "pid": pid,
                "grantee": "org:aphp-paris",
                "categories": ["*"],
                "purpose": "treatment",
                "start_ms": now - 1000,
                "end_ms": 0,
                "evidence_hash": b"\x01" * 32,
                "channel": "portal",  # the patient asked on Lyon's portal
            },
        )
        # AP-HP Paris's sync agent fetches the records through Lyon's gateway: each read is
        # logged on the chain by Lyon, the custodian, with Paris as the reader.
        eventually(lambda: any(i.is_copy for i in paris.vault.records_of(pid)), timeout=30)
        eventually(
            lambda: any(
                e["actor_org"] == "aphp-paris"
                for e in root.engine.query("access/of_patient", {"pid": pid})
            ),
            timeout=30,
        )
        claims = {
            "iss": "urn:medledger:chu-lyon:issuer",
            "aud": "urn:medledger:chu-lyon:fhir",
            "sub": f"Patient/{pid}",
            "patient": pid,
            "scope": "patient/*.rs",
            "iat": int(time.time()),
            "exp": int(time.time()) + 600,
        }
        token = mint(issuer_key(lyon.node.config.home), claims)
        page = browser.new_page()
        try:
            page.goto(f"{lyon.api_url}/portal")
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_selector("#who")
            trail = page.locator("#trail-filter + table").inner_text()
            assert "AP-HP Paris" in trail and "under your consent #" in trail
            shot(page, "read-by-another-hospital")
        finally:
            page.close()
    finally:
        sandbox.close()
