"""The validation workers are started once and kept: a later batch reuses them, and one that
finds them dead (a worker killed between two batches) still ingests every file."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.ingest import Ingestor, _validation_pool
from medledger.vault import Vault


@pytest.fixture
def hospital(consortium: list[Path]) -> Iterator[tuple[Node, Vault, Ingestor]]:
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault, Ingestor(node, vault)


def _inputs(first: int, count: int) -> list[tuple[bytes, str]]:
    bundles = generate(first + count, ["chu-lyon", "aphp-paris"], seed=31)["chu-lyon"]
    return [(orjson.dumps(b), f"b{i}.json") for i, b in enumerate(bundles)][first:]


def test_a_second_batch_reuses_the_workers_and_survives_a_dead_one(
    hospital: tuple[Node, Vault, Ingestor],
) -> None:
    _, vault, ingestor = hospital
    first = list(ingestor.ingest_many(_inputs(0, 2), workers=2))
    pool = _validation_pool(2)
    assert _validation_pool(2) is pool  # kept for the next batch
    assert all(not r.rejections for r in first)

    victim = next(iter(pool._processes))  # a worker dies between two batches
    os.kill(victim, signal.SIGKILL)
    second = list(ingestor.ingest_many(_inputs(2, 3), workers=2))

    assert [r.source for r in second] == ["b2.json", "b3.json", "b4.json"]
    assert all(not r.rejections and r.accepted for r in second)
    assert vault.provisional() == []
    fresh = _validation_pool(2)  # the broken pool is replaced for the next batch
    assert fresh is not pool and not fresh._broken


def test_a_file_naming_stored_resources_is_resolved_at_home_without_validating_it_again(
    hospital: tuple[Node, Vault, Ingestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker cannot resolve `Patient/pat-a` (stored earlier by the same sender): the file
    is resolved again here, where it does, but the models it already passed are not run again."""
    from medledger.interop import validate
    from tests.support.documents import LAB, MRN_SYSTEM, ips, observation, send

    _, vault, ingestor = hospital
    (pid,) = send(ingestor, ips("a", [(MRN_SYSTEM, "MRN-a")], patient_id="pat-a"), "a.json").pids
    home = os.getpid()
    full_runs: list[str] = []
    original = validate.validate_resource

    def spy(resource, version, *, checked=False):
        if os.getpid() == home and not checked:
            full_runs.append(resource.get("id", "?"))
        return original(resource, version, checked=checked)

    monkeypatch.setattr(validate, "validate_resource", spy)
    monkeypatch.setattr("medledger.interop.fhir.validate_resource", spy)
    later = [
        (orjson.dumps(observation(f"hba1c-{n}", {"reference": "Patient/pat-a"}, 7 + n)), f"o{n}")
        for n in range(3)
    ]
    bad = observation("hba1c-bad", {"reference": "Patient/pat-a"})
    bad["status"] = 17  # a worker refuses it: validated again at home, and refused there

    results = list(ingestor.ingest_many([*later, (orjson.dumps(bad), "bad")], 2, sender=LAB))

    assert [r.accepted for r in results[:3]] == [1, 1, 1]
    assert all(r.pids == {pid} for r in results[:3])
    stored = orjson.loads(vault.get(results[0].rids[0]))
    (patient_rid,) = [i.rid for i in vault.records_of(pid) if i.resource_type == "Patient"]
    assert stored["subject"] == {"reference": f"Patient/{patient_rid}"}
    assert results[3].accepted == 0 and "status" in results[3].rejections[0].where
    assert set(full_runs) == {"hba1c-bad"}  # only the file no worker could validate
