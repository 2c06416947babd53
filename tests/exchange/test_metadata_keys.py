"""A metadata key opens only what its holder may see (issue 11 review, item 3).

The custodian seals each index entry under the key of its category; a hospital receives only
the keys of the categories `authorize` grants it. So, from its own replica, a hospital
consented for labs opens the labs entries and no other, and a study's sponsor opens its
study's categories only, while the sync agent still prefetches exactly what it may read.
"""

from __future__ import annotations

import orjson
import pytest

from medledger.exchange.client import ExchangeError
from medledger.ledger.keys import SigningKey
from medledger.node.indexing import MetadataError, epoch_of, open_meta
from medledger.node.ingest import Ingestor

from .conftest import EVIDENCE, A, B, C, Sandbox, bundles, observation, wait_for


def _categories_at_a(sandbox: Sandbox, pid: str) -> dict[str, str]:
    """{rid: category} of the patient's live entries at A, as A itself reads them."""
    root = sandbox.h[A].vault.metadata_key(pid)
    entries = sandbox.h[B].node.engine.query("records/of_patient", {"pid": pid, "custodian": A})
    return {
        e["rid"]: open_meta(root, e["rid"], e["version"], e["meta_ct"])["category"] for e in entries
    }


def _categories(keys: dict[int, dict[str, bytes]]) -> set[str]:
    return {c for of_epoch in keys.values() for c in of_epoch}


def _opened_by_b(sandbox: Sandbox, pid: str, keys: dict[int, dict[str, bytes]]) -> dict[str, str]:
    """{rid: category} of the entries B's keys open, trying every entry of B's replica."""
    opened: dict[str, str] = {}
    for e in sandbox.h[B].node.engine.query("records/of_patient", {"pid": pid, "custodian": A}):
        try:
            meta = open_meta(keys, e["rid"], e["version"], e["meta_ct"])
        except MetadataError:
            continue
        opened[e["rid"]] = meta["category"]
    return opened


def test_a_consent_for_labs_opens_only_the_labs_entries(sandbox: Sandbox) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    at_a = _categories_at_a(sandbox, pid)
    labs = {rid for rid, c in at_a.items() if c == "labs"}
    assert labs and len(labs) < len(at_a), at_a  # a patient with labs and other records

    sandbox.consent(A, pid, B, categories=["labs"])
    keys = wait_for(lambda: sandbox.x(B).store.keys(A, pid), what="B's metadata keys")
    assert _categories(keys) == {"labs"}
    assert _opened_by_b(sandbox, pid, keys) == {rid: "labs" for rid in labs}
    # The gateway seals the same, whatever the caller asks for.
    assert _categories(sandbox.x(B).client.metadata_key(A, pid)) == {"labs"}

    # The real-time path is intact: exactly the labs records are prefetched.
    assert sandbox.x(B).agent.wait_idle()
    copies = {i.rid for i in sandbox.h[B].vault.records_of(pid) if i.is_copy}
    assert copies == labs


def test_a_study_sponsor_opens_only_its_study_categories(sandbox: Sandbox) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    at_a = _categories_at_a(sandbox, pid)
    covered = {rid for rid, c in at_a.items() if c in ("conditions", "labs")}
    assert covered and len(covered) < len(at_a), at_a

    b = sandbox.h[B].node
    researcher = SigningKey.generate()
    researcher.save(b.config.practitioner_key_path("dr-stats"))
    b.wallet.send(
        "identity.register",
        {"practitioner": "dr-stats", "key": researcher.public_key, "roles": ["researcher"]},
    )
    b.practitioner_wallet("dr-stats").send(
        "research.register",
        {
            "study": "b-2026-001",
            "protocol_hash": EVIDENCE,
            "ethics_ref": "CPP-2026-0001",
            "categories": ["conditions", "labs"],
            "min_cohort": 1,
        },
    )
    sandbox.h[A].node.wallet.send(
        "research.enrol",
        {"study": "b-2026-001", "pid": pid, "evidence_hash": EVIDENCE, "channel": "portal"},
    )
    keys = wait_for(lambda: sandbox.x(B).store.keys(A, pid), what="B's metadata keys")
    assert _categories(keys) == {"conditions", "labs"}
    assert _opened_by_b(sandbox, pid, keys) == {rid: at_a[rid] for rid in covered}
    # Research takes no copies of records.
    assert sandbox.x(B).agent.wait_idle()
    assert not [i for i in sandbox.h[B].vault.records_of(pid) if i.is_copy]


def test_a_broader_consent_brings_the_keys_of_its_new_categories(sandbox: Sandbox) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B, categories=["labs"])
    wait_for(lambda: sandbox.x(B).store.keys(A, pid), what="B's labs key")
    sandbox.consent(A, pid, B, categories=["*"])
    assert wait_for(
        lambda: len(_categories(sandbox.x(B).store.keys(A, pid) or {})) == 16,
        what="every category's key",
    )
    assert sandbox.x(B).agent.wait_idle()
    copies = {i.rid for i in sandbox.h[B].vault.records_of(pid) if i.is_copy}
    assert copies == set(_categories_at_a(sandbox, pid))


def test_after_a_revocation_the_former_holder_cannot_open_new_entries(sandbox: Sandbox) -> None:
    """The keys a hospital obtained cannot be taken back, but they are of an epoch: once its
    consent is revoked the epoch moves on, and what is registered after opens only under the
    new epoch's keys, which the gateway no longer seals to it."""
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    b_consent = sandbox.consent(A, pid, B, categories=["labs"])
    sandbox.consent(A, pid, C, categories=["labs"])
    kept = wait_for(lambda: sandbox.x(B).store.keys(A, pid), what="B's keys")  # B keeps them
    before = _opened_by_b(sandbox, pid, kept)
    assert before and set(before.values()) == {"labs"}

    sandbox.h[A].node.wallet.send(
        "consent.revoke", {"id": b_consent, "evidence_hash": EVIDENCE, "channel": "portal"}
    )
    result = Ingestor(sandbox.h[A].node, sandbox.h[A].vault).ingest_bytes(
        orjson.dumps(observation(sandbox, A, pid)), "hba1c.json"
    )
    (new_rid,) = result.rids
    entry = wait_for(
        lambda: sandbox.h[B].node.engine.query("records/entry", {"rid": new_rid}), what="entry"
    )
    assert epoch_of(entry["meta_ct"]) > 0  # sealed in the new epoch
    # What B kept still opens what it could see before, not the new labs result.
    assert _opened_by_b(sandbox, pid, kept) == before
    with pytest.raises(ExchangeError) as refused:
        sandbox.x(B).client.metadata_key(A, pid)
    assert refused.value.status == 403
    # C, still consented, obtains the new epoch's keys (its agent asks again by itself) and
    # prefetches the new result: the real-time path goes on across epochs.
    assert sandbox.x(C).agent.wait_idle()
    assert new_rid in {i.rid for i in sandbox.h[C].vault.records_of(pid) if i.is_copy}
    assert epoch_of(entry["meta_ct"]) in (sandbox.x(C).store.keys(A, pid) or {})
