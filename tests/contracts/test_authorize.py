"""authorize(): the access-control matrix, tx-level refusals, and its properties.

`World` (shared by the care-contract tests) lives in `tests/support/world.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medledger.contracts.authorize import Decision, authorize
from medledger.contracts.categories import CATEGORIES, PURPOSES
from medledger.contracts.common import DAY_MS
from medledger.contracts.research import member_token
from medledger.ledger import codec
from medledger.ledger.errors import Code, TxError
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import TxResult
from medledger.ledger.store import StateView
from tests.support.world import EVIDENCE, HOUR, JUSTIFICATION, PRACTITIONERS, World, pid_of

# -- the matrix ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    setup: Callable[[World], Decision]
    allowed: bool
    basis: str = ""  # expected basis (exact)
    reason: str = ""  # expected start of the reason


def _expired(w: World) -> Decision:
    w.grant("org:h1", end_ms=w.now + 10 * 1000)
    w.block(at=w.now + 60 * 1000)
    return w.auth("h1/dr-b")


def _revoked(w: World) -> Decision:
    cid = w.grant("org:h1")
    w.ok("patient:alice", "consent.revoke", {"id": cid})
    return w.auth("h1/dr-b")


def _revoked_audit_before(w: World) -> Decision:
    cid = w.grant("org:h1")
    granted_at = w.now
    w.ok("patient:alice", "consent.revoke", {"id": cid})
    return w.auth("h1/dr-b", at=granted_at + 1)  # an access made while it held stays lawful


def _emergency_expired(w: World) -> Decision:
    w.open_emergency(duration_ms=HOUR)
    w.block(at=w.now + 2 * HOUR)
    return w.auth("h1/er-b", purpose="emergency")


def _emergency_flagged(w: World) -> Decision:
    w.open_emergency()
    w.ok("h1/dpo-b", "emergency.review", {"id": 1, "verdict": "flagged"})
    return w.auth("h1/er-b", purpose="emergency")


def _referral_outside(w: World) -> Decision:
    w.refer(w.now + 60 * DAY_MS)  # window opens 7 days before the date
    return w.auth("h1/dr-b")


def _referral_after(w: World) -> Decision:
    w.refer(w.now + DAY_MS)
    return w.auth("h1/dr-b", at=w.now + 40 * DAY_MS)


def _enrolled(w: World, withdraw: bool = False) -> Decision:
    w.study()
    w.ok("patient:alice", "research.enrol", {"study": "s1", "pid": w.pid})
    if withdraw:
        w.ok("patient:alice", "research.withdraw", {"study": "s1", "pid": w.pid})
    return w.auth("h1/res-b", purpose="research", study="s1")


def _policy_forbids_consent(w: World) -> Decision:
    w.grant("org:h2", categories=["*"])
    text = (
        '@id("h2-suspended")\n'
        'forbid(principal, action, resource) when { context.org == "h2" && '
        'context.basis == "consent" };'
    )
    w.vote_policy("set_policy", {"id": "suspend-h2", "text": text})
    return w.auth("h2/dr-c")


def _default_policy_research_documents(w: World) -> Decision:
    w.study("s2", categories=["labs", "documents"])
    w.grant("study:s2", categories=["*"], purpose="research")
    return w.auth("h1/res-b", category="documents", purpose="research", study="s2")


def _erased(w: World) -> Decision:
    w.grant("org:h1")
    w.ok(
        "h0",
        "records.shredded",
        {"pid": w.pid, "digest": hashlib.sha256(b"receipt").digest(), "records": 3},
    )
    return w.auth("h1/dr-b")


def _erasure_requested(w: World) -> Decision:
    w.grant("org:h1")
    w.ok("patient:alice", "erasure.request", {"pid": w.pid})
    return w.auth("h1/dr-b")


def _revoked_practitioner(w: World) -> Decision:
    w.grant("org:h1")
    w.ok("h1", "identity.revoke", {"practitioner": "dr-b"})
    return w.auth("h1/dr-b")


MATRIX: dict[str, Case] = {
    "custodian's own physician": Case(lambda w: w.auth("h0/dr-a"), True, "custodian"),
    "custodian's organisation key": Case(lambda w: w.auth("h0"), True, "custodian"),
    "no consent": Case(lambda w: w.auth("h1/dr-b"), False, reason="no consent"),
    "consent to the hospital": Case(
        lambda w: (w.grant("org:h1"), w.auth("h1/dr-b"))[1], True, "consent:1"
    ),
    "consent to the practitioner": Case(
        lambda w: (w.grant("practitioner:h1/dr-b"), w.auth("h1/dr-b"))[1], True, "consent:1"
    ),
    "consent to another practitioner": Case(
        lambda w: (w.grant("practitioner:h1/dr-b"), w.auth("h1/nurse-b"))[1],
        False,
        reason="no consent",
    ),
    "consent to another hospital": Case(
        lambda w: (w.grant("org:h2"), w.auth("h1/dr-b"))[1], False, reason="no consent"
    ),
    "expired": Case(_expired, False, reason="consent expired"),
    "not yet valid": Case(
        lambda w: (w.grant("org:h1", start_ms=w.now + DAY_MS), w.auth("h1/dr-b"))[1],
        False,
        reason="consent not yet valid",
    ),
    "revoked": Case(_revoked, False, reason="consent revoked"),
    "revoked, audited before revocation": Case(_revoked_audit_before, True, "consent:1"),
    "other hospital (custodian scope)": Case(
        lambda w: (w.grant("org:h1", custodian="h2"), w.auth("h1/dr-b"))[1],
        False,
        reason="other hospital",
    ),
    "other category": Case(
        lambda w: (w.grant("org:h1"), w.auth("h1/dr-b", category="documents"))[1],
        False,
        reason="other category",
    ),
    "every category": Case(
        lambda w: (w.grant("org:h1", categories=["*"]), w.auth("h1/dr-b", category="imaging"))[1],
        True,
        "consent:1",
    ),
    "other purpose": Case(
        lambda w: (w.grant("org:h1", purpose="emergency"), w.auth("h1/dr-b"))[1],
        False,
        reason="other purpose",
    ),
    "role may not act for the purpose": Case(
        lambda w: (w.grant("org:h1"), w.auth("h1/dpo-b"))[1], False, reason="role"
    ),
    "emergency without the role": Case(
        lambda w: w.auth("h1/dr-b", purpose="emergency"), False, reason="emergency without role"
    ),
    "emergency with the role, none opened": Case(
        lambda w: w.auth("h1/er-b", purpose="emergency"), False, reason="no emergency access"
    ),
    "emergency with the role": Case(
        lambda w: (w.open_emergency(), w.auth("h1/er-b", purpose="emergency"))[1],
        True,
        "emergency:1",
    ),
    "emergency opened by a colleague": Case(
        lambda w: (w.open_emergency(), w.auth("h1/er-b2", purpose="emergency"))[1],
        False,
        reason="no emergency access",
    ),
    "emergency used for treatment": Case(
        lambda w: (w.open_emergency(), w.auth("h1/er-b"))[1], False, reason="no consent"
    ),
    "emergency expired": Case(_emergency_expired, False, reason="emergency expired"),
    "emergency flagged by the DPO": Case(_emergency_flagged, False, reason="emergency expired"),
    "referral inside its window": Case(
        lambda w: (w.refer(w.now + DAY_MS), w.auth("h1/dr-b"))[1], True, "referral:1"
    ),
    "referral before its window": Case(_referral_outside, False, reason="referral outside window"),
    "referral after its window": Case(_referral_after, False, reason="referral outside window"),
    "referral, other category": Case(
        lambda w: (w.refer(w.now + DAY_MS), w.auth("h1/dr-b", category="documents"))[1],
        False,
        reason="other category",
    ),
    "referral, other custodian": Case(
        lambda w: (w.refer(w.now + DAY_MS), w.auth("h1/dr-b", custodian="h2"))[1],
        False,
        reason="other hospital",
    ),
    "enrolled in the study": Case(_enrolled, True, "enrolment:s1"),
    "withdrawn from the study": Case(
        lambda w: _enrolled(w, withdraw=True), False, reason="enrolment withdrawn"
    ),
    "research without a study": Case(
        lambda w: w.auth("h1/res-b", purpose="research"), False, reason="no consent"
    ),
    "policy forbid overriding a consent": Case(
        _policy_forbids_consent, False, reason="policy forbid suspend-h2/h2-suspended"
    ),
    "default policy: no research on documents": Case(
        _default_policy_research_documents,
        False,
        reason="policy forbid defaults/no-research-on-documents",
    ),
    "erased by the custodian": Case(_erased, False, reason="erased"),
    "erasure requested": Case(_erasure_requested, False, reason="erased"),
    "custodian during an erasure request": Case(
        lambda w: (w.ok("patient:alice", "erasure.request", {"pid": w.pid}), w.auth("h0/dr-a"))[1],
        True,
        "custodian",
    ),
    "revoked practitioner": Case(_revoked_practitioner, False, reason="actor revoked"),
    "unknown key": Case(
        lambda w: w.auth(SigningKey.generate().public_key), False, reason="unknown actor"
    ),
    "the patient's own key": Case(lambda w: w.auth(w.patient.public_key), True, "patient"),
    "another patient's key": Case(
        lambda w: w.auth(w.bind("bob").public_key), False, reason="unknown actor"
    ),
    "unknown category": Case(
        lambda w: w.auth("h0/dr-a", category="secrets"), False, reason="invalid request"
    ),
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_access_matrix(name: str) -> None:
    case = MATRIX[name]
    decision = case.setup(World())
    assert decision.allowed is case.allowed, decision
    if case.allowed:
        assert decision.basis == case.basis and decision.reason == "", decision
    else:
        assert decision.basis == "" and decision.reason.startswith(case.reason), decision


def test_the_query_gives_the_same_decision() -> None:
    w = World()
    w.grant("org:h1")
    args = {
        "actor": "h1/dr-b",
        "pid": w.pid,
        "purpose": "treatment",
        "meta": {"custodian": "h0", "category": "labs"},
        "at_ms": w.now,
    }
    assert w.q("authorize/check", args) == {"allowed": True, "basis": "consent:1", "reason": ""}
    by_key = {**args, "key": w.keys["h1/dr-b"].public_key}
    del by_key["actor"]
    assert w.q("authorize/check", by_key)["basis"] == "consent:1"
    denied = w.q("authorize/check", {**args, "actor": "h2/dr-c"})
    assert denied["allowed"] is False and denied["reason"].startswith("no consent")


def test_many_checks_in_one_query_give_each_ones_decision() -> None:
    """`authorize/check_many`: what ingestion asks for a unit's disclosures (a hospital and a
    category per record), read from one state; each answer is `authorize/check`'s."""
    w = World()
    w.grant("org:h1")  # labs only (World's default grant)
    bob = pid_of("bob")
    w.records("h0", bob, ["r-bob"])
    checks = [
        {
            "actor": actor,
            "pid": pid,
            "purpose": "treatment",
            "meta": {"custodian": "h0", "category": category, "type": "Observation"},
            "at_ms": w.now,
        }
        for actor in ("h1", "h2", "h0")
        for pid in (w.pid, bob)
        for category in ("labs", "imaging")
    ]
    many = w.q("authorize/check_many", {"checks": checks})
    assert many == [w.q("authorize/check", check) for check in checks]
    assert {d["basis"] for d in many} == {"consent:1", "custodian", ""}  # each kind of answer
    assert [d["allowed"] for d in many[:4]] == [True, False, False, False]  # h1: alice's labs


