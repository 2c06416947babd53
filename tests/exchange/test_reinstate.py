"""The way back after a custodian's shredding: a holder's DPO accepts its copies again.

B holds copies of A's and C's records of a patient; A shreds its records, B's sync agent
erases the copies of A's records and its vault refuses new ones. `medledger vault reinstate`
(`shredding.reinstate_copies`) lifts that refusal for A, when the chain shows A registered
records of the patient since, or when B's DPO forces it with a reason.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.interop.synth import bundle_label, generate
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.node.shredding import reinstate_copies
from medledger.vault import PatientErased, Vault

from .conftest import (
    EVIDENCE,
    A,
    B,
    C,
    Sandbox,
    _copies_from_a_and_c,
    _erase_jobs,
    close_sandbox,
    open_sandbox,
    wait_for,
)

LATE_COPY = orjson.dumps({"resourceType": "Observation", "status": "final"})


def _a_shreds(sandbox: Sandbox) -> tuple[str, list[str], list[str]]:
    """A shreds its records of a patient B holds copies of (A's and C's); B's agent erases
    the copies of A's records."""
    pid, from_a, from_c = _copies_from_a_and_c(sandbox)
    receipt = sandbox.h[A].vault.erase(pid)
    sandbox.h[A].node.wallet.send(
        "records.shredded",
        {"pid": pid, "digest": receipt.digest, "records": receipt.records_shredded, "copies": 0},
    )
    wait_for(lambda: _erase_jobs(sandbox, B), what="B's erase job")
    assert sandbox.h[B].vault.copies_refused(pid, A) is not None
    return pid, from_a, from_c


def _put_late_copy(vault: Vault, pid: str, rid: str) -> None:
    vault.put(pid, rid, 1, LATE_COPY, resource_type="Observation", custodian=A, is_copy=True)


def _a_registers_the_patient_again(node: Node, vault: Vault, pid: str) -> None:
    """The patient comes back to A, which registers a new Patient record for them."""
    bundle = generate(6, [A, B, C], seed=3)[A]
    at_c = {bundle_label(b) for b in generate(6, [A, B, C], seed=3)[C]}
    entry = copy.deepcopy(
        next(
            e
            for b in bundle
            if bundle_label(b) in at_c
            for e in b["entry"]
            if e["resource"]["resourceType"] == "Patient"
        )
    )
    entry["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"  # a new record, not the shredded one
    vault.reinstate(pid)  # A's own vault takes new data for the patient again
    result = Ingestor(node, vault).ingest_bytes(
        orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]}),
        "back.json",
    )
    assert result.rejections == [] and result.pids == {pid}


def test_the_dpo_reinstates_a_custodians_copies_once_it_registered_new_records(
    sandbox: Sandbox,
) -> None:
    pid, from_a, from_c = _a_shreds(sandbox)
    b = sandbox.h[B]
    refused = reinstate_copies(b.node, b.vault, pid, A)
    assert refused.status == "refused"
    assert "no record of chu-lyon's for this patient registered since its shredding" in (
        refused.reason
    )
    with pytest.raises(PatientErased, match="reinstate"):
        _put_late_copy(b.vault, pid, "late-1")

    _a_registers_the_patient_again(sandbox.h[A].node, sandbox.h[A].vault, pid)
    done = reinstate_copies(b.node, b.vault, pid, A)
    assert done.status == "reinstated"
    assert done.reason.startswith("1 record registered by chu-lyon since its shredding of 20")
    assert b.vault.copies_refused(pid, A) is None
    _put_late_copy(b.vault, pid, "late-1")  # new copies are accepted again
    for rid in from_a:
        with pytest.raises(PatientErased):  # the erased ones stay unreadable
            b.vault.get(rid)
    assert reinstate_copies(b.node, b.vault, pid, A).status == "nothing-to-do"
    (logged,) = (b.node.config.home / "reinstatements.jsonl").read_bytes().splitlines()
    assert orjson.loads(logged)["forced"] is False


def test_no_copy_comes_back_while_the_patients_erasure_request_stands(sandbox: Sandbox) -> None:
    pid, _, _ = _a_shreds(sandbox)
    b = sandbox.h[B]
    assert b.exchange is not None
    b.exchange.stop()  # B's DPO acts before its agent carries the request out
    b.exchange = None
    asked = {"pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}  # on C's portal
    sandbox.h[C].node.wallet.send("erasure.request", asked)
    sandbox.erasure_takes_effect(pid)
    outcome = reinstate_copies(b.node, b.vault, pid, A, "the patient came back to chu-lyon")
    assert outcome.status == "refused"
    assert outcome.reason == "erasure request 1 of this patient stands: no copy comes back"
    assert b.vault.copies_refused(pid, A) is not None


def _reinstate(home: Path, pid: str, *extra: str) -> Any:
    args = ["vault", "reinstate", "-H", str(home), "--patient", pid, "--custodian", A, *extra]
    return CliRunner().invoke(app, args)


def test_the_reinstate_command_refuses_without_news_and_records_a_forced_reason(
    net_dir: tuple[Path, list[Path]],
) -> None:
    sandbox = open_sandbox(*net_dir)
    try:
        for org in (A, B, C):
            sandbox.start(org)
        pid, _, _ = _a_shreds(sandbox)
        home = sandbox.h[B].node.config.home
    finally:
        close_sandbox(sandbox)  # a one-shot command needs the solo ledger to itself

    out = _reinstate(home, pid)
    assert out.exit_code == 1
    assert "refused: the chain shows no record of chu-lyon's" in out.output
    assert "--force and --reason" in out.output
    out = _reinstate(home, pid, "--force")
    assert out.exit_code == 1 and "--force and --reason go together" in out.output
    out = _reinstate(home, pid, "--force", "--reason", " ")
    assert out.exit_code == 1 and "--reason: say in 1 to 500 characters why" in out.output

    reason = "chu-lyon shredded by mistake (ticket DPO-42); the patient is treated there"
    out = _reinstate(home, pid, "--force", "--reason", reason)
    assert out.exit_code == 0, out.output
    assert "are accepted here again (forced by the DPO: chu-lyon shredded" in out.output
    (logged,) = (home / "reinstatements.jsonl").read_bytes().splitlines()
    entry = orjson.loads(logged)
    assert (entry["pid"], entry["custodian"], entry["forced"]) == (pid, A, True)
    assert entry["basis"] == f"forced by the DPO: {reason}"
    with Node.open(home) as node, Vault.open(node.config.vault_config()) as vault:
        assert vault.copies_refused(pid, A) is None
        _put_late_copy(vault, pid, "late-1")
    out = _reinstate(home, pid)
    assert out.exit_code == 0 and "nothing to reinstate" in out.output
