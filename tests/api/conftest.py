"""An API over the first hospital of a sandbox, with a patient's records already ingested."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from medledger.api.services import HospitalServices, issuer_key
from medledger.api.tokens import mint
from medledger.interop.synth import generate
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.vault import Vault
from medledger.web.site import create_app


@dataclass
class Api:
    client: TestClient
    services: HospitalServices
    patient_rid: str
    pid: str
    rids: list[str]

    def token(self, sub: str, scope: str, patient: str | None = None) -> dict[str, str]:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.services.issuer_id,
            "aud": self.services.audience,
            "sub": sub,
            "scope": scope,
            "iat": now,
            "exp": now + 600,
        }
        if patient:
            claims["patient"] = patient
        tok = mint(issuer_key(self.services.node.config.home), claims)
        return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
def api(consortium: list[Path]) -> Iterator[Api]:
    with (
        Node.open(consortium[0], serve=True, interval=0.02) as node,
        Vault.open(node.config.vault_config()) as vault,
    ):
        svc = HospitalServices(node, vault)
        node.wallet.send(
            "identity.register",
            {
                "practitioner": "dr-martin",
                "key": _save_key(node, "dr-martin"),
                "roles": ["physician"],
            },
        )
        bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]
        result = svc.ingestor.ingest_bytes(orjson.dumps(bundle), "p.json")
        assert not result.rejections
        patient_rid = next(r for r in result.rids if vault.info(r).resource_type == "Patient")
        (pid,) = result.pids
        with TestClient(create_app(svc)) as client:
            yield Api(client, svc, patient_rid, pid, result.rids)


def csrf(html: str) -> str:
    """The CSRF token a page's forms carry (every POST of a signed-in session needs it)."""
    import re

    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll until check() holds: for what the node commits in the background (access logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _save_key(node: Node, practitioner: str) -> bytes:
    key = SigningKey.generate()
    key.save(node.config.practitioner_key_path(practitioner))
    return key.public_key