def test_many_checks_are_bounded_and_checked() -> None:
    w = World()
    check = {
        "actor": "h1",
        "pid": w.pid,
        "purpose": "treatment",
        "meta": {"custodian": "h0", "category": "labs"},
        "at_ms": w.now,
    }
    with pytest.raises(TxError, match="at most 500 checks"):
        w.q("authorize/check_many", {"checks": [check] * 501})
    with pytest.raises(TxError, match="needs checks"):
        w.q("authorize/check_many", {"checks": check})
    with pytest.raises(TxError, match="needs at_ms"):
        w.q("authorize/check_many", {"checks": [{**check, "at_ms": "now"}]})


# -- refusals at the tx level ---------------------------------------------------------------


def _forged(w: World) -> TxResult:
    good = w.tx(
        "patient:alice",
        "consent.grant",
        {
            "pid": w.pid,
            "grantee": "org:h1",
            "categories": ["labs"],
            "purpose": "treatment",
            "start_ms": w.now,
        },
    )
    payload, signature = codec.decode(good)
    forged = codec.encode([payload, bytes([signature[0] ^ 1]) + signature[1:]])
    return w.block(forged).results[0]


def _replayed(w: World) -> TxResult:
    body = {
        "pid": w.pid,
        "grantee": "org:h1",
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
    }
    tx = w.tx("patient:alice", "consent.grant", body)
    assert w.block(tx).results[0].ok
    return w.block(tx).results[0]


