"""A crash or a timeout between the vault and the chain loses nothing and leaves nothing half-done.

Each crash is real: a child process ingests a bundle and dies (`os._exit`, no clean-up) at
one step of `registrations.register`; this process then opens the same node and vault, as a
restarted node would, and reconciles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.indexing import check_commitment
from medledger.node.ingest import Ingestor
from medledger.node.registrations import reconcile
from medledger.vault import RecordNotFound, Vault
from tests.support.ingest import _bundle, _crash_while_ingesting


@contextlib.contextmanager
def _restarted(home: Path) -> Iterator[tuple[Node, Vault]]:
    """The hospital's node and vault, opened afresh as a restarted node opens them."""
    with Node.open(home) as node, Vault.open(node.config.vault_config()) as vault:
        yield node, vault


def _registered(node: Node, vault: Vault) -> list[dict]:  # type: ignore[type-arg]
    return [
        e for pid in vault.patients() for e in node.engine.query("records/of_patient", {"pid": pid})
    ]


def test_a_crash_after_the_chain_commit_keeps_the_records(
    consortium: list[Path], tmp_path: Path
) -> None:
    """The case that lost records before: registered on the chain, vault not yet committed."""
    _crash_while_ingesting(consortium[0], _bundle(tmp_path), "after-commit")
    with _restarted(consortium[0]) as (node, vault):
        [unit] = vault.provisional()
        assert unit.claim is not None
        entries = _registered(node, vault)
        assert sorted(e["rid"] for e in entries) == sorted(rid for rid, _ in unit.records)

        report = reconcile(node.engine, vault, min_age_s=0)

        assert report.confirmed == [unit.unit] and report.withdrawn == []
        assert vault.provisional() == []
        for entry in entries:  # every registered record is there, and is what was committed
            data = vault.get(entry["rid"])
            salt = vault.salt(entry["pid"], entry["rid"], 1)
            assert check_commitment(salt, data, entry["commitment"])


def test_a_crash_before_signing_withdraws_the_records(
    consortium: list[Path], tmp_path: Path
) -> None:
    _crash_while_ingesting(consortium[0], _bundle(tmp_path), "before-claim")
    with _restarted(consortium[0]) as (node, vault):
        [unit] = vault.provisional()
        assert unit.claim is None
        height = node.engine.height()

        report = reconcile(node.engine, vault, min_age_s=0)

        assert report.withdrawn == [unit.unit]
        assert vault.provisional() == [] and vault.patients() == []
        for rid, _ in unit.records:
            with pytest.raises(RecordNotFound):
                vault.get(rid)
        assert node.engine.height() == height  # nothing went to the chain


def test_a_signed_tx_that_was_never_sent_is_sent_by_reconcile(
    consortium: list[Path], tmp_path: Path
) -> None:
    _crash_while_ingesting(consortium[0], _bundle(tmp_path), "before-submit")
    with _restarted(consortium[0]) as (node, vault):
        [unit] = vault.provisional()
        assert _registered(node, vault) == []

        report = reconcile(node.engine, vault, min_age_s=0)

        assert report.confirmed == [unit.unit]
        assert sorted(e["rid"] for e in _registered(node, vault)) == sorted(
            rid for rid, _ in unit.records
        )


def test_a_tx_whose_nonce_was_used_by_another_is_withdrawn(
    consortium: list[Path], tmp_path: Path
) -> None:
    _crash_while_ingesting(consortium[0], _bundle(tmp_path), "before-submit")
    with _restarted(consortium[0]) as (node, vault):
        [unit] = vault.provisional()
        # The restarted node signs something else first: its wallet takes the same nonce.
        node.wallet.send("identity.register", _practitioner())

        report = reconcile(node.engine, vault, min_age_s=0)

        assert report.withdrawn == [unit.unit]
        assert vault.patients() == [] and _registered(node, vault) == []


def test_reconcile_leaves_a_recent_unit_to_the_ingestion_that_may_still_own_it(
    consortium: list[Path], tmp_path: Path
) -> None:
    _crash_while_ingesting(consortium[0], _bundle(tmp_path), "before-submit")
    with _restarted(consortium[0]) as (node, vault):
        report = reconcile(node.engine, vault)  # the default lease: LEASE_S, 120 s
        assert (report.too_recent, report.settled) == (1, 0)
        assert len(vault.provisional()) == 1


