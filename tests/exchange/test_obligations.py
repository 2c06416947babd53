"""What the sync agents do on their own: referral deliveries, and erasure reaching copies."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest

from medledger.exchange.client import ExchangeError
from medledger.interop.synth import bundle_label, generate
from medledger.node.replicas import ensure_backup_key, replica_peers
from medledger.node.shredding import carry_out
from medledger.vault import PatientErased
from medledger.vault.replication import ReplicaKeys, item_name

from .conftest import (
    EVIDENCE,
    A,
    B,
    C,
    Sandbox,
    _copies_from_a_and_c,
    _erase_jobs,
    bundles,
    wait_for,
)

DAY_MS = 24 * 3600 * 1000


def _referral(sandbox: Sandbox, rid: int) -> dict:  # type: ignore[type-arg]
    found: dict = sandbox.root.engine.query("referral/status", {"id": rid})  # type: ignore[type-arg]
    return found


def test_a_referral_is_delivered_and_confirmed_end_to_end(sandbox: Sandbox) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    a, b = sandbox.h[A].node, sandbox.h[B].node
    categories = ["conditions", "labs"]
    a.wallet.send(
        "referral.create",
        {
            "pid": pid,
            "to": B,
            "date_ms": int(time.time() * 1000) + DAY_MS,
            "categories": categories,
            "procedure_hash": hashlib.sha256(b"referral letter").digest(),
            "evidence_hash": EVIDENCE,
        },
    )
    b.wallet.send("referral.admit", {"id": 1})  # B records the admission: the obligation starts
    wait_for(lambda: _referral(sandbox, 1)["status"] == "confirmed", what="referral confirmed")

    ref = _referral(sandbox, 1)
    delivered = ref["obligation"]["delivered"]
    assert ref["obligation"]["status"] == "fulfilled" and not delivered["late"]
    # A pushed exactly the records of the named categories, and B holds them as copies.
    index = {e["rid"]: e["meta"] for e in sandbox.x(B).client.index(A, pid)}
    assert delivered["rids"] and all(index[r]["category"] in categories for r in delivered["rids"])
    expected = {r for r, meta in index.items() if meta["category"] in categories}
    assert set(delivered["rids"]) == expected
    copies = {i.rid for i in sandbox.h[B].vault.records_of(pid) if i.is_copy}
    assert expected <= copies
    # The push is in the audit trail (A's own export on the referral's basis: B signed no
    # request, so the entry cannot name B as actor; `to` names it, the referral's receiver
    # as access v4 checks) and in B's evidence.
    exports = [e for e in sandbox.trail(pid) if e["action"] == "export"]
    assert [(e["actor_org"], e["basis"], e["outcome"], e["to"]) for e in exports] == [
        (A, "referral:1", "granted", B)
    ]
    received = [r for r in sandbox.x(B).evidence.rows() if str(r["target"]).endswith("/deliveries")]
    assert received and received[0]["outcome"] == "accepted" and received[0]["body"] is None


def test_only_the_referring_hospital_may_deliver(sandbox: Sandbox) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    sandbox.h[A].node.wallet.send(
        "referral.create",
        {
            "pid": pid,
            "to": B,
            "date_ms": int(time.time() * 1000) + DAY_MS,
            "categories": ["labs"],
            "procedure_hash": hashlib.sha256(b"letter").digest(),
            "evidence_hash": EVIDENCE,
        },
    )
    with pytest.raises(ExchangeError) as refused:
        sandbox.x(C).client.deliver(B, {"referral": 1, "pid": pid, "records": []})
    assert refused.value.status == 403


def _prefetched(sandbox: Sandbox) -> tuple[str, int]:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B)
    vault_b = sandbox.h[B].vault
    wait_for(lambda: len(vault_b.records_of(pid)) == len(rids), what="prefetch")
    return pid, len(rids)


def test_an_erasure_request_reaches_the_copies_and_spares_retained_records(
    sandbox: Sandbox,
) -> None:
    pid, n = _prefetched(sandbox)
    peers = replica_peers(sandbox.root.engine, B)
    keys = ReplicaKeys(ensure_backup_key(sandbox.h[B].node.config.home), B)
    wrapped = keys.item_id(item_name("key", pid))

    def held_anywhere() -> bool:
        return any(
            wrapped in {i.id for i in (*custody.listing(B), *custody.trash_listing(B))}
            for custody in (sandbox.x(peer).custody for peer in peers)
        )

    wait_for(held_anywhere, what="B's wrapped key at its replica peers")
    asked = {"pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}  # on A's portal
    sandbox.h[A].node.wallet.send("erasure.request", asked)
    sandbox.erasure_takes_effect(pid)
    vault_b = sandbox.h[B].vault
    wait_for(lambda: vault_b.is_erased(pid), what="copies erased at B")

    def status() -> dict:  # type: ignore[type-arg]
        found: dict = sandbox.root.engine.query("erasure/status", {"pid": pid})  # type: ignore[type-arg]
        return found

    wait_for(
        lambda: {o["holder"]: o["status"] for o in status()["obligations"]}.get(B) == "attested",
        what="B's attestation",
    )
    obligations = {o["holder"]: o for o in status()["obligations"]}
    assert obligations[A]["status"] == "refused"
    assert obligations[A]["reason"].startswith("retention until")
    shredded = sandbox.root.engine.query("records/shredded", {"holder": B, "pid": pid})
    assert shredded["copies"] == n and shredded["records"] == 0
    # B's replica peers dropped the patient's wrapped key too, and the attestation says so;
    # with the statement committed they purged it, their trash included.
    assert sorted(shredded["replicas_dropped"]) == sorted(peers)
    wait_for(lambda: not held_anywhere(), what="B's wrapped key purged at its replica peers")
    assert sandbox.x(B).store.keys(A, pid) is None  # the custodian's metadata key is gone too
    assert len(sandbox.h[A].vault.records_of(pid)) == n  # care records kept at the custodian


def test_a_custodian_shredding_its_records_erases_the_copies(sandbox: Sandbox) -> None:
    """Only that custodian's copies go: on main B erased the whole patient, C's copies too."""
    pid, from_a, from_c = _copies_from_a_and_c(sandbox)
    receipt = sandbox.h[A].vault.erase(pid)
    sandbox.h[A].node.wallet.send(
        "records.shredded",
        {"pid": pid, "digest": receipt.digest, "records": receipt.records_shredded, "copies": 0},
    )
    wait_for(lambda: _erase_jobs(sandbox, B), what="B's erase job")
    assert _erase_jobs(sandbox, B) == [f"{len(from_a)} copies of {A}'s records erased"]
    vault_b = sandbox.h[B].vault
    assert not vault_b.is_erased(pid)
    for rid in from_a:
        with pytest.raises(PatientErased):
            vault_b.get(rid)
    # C's records still exist at C, and B may lawfully keep their copies (and C's key).
    assert sorted(i.rid for i in vault_b.records_of(pid)) == sorted(from_c)
    assert all(orjson.loads(vault_b.get(rid)) for rid in from_c)
    assert sandbox.x(B).store.keys(A, pid) is None
    assert sandbox.x(B).store.keys(C, pid) is not None
    # B erased no patient of its own: no records.shredded would tell the network otherwise.
    assert sandbox.root.engine.query("records/shredded", {"holder": B, "pid": pid}) is None
    # And nothing of A's comes back: A's gateway refuses, B's vault refuses a late copy.
    with pytest.raises(ExchangeError):
        sandbox.x(B).client.metadata_key(A, pid)
    with pytest.raises(PatientErased, match="reinstate"):
        vault_b.put(
            pid, "late-copy", 1, b"{}", resource_type="Observation", custodian=A, is_copy=True
        )


def _followed_at_a_and_b(sandbox: Sandbox) -> tuple[str, list[str], list[str]]:
    """A patient with care records at A and at B, and B holding copies of A's records."""
    by_org = generate(6, [A, B, C], seed=3)
    at_b = {bundle_label(b): b for b in by_org[B]}
    bundle_a = next(b for b in by_org[A] if bundle_label(b) in at_b)
    pid, copied = sandbox.ingest(A, bundle_a)
    pid_b, own = sandbox.ingest(B, at_b[bundle_label(bundle_a)])
    assert pid_b == pid
    sandbox.consent(A, pid, B)
    vault_b = sandbox.h[B].vault
    wait_for(
        lambda: len([i for i in vault_b.records_of(pid) if i.is_copy]) == len(copied),
        what="prefetch",
    )
    return pid, copied, own