def _grant(w: World, who: str, **extra: Any) -> TxResult:
    body = {
        "pid": w.pid,
        "grantee": "org:h1",
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
        **extra,
    }
    return w.send(who, "consent.grant", body)


def _cohort(w: World, members: list[str], withdraw: str | None = None) -> TxResult:
    w.study()
    for name in members:
        if f"patient:{name}" not in w.keys:
            w.bind(name)
        w.ok(f"patient:{name}", "research.enrol", {"study": "s1", "pid": pid_of(name)})
    if withdraw:
        w.ok(f"patient:{withdraw}", "research.withdraw", {"study": "s1", "pid": pid_of(withdraw)})
    tokens = [member_token("s1", pid_of(n)) for n in members]
    return w.send(
        "h0",
        "research.release",
        {
            "study": "s1",
            "dataset_hash": hashlib.sha256(b"dataset").digest(),
            "members": tokens,
            "counts": {"patients": len(tokens), "records": 10},
        },
    )


def _release_of_strangers(w: World) -> TxResult:
    w.study()
    return w.send(
        "h0",
        "research.release",
        {
            "study": "s1",
            "dataset_hash": EVIDENCE,
            "members": [member_token("s1", pid_of("x")), member_token("s1", pid_of("y"))],
            "counts": {"patients": 2},
        },
    )


