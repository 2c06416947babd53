"""Nothing on the chain tells about a patient's health, and every field that lands there is
bounded: free text on a ledger can never be erased (issue 11, items 5 and 6)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from medledger.contracts.categories import CATEGORIES, PURPOSES
from medledger.contracts.governance import MAX_NAME, MAX_NOTE
from medledger.contracts.identity import MAX_REASON as MAX_REVOKE_REASON
from medledger.contracts.policies import MAX_POLICY_TEXT
from medledger.contracts.records import MAX_REPLICAS
from medledger.contracts.research import MAX_ETHICS_REF
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from tests.support.world import World

KEY = b"\x09" * 32
HASH = hashlib.sha256(b"protocol").digest()


def _propose(w: World, action: str, args: dict[str, Any], note: str = "") -> TxResult:
    return w.send("h0", "governance.propose", {"action": action, "args": args, "note": note})


def _study(w: World, **over: Any) -> TxResult:
    body = {
        "study": "s-2026-01",
        "protocol_hash": HASH,
        "ethics_ref": "CPP-2026-0142",
        "categories": ["labs"],
        "min_cohort": 3,
        **over,
    }
    return w.send("h1/res-b", "research.register", body)


def _grant(w: World, **over: Any) -> TxResult:
    body = {
        "pid": w.pid,
        "grantee": "org:h1",
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
        **over,
    }
    return w.send("patient:alice", "consent.grant", body)


CASES: dict[str, tuple[Callable[[World], TxResult], str]] = {
    "a proposal's note": (
        lambda w: _propose(w, "set_param", {"name": "proposal_ttl_ms", "value": 1}, "x" * 501),
        f"field note: at most {MAX_NOTE}",
    ),
    "a member's name": (
        lambda w: _propose(w, "admit_member", {"org": "h9", "name": "x" * 101, "key": KEY}),
        f"field args.name: at most {MAX_NAME}",
    ),
    "a policy's Cedar text": (
        lambda w: _propose(w, "set_policy", {"id": "big", "text": "x" * (MAX_POLICY_TEXT + 1)}),
        "field args.text: longer than",
    ),
    "a practitioner's revocation reason": (
        lambda w: w.send("h1", "identity.revoke", {"practitioner": "dr-b", "reason": "x" * 201}),
        f"field reason: at most {MAX_REVOKE_REASON}",
    ),
    "a referral's cancellation reason is a code, not free text": (
        lambda w: w.send(
            "h1", "referral.cancel", {"id": 1, "reason": "the tumour proved inoperable"}
        ),
        "field reason: empty or one of",
    ),
    "a consent's revocation reason is a code, not free text": (
        lambda w: w.send(
            "patient:alice", "consent.revoke", {"id": w.grant("org:h1"), "reason": "HIV+"}
        ),
        "field reason: empty or one of",
    ),
    "a study's title is not on the chain": (
        lambda w: _study(w, title="Heart failure outcomes"),
        "field title: a study's title stays with its sponsor",
    ),
    "a study's title hash is a hash": (
        lambda w: _study(w, title_hash=b"Heart failure"),
        "field title_hash: must be a 32-byte",
    ),
    "a study's ethics reference": (
        lambda w: _study(w, ethics_ref="x" * (MAX_ETHICS_REF + 1)),
        f"field ethics_ref: the approval reference, 1..{MAX_ETHICS_REF}",
    ),
    "a study names categories of the vocabulary": (
        lambda w: _study(w, categories=["heart-failure"]),
        "unknown category 'heart-failure'",
    ),
    "an emergency's reason code stays off chain": (
        lambda w: w.send("h1/er-b", "emergency.open", {"pid": w.pid, "reason": "unconscious"}),
        "field reason: a reason code tells about the patient's health",
    ),
    "a consent names categories of the vocabulary": (
        lambda w: _grant(w, categories=["hiv"]),
        "unknown category 'hiv'",
    ),
    "a consent's purpose is of the vocabulary": (
        lambda w: _grant(w, purpose="oncology follow-up"),
        "unknown purpose 'oncology follow-up'",
    ),
    "an access request names categories of the vocabulary": (
        lambda w: w.send(
            "h1/dr-b",
            "consent.request",
            {"pid": w.pid, "categories": ["psychiatry"], "purpose": "treatment"},
        ),
        "unknown category 'psychiatry'",
    ),
    "a shredding names replica peers by member id, not free text": (
        lambda w: w.send(
            "h0",
            "records.shredded",
            {"pid": w.pid, "digest": HASH, "records": 1, "replicas_dropped": ["the oncology"]},
        ),
        "field replicas_dropped[0]: not another member's org id",
    ),
    "a shredding names a bounded number of replica peers": (
        lambda w: w.send(
            "h0",
            "records.shredded",
            {"pid": w.pid, "digest": HASH, "records": 1, "replicas_pending": ["h1"] * 17},
        ),
        f"at most {MAX_REPLICAS} peers",
    ),
    "the consortium's backup_replicas": (
        lambda w: _propose(w, "set_param", {"name": "backup_replicas", "value": 17}),
        "backup_replicas is at most 16",
    ),
    "the consortium's custody_grace_days outlasts a rebinding vote": (
        lambda w: _propose(w, "set_param", {"name": "custody_grace_days", "value": 0}),
        "custody_grace_days is 1 to 365",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_each_field_is_bounded_or_a_code(name: str) -> None:
    act, words = CASES[name]
    result = act(World())
    assert result.code == Code.INVALID_BODY and words in result.log, result


def test_a_study_registers_with_only_the_hash_of_its_title() -> None:
    w = World()
    title_hash = hashlib.sha256(b'{"kind":"study","salt":"...","title":"..."}').digest()
    assert _study(w, title_hash=title_hash).ok
    study = w.q("research/study", {"study": "s-2026-01"})
    assert study["title_hash"] == title_hash and "title" not in study


def test_the_vocabulary_names_kinds_of_data_and_purposes_never_a_condition() -> None:
    """Consents, referrals and studies put categories next to a pid, so a category must say
    what kind of data it is (labs, imaging...), which every patient has, never a condition,
    a specialty or a sensitive domain (no "hiv", "psychiatry", "oncology", "genetics").
    A change here is a change of the consensus rules and of what the chain tells: review it
    against that rule before updating this list."""
    assert CATEGORIES == (
        "demographics",
        "encounters",
        "conditions",
        "allergies",
        "medications",
        "immunizations",
        "labs",
        "vital-signs",
        "observations",
        "diagnostic-reports",
        "imaging",
        "procedures",
        "care-plans",
        "documents",
        "administrative",
        "other",
    )
    assert PURPOSES == ("treatment", "emergency", "research")