def test_a_holder_with_its_own_records_erases_the_copies_apart_and_attests(
    sandbox: Sandbox,
) -> None:
    """Issue 11 item 3: on main B's job ended "the vault cannot erase the copies apart"."""
    pid, copied, own = _followed_at_a_and_b(sandbox)
    sandbox.h[A].node.wallet.send(
        "erasure.request", {"pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}
    )
    sandbox.erasure_takes_effect(pid)

    def obligation_of_b() -> dict:  # type: ignore[type-arg]
        found: dict = sandbox.root.engine.query("erasure/status", {"pid": pid})  # type: ignore[type-arg]
        return next(o for o in found["obligations"] if o["holder"] == B)

    wait_for(lambda: obligation_of_b()["status"] == "attested", what="B's attestation")
    ob = obligation_of_b()
    # B's care records stay under legal retention; its copies of A's records are attested.
    assert ob["custody"]["status"] == "refused" and ob["copies"]["status"] == "attested"
    assert ob["attestation"]["records"] == len(copied)
    assert sorted(ob["attestation"]["replicas_dropped"]) == sorted(
        replica_peers(sandbox.root.engine, B)
    )
    # The digest attested is the vault's receipt, which a retry would reproduce exactly.
    assert ob["attestation"]["digest"] == sandbox.h[B].vault.erase_copies(pid).digest
    # No records.shredded for B: that would tell every node that B's own records are gone.
    assert sandbox.root.engine.query("records/shredded", {"holder": B, "pid": pid}) is None
    assert not any(
        e["shredded"]
        for e in sandbox.root.engine.query("records/of_patient", {"pid": pid, "custodian": B})
    )
    vault_b = sandbox.h[B].vault
    assert sorted(i.rid for i in vault_b.records_of(pid)) == sorted(own)
    for rid in copied:
        with pytest.raises(PatientErased):
            vault_b.get(rid)
    assert all(orjson.loads(vault_b.get(rid)) for rid in own)  # still readable at B
    assert sandbox.x(B).store.keys(A, pid) is None  # A's metadata key is gone too
    outcomes = [j["detail"] for j in sandbox.x(B).store.history() if j["kind"] == "erase"]
    assert any("copies erased apart from the own care records, attested" in d for d in outcomes)


def test_a_custodian_shredding_reaches_copies_held_beside_own_records(sandbox: Sandbox) -> None:
    pid, copied, own = _followed_at_a_and_b(sandbox)
    receipt = sandbox.h[A].vault.erase(pid)
    sandbox.h[A].node.wallet.send(
        "records.shredded",
        {"pid": pid, "digest": receipt.digest, "records": receipt.records_shredded, "copies": 0},
    )
    vault_b = sandbox.h[B].vault
    wait_for(
        lambda: not [i for i in vault_b.records_of(pid) if i.is_copy], what="A's copies erased at B"
    )
    assert sorted(i.rid for i in vault_b.records_of(pid)) == sorted(own)
    assert not vault_b.is_erased(pid)
    assert sandbox.x(B).store.keys(A, pid) is None


def test_the_agent_does_not_attest_when_the_own_records_retention_has_run_out(
    sandbox: Sandbox,
) -> None:
    """Attesting would attest the own care records' erasure too: that is the DPO's act."""
    pid, copied, own = _followed_at_a_and_b(sandbox)
    # 21 years on, by the chain's clock: B's (and A's) care records are past their retention.
    sandbox.root.engine.clock = lambda: time.time() + 21 * 366 * DAY_MS / 1000  # type: ignore[attr-defined]
    asked = {"pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}  # on A's portal
    sandbox.h[A].node.wallet.send("erasure.request", asked)
    sandbox.erasure_takes_effect(pid)

    def obligation_of_b() -> dict:  # type: ignore[type-arg]
        found: dict = sandbox.root.engine.query("erasure/status", {"pid": pid})  # type: ignore[type-arg]
        return next(o for o in found["obligations"] if o["holder"] == B)

    assert obligation_of_b()["custody"]["status"] == "pending"  # no retention left to refuse it
    wait_for(lambda: _erase_jobs(sandbox, B), what="B's erase job")
    # The agent shreds the copies apart, but leaves the obligation to B's DPO.
    assert _erase_jobs(sandbox, B) == [
        f"{len(copied)} copies erased apart from the own care records"
    ]
    assert obligation_of_b()["status"] == "pending"
    vault_b = sandbox.h[B].vault
    assert sorted(i.rid for i in vault_b.records_of(pid)) == sorted(own)
    for rid in copied:
        with pytest.raises(PatientErased):
            vault_b.get(rid)

    b = sandbox.h[B]
    assert b.exchange is not None
    b.exchange.stop()
    b.exchange = None
    outcome = carry_out(b.node, b.vault, pid)  # the DPO erases the own records, and attests
    assert outcome.status == "erased" and outcome.shred is not None
    assert outcome.shred.records == len(own) and b.vault.is_erased(pid)
    assert obligation_of_b()["status"] == "attested"


def test_the_dpo_carries_out_an_erasure_of_copies_held_beside_retained_records(
    sandbox: Sandbox,
) -> None:
    """`medledger erase` at a custodian that also holds copies: on main it refused it all."""
    pid, copied, own = _followed_at_a_and_b(sandbox)
    b = sandbox.h[B]
    assert b.exchange is not None
    b.exchange.stop()  # B's DPO acts by hand; no sync agent races it
    b.exchange = None
    sandbox.h[A].node.wallet.send(
        "erasure.request", {"pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"}
    )
    assert carry_out(b.node, b.vault, pid).status == "pending"  # 72 h to cancel it
    sandbox.erasure_takes_effect(pid)

    outcome = carry_out(b.node, b.vault, pid)
    assert outcome.status == "erased" and "retention until" in outcome.reason
    assert outcome.shred is not None
    assert (outcome.shred.records, outcome.shred.copies) == (0, len(copied))
    status = sandbox.root.engine.query("erasure/status", {"pid": pid})
    ob = next(o for o in status["obligations"] if o["holder"] == B)
    assert ob["status"] == "attested" and ob["custody"]["status"] == "refused"
    assert sorted(i.rid for i in b.vault.records_of(pid)) == sorted(own)
    assert carry_out(b.node, b.vault, pid).reason == "already attested"