TX_CASES: dict[str, tuple[Callable[[World], TxResult], Code, str]] = {
    "forged signature": (_forged, Code.BAD_SIGNATURE, "signature"),
    "replayed tx": (_replayed, Code.BAD_NONCE, "nonce"),
    "hospital without evidence": (lambda w: _grant(w, "h0"), Code.INVALID_BODY, "evidence_hash"),
    "another patient's key": (
        lambda w: (w.bind("bob"), _grant(w, "patient:bob"))[1],
        Code.UNAUTHORIZED,
        "another patient",
    ),
    "research consent to a hospital": (
        lambda w: _grant(w, "patient:alice", purpose="research"),
        Code.INVALID_BODY,
        "study",
    ),
    "unknown category": (
        lambda w: _grant(w, "patient:alice", categories=["secrets"]),
        Code.INVALID_BODY,
        "categories",
    ),
    "revocation by a stranger hospital": (
        lambda w: (w.grant("org:h1"), w.send("h2", "consent.revoke", {"id": 1}))[1],
        Code.UNAUTHORIZED,
        "revoke",
    ),
    "emergency without the role": (
        lambda w: w.send("h1/dr-b", "emergency.open", {"pid": w.pid, "reason_hash": JUSTIFICATION}),
        Code.UNAUTHORIZED,
        "emergency",
    ),
    "emergency without a reason": (
        lambda w: w.send("h1/er-b", "emergency.open", {"pid": w.pid, "reason": ""}),
        Code.INVALID_BODY,
        "reason",
    ),
    "emergency beyond the policy maximum": (
        lambda w: w.send(
            "h1/er-b",
            "emergency.open",
            {"pid": w.pid, "reason_hash": JUSTIFICATION, "duration_ms": 4 * DAY_MS},
        ),
        Code.INVALID_BODY,
        "duration_ms",
    ),
    "emergency review by a DPO of another hospital": (
        lambda w: (
            w.open_emergency(),
            w.send("h0/dpo-a", "emergency.review", {"id": 1, "verdict": "approved"}),
        )[1],
        Code.UNAUTHORIZED,
        "DPO",
    ),
    "referral without the patient's consent": (
        lambda w: w.send(
            "h0/dr-a",
            "referral.create",
            {
                "pid": w.pid,
                "to": "h1",
                "date_ms": w.now + DAY_MS,
                "categories": ["labs"],
                "procedure_hash": EVIDENCE,
            },
        ),
        Code.REFUSED,
        "consent",
    ),
    "release under the cohort minimum": (
        lambda w: _cohort(w, ["alice"]),
        Code.REFUSED,
        "cohort of 1 is under",
    ),
    "release with a withdrawn patient": (
        lambda w: _cohort(w, ["alice", "bob", "carol"], withdraw="bob"),
        Code.REFUSED,
        "withdrew",
    ),
    "release with a patient never enrolled": (
        lambda w: _release_of_strangers(w),
        Code.REFUSED,
        "not enrolled",
    ),
}


