"""The tx-level refusal matrix, extended with every case of the trust-boundaries review.

Each row is one attempt by someone who is not entitled to it; the contract refuses it with a
stable code and a reason naming why, and the refusal changes nothing. alice's care records are
at h0 (a custodian since the `World` began); h1 and h2 never treated her.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from medledger.contracts.records import META_CT_SIZES
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from tests.support.access import log_body
from tests.support.world import EVIDENCE, World

NOTE = hashlib.sha256(b"a note kept off chain").digest()


def _consent(w: World, grantee: str = "org:h1", **extra: Any) -> dict[str, Any]:
    return {
        "pid": w.pid,
        "grantee": grantee,
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
        "evidence_hash": EVIDENCE,
        **extra,
    }


def _revoked_taker(w: World) -> TxResult:
    w.ok("h0", "identity.revoke", {"practitioner": "dr-a", "reason": "left"})
    return w.send("h0", "consent.grant", _consent(w, taken_by="dr-a"))


def _entry(w: World, **fields: Any) -> dict[str, Any]:
    return {
        "actor": "org:h1",
        "actor_org": "h1",
        "pid": w.pid,
        "action": "read",
        "purpose": "treatment",
        "outcome": "denied",
        "reason": "no consent",
        **fields,
    }


def _study_of(w: World, sponsor: str) -> TxResult:
    body = {
        "study": "s1",
        "protocol_hash": hashlib.sha256(b"protocol").digest(),
        "ethics_ref": "CPP-2026-001",
        "categories": ["labs"],
        "min_cohort": 2,
        "title_hash": NOTE,
    }
    return w.ok(sponsor, "research.register", body)


def _registration(w: World, author: str = "", **entry: Any) -> TxResult:
    body = {
        "rid": "r-new",
        "pid": w.pid,
        "commitment": b"\x02" * 32,
        "meta_ct": b"\x01" * META_CT_SIZES[0],
        **entry,
    }
    tx: dict[str, Any] = {"entries": [body]}
    if author:
        tx["author"] = author
    return w.send("h0", "records.register", tx)


TRUST_CASES: dict[str, tuple[Callable[[World], TxResult], Code, str]] = {
    # item 1: acting in a patient's name
    "a stranger grants itself access in the patient's name": (
        lambda w: w.send("h1", "consent.grant", _consent(w, taken_by="dr-b")),
        Code.UNAUTHORIZED,
        "not a custodian of this patient",
    ),
    "a stranger's physician signs a grant for the patient": (
        lambda w: w.send("h1/dr-b", "consent.grant", _consent(w)),
        Code.UNAUTHORIZED,
        "not a custodian of this patient",
    ),
    "a stranger files the patient's erasure": (
        lambda w: w.send(
            "h1", "erasure.request", {"pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": "dr-b"}
        ),
        Code.UNAUTHORIZED,
        "not a custodian of this patient",
    ),
    "a stranger enrols the patient in its own study": (
        lambda w: (
            _study_of(w, "h1/res-b"),
            w.send(
                "h1",
                "research.enrol",
                {"study": "s1", "pid": w.pid, "evidence_hash": EVIDENCE, "taken_by": "dr-b"},
            ),
        )[1],
        Code.UNAUTHORIZED,
        "not a custodian of this patient",
    ),
    "a stranger binds its own key as the patient's": (
        lambda w: w.send(
            "h1",
            "patients.bind",
            {
                "pid": w.pid,
                "key": hashlib.sha256(b"h1's key").digest(),
                "evidence_hash": EVIDENCE,
            },
        ),
        Code.UNAUTHORIZED,
        "not a custodian of this patient",
    ),
    "a custodian names no one who took the request": (
        lambda w: w.send("h0", "consent.grant", _consent(w)),
        Code.INVALID_BODY,
        "taken_by",
    ),
    "a custodian names a revoked practitioner": (
        _revoked_taker,
        Code.UNAUTHORIZED,
        "revoked",
    ),
    "a researcher takes a patient's request": (
        lambda w: w.send("h0/res-a", "consent.grant", _consent(w)),
        Code.UNAUTHORIZED,
        "role allowed to take a patient's request",
    ),
    "the portal channel signed by a practitioner's key": (
        lambda w: w.send("h0/dr-a", "consent.grant", _consent(w, channel="portal")),
        Code.UNAUTHORIZED,
        "portal",
    ),
    # item 4: writes are authored by someone entitled to write
    "a record authored by a practitioner of another hospital": (
        lambda w: _registration(w, author="practitioner:h1/dr-b"),
        Code.UNAUTHORIZED,
        "author",
    ),
    # item 2: sealed metadata of a size that would tell what it hides
    "an index entry whose metadata is not padded": (
        lambda w: _registration(w, meta_ct=b"\x01" * 138),
        Code.INVALID_BODY,
        "meta_ct",
    ),
    # item 5: the access trail tells the truth and carries no free text
    "an access attributed to another hospital's practitioner without its request": (
        lambda w: w.send(
            "h1",
            "access.log",
            log_body(
                [
                    _entry(
                        w,
                        actor="practitioner:h0/dr-a",
                        actor_org="h0",
                        outcome="granted",
                        basis="custodian",
                        reason="",
                    )
                ]
            ),
        ),
        Code.UNAUTHORIZED,
        "needs its signed request",
    ),
    "a denial whose reason is free text": (
        lambda w: w.send(
            "h1", "access.log", log_body([_entry(w, reason="HIV positive since 2019")])
        ),
        Code.INVALID_BODY,
        "reason",
    ),
    "an access entry naming 20,000 records": (
        lambda w: w.send(
            "h1",
            "access.log",
            log_body([_entry(w, rids=[f"r{i}" for i in range(20_000)])]),
        ),
        Code.INVALID_BODY,
        "rids",
    ),
    # item 6: no clinical fact in clear beside a pid
    "a study registered with its title in clear": (
        lambda w: w.send(
            "h1/res-b",
            "research.register",
            {
                "study": "s2",
                "protocol_hash": NOTE,
                "ethics_ref": "CPP-2026-002",
                "categories": ["labs"],
                "min_cohort": 2,
                "title": "Heart failure outcomes",
            },
        ),
        Code.INVALID_BODY,
        "title",
    ),
    "a break-the-glass whose reason code would sit beside the pid": (
        lambda w: w.send(
            "h1/er-b",
            "emergency.open",
            {"pid": w.pid, "reason": "unconscious", "reason_hash": NOTE},
        ),
        Code.INVALID_BODY,
        "reason",
    ),
}


@pytest.mark.parametrize("name", list(TRUST_CASES))
def test_each_attempt_is_refused_with_its_reason_and_changes_nothing(name: str) -> None:
    make, code, fragment = TRUST_CASES[name]
    w = World()
    consents_before = w.q("consent/list", {"pid": w.pid})
    result = make(w)
    assert result.code == code, result
    assert fragment in result.log, result.log
    assert w.q("consent/list", {"pid": w.pid}) == consents_before
    assert w.q("erasure/status", {"pid": w.pid}) is None
