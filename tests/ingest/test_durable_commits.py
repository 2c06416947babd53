"""Which of an ingestion's vault commits wait for the disk, and why the others need not.

A unit's batch (its records, held provisional) commits without syncing the SQLite log; the
claim (the signed tx, kept before it is sent) commits durably, and the log being written in
order, that sync makes the batch durable too: before the tx leaves the node, everything the
vault committed is on the disk. The confirmation is not synced either: lost to a power cut,
it leaves the unit provisional with its claim, which `reconcile` confirms from the chain (a
crash before the confirmation: `test_registration_recovery`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.vault import Vault


class _Trace:
    """The vault's statements (SQLite's trace) and the txs sent, in one sequence."""

    def __init__(self, node: Node, vault: Vault) -> None:
        self.events: list[str] = []
        conn = vault._backend.dialect.conn  # type: ignore[attr-defined]
        conn.set_trace_callback(self.events.append)
        submit = node.engine.submit

        def traced(tx: bytes) -> Any:
            self.events.append("SUBMIT")
            return submit(tx)

        node.engine.submit = traced  # type: ignore[method-assign]

    def commits(self) -> list[tuple[str, str]]:
        """("COMMIT", level) for each commit, ("SUBMIT", level of the last commit) for each tx."""
        level, last, out = "FULL", "", []
        for event in self.events:
            if event.startswith("PRAGMA synchronous="):
                level = event.removeprefix("PRAGMA synchronous=")
            elif event == "COMMIT":
                last = level
                out.append(("COMMIT", level))
            elif event == "SUBMIT":
                out.append(("SUBMIT", last))
        return out


@pytest.fixture
def hospital(consortium: list[Path]) -> Iterator[tuple[Node, Vault, _Trace]]:
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault, _Trace(node, vault)


def test_every_commit_is_on_the_disk_before_a_tx_leaves(
    hospital: tuple[Node, Vault, _Trace],
) -> None:
    node, vault, trace = hospital
    bundles = generate(3, ["chu-lyon", "aphp-paris"], seed=7)["chu-lyon"]
    inputs = [(orjson.dumps(b), f"b{i}.json") for i, b in enumerate(bundles)]

    results = list(Ingestor(node, vault).ingest_many(inputs, workers=1))

    assert all(r.accepted and not r.rejections for r in results)
    sequence = trace.commits()
    sent = [level for event, level in sequence if event == "SUBMIT"]
    assert sent == ["FULL"] * len(bundles)  # the claim's durable commit, just before each
    # Per unit: the batch (not synced), the claim (synced), the confirmation (not synced).
    levels = [level for event, level in sequence if event == "COMMIT"]
    assert levels == ["NORMAL", "FULL", "NORMAL"] * len(bundles)
    assert vault.provisional() == []


def test_a_file_with_nothing_to_register_is_synced_before_its_answer(
    hospital: tuple[Node, Vault, _Trace],
) -> None:
    """Only supporting resources (the hospital's own, not on the chain): no claim follows the
    batch, so the vault syncs it on its own."""
    node, vault, trace = hospital
    organization = {
        "resourceType": "Organization",
        "id": "org-1",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "690781810"}],
        "name": "Laboratoire Bioaccess",
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": organization}]}

    result = Ingestor(node, vault).ingest_bytes(orjson.dumps(bundle), "org.json")

    assert result.accepted == 1 and not result.rejections
    events = [event for event, _ in trace.commits()]
    assert "SUBMIT" not in events
    assert [level for _, level in trace.commits()] == ["NORMAL", "FULL"]
    # SQLite syncs only a commit that wrote: the sync writes a row of no meaning.
    assert any(e.startswith("UPDATE meta SET value") for e in trace.events)