def test_a_registration_that_times_out_is_reported_and_settled_later(
    consortium: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _restarted(consortium[0]) as (node, vault):
        send = node.wallet.send

        def impatient(kind: str, body: dict[str, Any], **kwargs: Any) -> Any:
            return send(kind, body, **(kwargs | {"timeout": 0.5}))

        def no_block_yet(tx_id: bytes, timeout: float = 30.0) -> object:
            raise TimeoutError("no block yet")

        monkeypatch.setattr(node.wallet, "send", impatient)
        monkeypatch.setattr(node.engine, "wait_for_commit", no_block_yet)
        result = Ingestor(node, vault).ingest_bytes(_bundle(tmp_path).read_bytes(), "p1.json")
        assert result.accepted == 0
        assert "registration pending" in result.rejections[0].reason
        assert "not committed in time" in result.rejections[0].reason
        [unit] = vault.provisional()
        assert unit.claim is not None

        monkeypatch.undo()  # the network recovers
        report = reconcile(node.engine, vault, min_age_s=0)

        assert report.confirmed == [unit.unit]
        assert len(_registered(node, vault)) == len(unit.records)


def _practitioner() -> dict[str, object]:
    from medledger.ledger.keys import SigningKey

    return {"practitioner": "dr-x", "key": SigningKey.generate().public_key, "roles": ["nurse"]}


def test_a_running_node_settles_leftovers_in_the_background(
    consortium: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from medledger.node import registrations

    _crash_while_ingesting(consortium[0], _bundle(tmp_path), "after-commit")
    monkeypatch.setattr(registrations, "LEASE_S", 0.0)
    with _restarted(consortium[0]) as (node, vault):
        reconciler = registrations.Reconciler(node.engine, vault, interval_s=0.05).start()
        try:
            deadline = time.monotonic() + 10
            while vault.provisional() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            reconciler.stop()
        assert vault.provisional() == []
        assert len(_registered(node, vault)) > 0
        for entry in _registered(node, vault):
            vault.get(entry["rid"])  # confirmed, not withdrawn


def test_a_refusal_at_check_tx_is_not_final_but_the_next_tx_of_the_hospital_settles_it(
    consortium: list[Path],
) -> None:
    """This replica may be behind, or a copy may wait in another validator's mempool."""
    from medledger.ledger.tx import sign_tx

    with _restarted(consortium[0]) as (node, vault):
        bundle = generate(2, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]
        patient = next(e["resource"] for e in bundle["entry"])
        pid = "a" * 64
        with vault.batch():
            vault.put(
                pid, "p-1", 1, orjson.dumps(patient), resource_type="Patient", custodian="chu-lyon"
            )
            unit = vault.hold([("p-1", 1)])
        nonce = int(node.engine.query("ledger/nonce", {"signer": node.wallet.public_key})) + 1
        refused = sign_tx(node.wallet.key, node.config.chain_id, "no.such.kind", {}, nonce)
        vault.claim(unit, refused)

        first = reconcile(node.engine, vault, min_age_s=0)
        assert first.undecided == [unit] and first.settled == 0
        assert vault.get("p-1")

        node.wallet.send("identity.register", _practitioner())  # takes the nonce
        second = reconcile(node.engine, vault, min_age_s=0)
        assert second.withdrawn == [unit]
        with pytest.raises(RecordNotFound):
            vault.get("p-1")


def test_an_unreachable_ledger_before_signing_keeps_nothing(
    consortium: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _restarted(consortium[0]) as (node, vault):
        ingestor = Ingestor(node, vault)  # asks the ledger for the members first
        query = node.engine.query

        def down_for_nonces(path: str, data: object = None) -> object:
            if path == "ledger/nonce":
                raise ConnectionError("connection refused")
            return query(path, data)

        monkeypatch.setattr(node.engine, "query", down_for_nonces)
        result = ingestor.ingest_bytes(_bundle(tmp_path).read_bytes(), "p1.json")
        assert result.accepted == 0
        assert "not registered: the ledger could not be reached" in result.rejections[0].reason
        assert vault.provisional() == [] and vault.patients() == []


def test_an_unreachable_ledger_after_signing_keeps_the_unit(
    consortium: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _restarted(consortium[0]) as (node, vault):
        submit = node.engine.submit

        def lost(tx: bytes) -> object:
            raise ConnectionError("connection reset while broadcasting")

        monkeypatch.setattr(node.engine, "submit", lost)
        result = Ingestor(node, vault).ingest_bytes(_bundle(tmp_path).read_bytes(), "p1.json")
        assert "registration pending" in result.rejections[0].reason
        [unit] = vault.provisional()
        assert unit.claim is not None

        monkeypatch.setattr(node.engine, "submit", submit)
        assert reconcile(node.engine, vault, min_age_s=0).confirmed == [unit.unit]
