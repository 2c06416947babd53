"""Hospital to hospital: reads that the custodian authorises, logs, then serves; prefetching."""

from __future__ import annotations

import base64
from typing import cast

import orjson
import pytest

from medledger.exchange.client import ExchangeError, IntegrityError, verify_fetched
from medledger.interop.synth import generate
from medledger.ledger.keys import SigningKey
from medledger.node.indexing import check_commitment

from .conftest import A, B, C, Sandbox, bundles, observation, wait_for


def test_written_at_a_is_readable_at_b_and_prefetched_into_b_vault(sandbox: Sandbox) -> None:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    consent_id = sandbox.consent(A, pid, B)
    vault_b = sandbox.h[B].vault

    # The consent alone makes B's sync agent fetch the metadata key and every record.
    wait_for(lambda: len(vault_b.records_of(pid)) == len(rids), what="prefetch after consent")
    for info in vault_b.records_of(pid):
        assert info.is_copy and info.custodian == A
        entry = sandbox.root.engine.query("records/entry", {"rid": info.rid})
        # Re-encrypted under B's keys, with A's salt: the commitment still checks at B.
        data = vault_b.get(info.rid)
        assert data == sandbox.h[A].vault.get(info.rid)
        assert check_commitment(vault_b.salt(pid, info.rid, 1), data, entry["commitment"])

    # B sees the index, metadata opened, and every entry names the consent as its basis.
    index = sandbox.x(B).client.index(A, pid)
    assert sorted(e["rid"] for e in index) == sorted(rids)
    assert {e["basis"] for e in index} == {f"consent:{consent_id}"}
    assert all(e["meta"]["type"] for e in index)

    # A record written at A afterwards reaches B's vault on its own (real time).
    _, new_rids = sandbox.ingest(A, observation(sandbox, A, pid))
    wait_for(
        lambda: {i.rid for i in vault_b.records_of(pid)} >= set(new_rids),
        what="new record prefetched",
    )

    # Every record B got is on the chain, with the consent as basis: the ones written before
    # the consent as B's reads (with the signed request's hash); the one written after it as
    # its disclosure to B, logged in its own registration tx.
    trail = sandbox.trail(pid)
    reads = [e for e in trail if e["action"] == "read"]
    exports = [e for e in trail if e["action"] == "export"]
    for e in reads + exports:
        assert e["actor_org"] == B and e["custodian"] == A
        assert e["basis"] == f"consent:{consent_id}"
    assert reads and all(len(e["request"]) == 32 for e in reads)
    # Each read rests on B's signed request, verified on the chain; A's evidence keeps it.
    assert {e["request_signer"].partition(":")[2].partition("/")[0] for e in reads} == {B}
    kept = {bytes(cast(bytes, r["digest"])) for r in sandbox.x(A).evidence.rows() if r["digest"]}
    assert {bytes(e["request"]) for e in reads} <= kept
    assert {r for e in reads for r in e["rids"]} == set(rids)
    assert {r for e in exports for r in e["rids"]} == set(new_rids)


def test_without_consent_b_is_refused_and_the_trail_shows_the_denial(sandbox: Sandbox) -> None:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    client = sandbox.x(B).client
    with pytest.raises(ExchangeError) as refused:
        client.fetch(A, pid, rids[:2])
    assert refused.value.status == 403
    assert refused.value.reason.startswith("no consent")
    with pytest.raises(ExchangeError) as no_key:
        client.metadata_key(A, pid)
    assert no_key.value.status == 403

    denials = [e for e in sandbox.trail(pid) if e["outcome"] == "denied"]
    assert {e["action"] for e in denials} == {"read", "search"}
    for e in denials:
        assert e["actor"] == f"org:{B}" and e["actor_org"] == B and e["custodian"] == A
        assert e["reason"].startswith("no consent") and e["basis"] == ""
    denied_reads = {r for e in denials if e["action"] == "read" for r in e["rids"]}
    assert denied_reads == set(rids[:2])
    assert sandbox.h[B].vault.records_of(pid) == []
    # The evidence of the refused request is kept at the custodian.
    rows = sandbox.x(A).evidence.rows()
    assert any(r["outcome"] == "denied" and r["peer"] == B for r in rows)


