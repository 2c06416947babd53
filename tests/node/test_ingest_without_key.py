"""A joining hospital's node runs (block sync, gateway, API) before `join` has fetched the
consortium's pseudonym key from a member, which waits for the node to catch up
(provisioning/join.py): only ingestion needs the key, and it says which file is missing."""

from __future__ import annotations

import json
from pathlib import Path

from medledger.api.services import HospitalServices
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.config import load_config
from medledger.vault import Vault


def test_the_services_start_without_the_pseudonym_key_and_ingestion_names_it(
    consortium: list[Path],
) -> None:
    home = consortium[1]
    org = load_config(home).org
    bundle = generate(1, [org], seed=5)[org][0]
    (home / "keys" / "pseudonym.key").unlink()
    with Node.open(home) as node, Vault.open(node.config.vault_config()) as vault:
        services = HospitalServices(node, vault)  # the gateway and API can start
        result = services.ingestor.ingest_bytes(json.dumps(bundle).encode(), "patient.json")
    (refusal,) = result.rejections
    assert "pseudonym.key" in refusal.reason and result.accepted == 0 and not result.rids