@pytest.mark.parametrize("name", list(TX_CASES))
def test_refused_txs(name: str) -> None:
    make, code, fragment = TX_CASES[name]
    result = make(World())
    assert result.code == code, result
    assert fragment in result.log, result.log


def test_a_release_of_an_enrolled_cohort_is_recorded_with_its_members_root() -> None:
    w = World()
    result = _cohort(w, ["alice", "bob", "carol"])
    assert result.ok, result
    (release,) = w.q("research/releases", {"study": "s1"})
    assert release["members"] == 3 and release["counts"] == {"patients": 3, "records": 10}
    assert len(release["members_root"]) == 32
    enrolment = w.q("research/enrolment", {"study": "s1", "pid": pid_of("bob")})
    assert enrolment["releases"] == [[1, "h0"]]


# -- properties ----------------------------------------------------------------------------

_WORLD: list[World] = []


def _shared_world() -> World:
    """One world with grants of every kind (built once: hypothesis calls the test many times)."""
    if not _WORLD:
        w = World()
        w.grant("org:h1")
        w.grant("practitioner:h2/dr-c", categories=["*"], end_ms=w.now + DAY_MS)
        w.open_emergency()
        w.refer(w.now + DAY_MS)
        w.study()
        w.ok("patient:alice", "research.enrol", {"study": "s1", "pid": w.pid})
        _WORLD.append(w)
    return _WORLD[0]


ACTORS = [*PRACTITIONERS, "h0", "h1", "h2", "patient:alice"]
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
requests = st.fixed_dictionaries(
    {
        "actor": st.one_of(st.sampled_from(ACTORS), st.binary(min_size=32, max_size=32)),
        "pid": st.one_of(st.just(pid_of("alice")), hex64, st.text(max_size=70)),
        "custodian": st.one_of(st.sampled_from(["h0", "h1", "h2"]), st.text(max_size=10)),
        "category": st.one_of(st.sampled_from(CATEGORIES), st.text(max_size=12)),
        "purpose": st.one_of(st.sampled_from(PURPOSES), st.text(max_size=10)),
        "study": st.one_of(st.none(), st.sampled_from(["s1", "nope"])),
        "offset": st.integers(min_value=-10 * DAY_MS, max_value=100 * DAY_MS),
    }
)


def _decide(w: World, r: dict[str, Any], state: StateView) -> Decision:
    actor = r["actor"]
    who = w.keys[actor].public_key if isinstance(actor, str) else actor
    meta: dict[str, Any] = {"custodian": r["custodian"], "category": r["category"]}
    if r["study"]:
        meta["study"] = r["study"]
    return authorize(state, who, r["pid"], meta, r["purpose"], w.now + r["offset"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_authorize_is_deterministic(r: dict[str, Any]) -> None:
    w = _shared_world()
    first = _decide(w, r, w.state)
    assert _decide(w, r, w.state) == first
    assert _decide(w, r, StateView(w.state)) == first  # through an overlay, as in a block
    assert first.allowed == bool(first.basis) and first.allowed != bool(first.reason)


_EMPTY: list[World] = []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_authorize_denies_by_default(r: dict[str, Any]) -> None:
    """With no consent, emergency, referral or enrolment, only a custodian reads its records."""
    if not _EMPTY:
        _EMPTY.append(World())
    w = _EMPTY[0]
    decision = _decide(w, r, w.state)
    actor = r["actor"]
    org = actor.split("/")[0] if isinstance(actor, str) else None
    own = org == r["custodian"] and r["purpose"] in ("treatment", "emergency")
    patient_self = actor == "patient:alice" and r["pid"] == w.pid
    if not (own or patient_self):
        assert not decision.allowed, (r, decision)


def test_a_named_record_must_match_the_index() -> None:
    w = World()
    assert w.auth("h0/dr-a", rid="r-labs").basis == "custodian"
    wrong = w.auth("h1/dr-b", custodian="h1", rid="r-labs")  # claims h1 holds h0's record
    assert wrong.reason.startswith("invalid request")
    assert w.auth("h0/dr-a", rid="r-nope").reason.startswith("invalid request")