def test_consent_scope_is_enforced_record_by_record(sandbox: Sandbox) -> None:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B, categories=["labs"])
    vault_b = sandbox.h[B].vault
    index = sandbox.x(A).gateway  # the custodian's view, to know which records are labs
    labs = {e["rid"] for e in sandbox.x(B).client.index(A, pid) if e["meta"]["category"] == "labs"}
    assert labs, "the synthetic patient has lab results"
    assert index is not None
    wait_for(lambda: {i.rid for i in vault_b.records_of(pid)} == labs, what="labs prefetched")
    assert sandbox.x(B).agent.wait_idle()
    assert {i.rid for i in vault_b.records_of(pid)} == labs  # and nothing else
    other = next(r for r in rids if r not in labs)
    with pytest.raises(ExchangeError) as refused:
        sandbox.x(B).client.fetch(A, pid, [other])
    assert refused.value.reason.startswith("other category")


def test_a_practitioner_signs_for_themselves_and_roles_count(sandbox: Sandbox) -> None:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B)
    nodes = {org: h.node for org, h in sandbox.h.items()}
    doctor, clerk = SigningKey.generate(), SigningKey.generate()
    nodes[B].wallet.send(
        "identity.register",
        {"practitioner": "dr-martin", "key": doctor.public_key, "roles": ["physician"]},
    )
    nodes[B].wallet.send(
        "identity.register",
        {"practitioner": "clerk-1", "key": clerk.public_key, "roles": ["admin"]},
    )
    client = sandbox.x(B).client
    fetched = client.with_signer(doctor).fetch(A, pid, rids[:1])
    assert [r.rid for r in fetched.records] == rids[:1]
    with pytest.raises(ExchangeError) as refused:
        client.with_signer(clerk).fetch(A, pid, rids[:1])
    assert refused.value.reason.startswith("role")
    actors = {e["actor"] for e in sandbox.trail(pid) if e["action"] == "read"}
    assert {f"practitioner:{B}/dr-martin", f"practitioner:{B}/clerk-1"} <= actors


def test_the_signer_must_belong_to_the_hospital_of_the_certificate(sandbox: Sandbox) -> None:
    pid, rids = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, C)
    # B's connection (B's client certificate) carrying a request signed with C's key.
    intruder = sandbox.x(B).client.with_signer(sandbox.h[C].node.org_key)
    with pytest.raises(ExchangeError) as refused:
        intruder.fetch(A, pid, rids[:1])
    assert refused.value.status == 403
    assert "certified for aphp-paris" in refused.value.reason
    assert not [e for e in sandbox.trail(pid) if e["action"] == "read"]


def test_a_tampered_record_is_caught_by_the_requester() -> None:
    salt, resource = b"s" * 32, b'{"resourceType":"Observation"}'
    from medledger.node.indexing import commitment

    versions = [
        {"version": 1, "custodian": A, "pid": "p" * 64, "commitment": commitment(salt, resource)}
    ]
    good = {"rid": "r1", "version": 1, "resource": base64.b64encode(resource).decode()}
    good["salt"] = base64.b64encode(salt).decode()
    assert verify_fetched(versions, good, A, "p" * 64) == versions[0]["commitment"]
    bad = dict(good, resource=base64.b64encode(resource.replace(b"Obs", b"Xbs")).decode())
    with pytest.raises(IntegrityError):
        verify_fetched(versions, bad, A, "p" * 64)
    with pytest.raises(IntegrityError):
        verify_fetched(versions, good, B, "p" * 64)  # not held by that custodian
    with pytest.raises(IntegrityError):
        verify_fetched(versions, dict(good, version=2), A, "p" * 64)


def test_gateway_answers_health_and_rejects_bad_bodies(sandbox: Sandbox) -> None:
    client = sandbox.x(B).client
    with pytest.raises(ExchangeError) as bad:
        client.post(A, "records", {"pid": "nope", "rids": ["x"]})
    assert bad.value.status == 400
    with pytest.raises(ExchangeError) as unknown:
        client.post(A, "nothing-here", {})
    assert unknown.value.status == 404
    answer = client._client(A).get("/exchange/v1/health")
    assert orjson.loads(answer.content)["peer"] == B


def test_a_consent_for_one_custodian_is_not_asked_of_the_others(sandbox: Sandbox) -> None:
    both = generate(1, [A, C], seed=5)
    pid, _ = sandbox.ingest(A, both[A][0])
    same_pid, rids_c = sandbox.ingest(C, both[C][0])
    assert same_pid == pid  # one patient followed at A and at C
    sandbox.consent(C, pid, B, custodian=C)  # "share what C holds", nothing of A's
    vault_b = sandbox.h[B].vault
    wait_for(lambda: {i.rid for i in vault_b.records_of(pid)} == set(rids_c), what="C's copies")
    assert sandbox.x(B).agent.wait_idle()
    assert {i.custodian for i in vault_b.records_of(pid)} == {C}
    # B's agent knew from its own replica that A would refuse: it did not ask at all.
    assert not [e for e in sandbox.trail(pid) if e["custodian"] == A and e["actor_org"] == B]
