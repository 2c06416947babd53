"""A batch registers each file on the chain in a thread of its own while it stores the next
(by default when the blocks are made by another process, CometBFT; forced here on solo).

What must not change: results in input order, every record registered, and a file that builds
on an earlier one (its patient, a resource it updates) waits for that one's registration; when
it is refused, its records are withdrawn and the later file is planned without them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.node import Node, registrations
from medledger.node.ingest import Ingestor
from medledger.node.wallet import TxRejected
from medledger.vault import Vault

SENDER = "https://his.example.org/fhir"


@pytest.fixture
def hospital(consortium: list[Path]) -> Iterator[tuple[Node, Vault, Ingestor]]:
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        ingestor = Ingestor(node, vault)
        assert not ingestor.register_in_background  # the solo engine: off by default
        ingestor.register_in_background = True  # as with CometBFT
        yield node, vault, ingestor


def _patient() -> bytes:
    """A Patient as a hospital's system sends it alone: its own id, its MRN."""
    return orjson.dumps(
        {
            "resourceType": "Patient",
            "id": "pat-7731",
            "meta": {"source": SENDER},
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.7", "value": "MRN-7731"}],
            "name": [{"family": "Lefebvre", "given": ["Anne"]}],
            "birthDate": "1961-04-02",
        }
    )


def _observation() -> bytes:
    """A later message about the same patient, naming them by the sender's id."""
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": "obs-1",
            "meta": {"source": SENDER},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"{SENDER}/Patient/pat-7731"},
            "effectiveDateTime": "2026-11-02T08:15:00+01:00",
            "valueQuantity": {"value": 72, "unit": "/min"},
        }
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_batch_comes_back_in_order_with_every_record_registered(
    hospital: tuple[Node, Vault, Ingestor], workers: int
) -> None:
    node, vault, ingestor = hospital
    bundles = generate(4, ["chu-lyon", "aphp-paris"], seed=21)["chu-lyon"]
    inputs = [(orjson.dumps(b), f"b{i}.json") for i, b in enumerate(bundles)]

    results = list(ingestor.ingest_many(inputs, workers=workers))

    assert [r.source for r in results] == [name for _, name in inputs]
    assert all(not r.rejections for r in results)
    assert vault.provisional() == []  # every unit's registration ended, confirmed
    for result in results:
        [pid] = result.pids
        registered = {e["rid"] for e in node.engine.query("records/of_patient", {"pid": pid})}
        assert registered == set(result.rids)


def test_a_file_waits_for_the_registration_of_the_patient_it_names(
    hospital: tuple[Node, Vault, Ingestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Patient's registration is refused while the Observation is being stored: the
    Observation must not be attached to the withdrawn Patient."""
    _, vault, ingestor = hospital
    register = registrations.register
    hold = vault.hold
    stored_next = threading.Event()  # a later unit was stored: too late to withdraw safely
    refused: list[str] = []

    class Refusing:
        def send_message(self, msg: Any, **kwargs: Any) -> Any:
            raise TxRejected("records.register", 7, "refused for the test", "execution")

    def refused_late(wallet: Any, vault: Vault, unit: str, msg: Any, **kw: Any) -> Any:
        if refused:
            return register(wallet, vault, unit, msg, **kw)
        refused.append(unit)
        # Refused once the next file is stored; a correct batch does not store it before
        # this registration ended, so the wait ends on its timeout.
        stored_next.wait(timeout=2)
        return register(Refusing(), vault, unit, msg, **kw)  # type: ignore[arg-type]

    def holding(records: list[tuple[str, int]]) -> str:
        unit: str = hold(records)
        if refused:
            stored_next.set()
        return unit

    monkeypatch.setattr(registrations, "register", refused_late)
    monkeypatch.setattr(vault, "hold", holding)
    inputs = [(_patient(), "patient.json"), (_observation(), "observation.json")]

    first, second = ingestor.ingest_many(inputs, workers=1, sender=SENDER)

    assert "refused by the ledger" in first.rejections[0].reason
    assert first.accepted == 0 and first.rids == []
    assert second.accepted == 0
    assert "it names the patient" in second.rejections[0].reason
    assert vault.provisional() == []
    assert all(vault.records_of(pid) == [] for pid in vault.patients())  # nothing half-stored
