"""Break-the-glass: notifications, review, expiry at block time, overuse flags."""

from __future__ import annotations

import hashlib

from medledger.contracts.common import DAY_MS
from medledger.ledger.errors import Code
from tests.support.world import HOUR, JUSTIFICATION, World


def _events(result, kind):
    return [dict(e.attrs) for e in result.events if e.type == kind]


def test_opening_notifies_the_patient_and_each_custodian() -> None:
    w = World()
    w.records("h2", w.pid, ["r-h2"])
    result = w.open_emergency()
    (opened,) = _events(result, "emergency.opened")
    assert opened["pid"] == w.pid and opened["org"] == "h1" and opened["practitioner"] == "er-b"
    assert int(opened["expires"]) == w.now + DAY_MS  # 24 h by default
    assert sorted(e["custodian"] for e in _events(result, "emergency.notify")) == ["h0", "h2"]
    opening = w.q("emergency/get", {"id": 1})
    assert opening["status"] == "open" and opening["reason_hash"] == JUSTIFICATION
    assert "reason" not in opening and "reason" not in opened  # no clinical fact on the chain
    assert [o["id"] for o in w.q("emergency/list", {"org": "h2"})] == [1]  # h2's DPO sees it


def test_a_justification_is_mandatory_and_its_reason_code_stays_off_chain() -> None:
    """Issue 11 item 6: the reason code ("unconscious") sat in clear next to the pid."""
    w = World()
    refused = w.send("h1/er-b", "emergency.open", {"pid": w.pid})
    assert refused.code == Code.INVALID_BODY and "reason_hash" in refused.log
    note = hashlib.sha256(b"written justification").digest()
    in_clear = w.send("h1/er-b", "emergency.open", {"pid": w.pid, "reason": "unconscious"})
    assert in_clear.code == Code.INVALID_BODY and "field reason:" in in_clear.log
    both = {"pid": w.pid, "reason": "other", "reason_hash": note}
    assert w.send("h1/er-b", "emergency.open", both).code == Code.INVALID_BODY
    w.ok("h1/er-b", "emergency.open", {"pid": w.pid, "reason_hash": note})


def test_expiry_is_emitted_by_end_block_at_block_time() -> None:
    w = World()
    w.open_emergency(duration_ms=HOUR)
    opened = w.now
    assert not any(e.type == "emergency.expired" for e in w.block(at=opened + HOUR - 1).events)
    out = w.block(at=opened + HOUR)
    assert [e.type for e in out.events] == ["emergency.expired"]
    assert w.q("emergency/get", {"id": 1})["status"] == "expired"
    assert not w.auth("h1/er-b", purpose="emergency").allowed
    assert w.auth("h1/er-b", purpose="emergency", at=opened + 10).basis == "emergency:1"


def test_review_by_the_dpo_approves_or_flags_and_a_flag_ends_access() -> None:
    w = World()
    w.open_emergency()
    w.open_emergency()
    own = w.send("h1/er-b", "emergency.review", {"id": 1, "verdict": "approved"})
    assert own.code == Code.UNAUTHORIZED  # not a DPO (and it is their own)
    w.ok("h1/dpo-b", "emergency.review", {"id": 1, "verdict": "approved"})
    assert w.q("emergency/get", {"id": 1})["review"]["verdict"] == "approved"
    again = w.send("h1/dpo-b", "emergency.review", {"id": 1, "verdict": "flagged"})
    assert again.code == Code.CONFLICT
    assert w.auth("h1/er-b", purpose="emergency").allowed  # opening 1 or 2 still runs
    result = w.ok("h1/dpo-b", "emergency.review", {"id": 2, "verdict": "flagged"})
    assert _events(result, "emergency.flagged")[0]["id"] == "2"
    assert w.q("emergency/get", {"id": 2})["expires"] == w.now
    assert w.auth("h1/er-b", purpose="emergency").basis == "emergency:1"


def test_overuse_above_the_threshold_in_thirty_days_is_flagged() -> None:
    w = World()
    for _ in range(5):
        result = w.open_emergency()
        assert not _events(result, "emergency.overuse")
    result = w.open_emergency()  # the sixth within 30 days: above the default threshold of 5
    assert _events(result, "emergency.overuse") == [
        {"org": "h1", "practitioner": "er-b", "count": "6"}
    ]
    (flag,) = w.q("emergency/flags", {"org": "h1"})
    assert flag["practitioner"] == "er-b" and flag["count"] == 6
    # Thirty days later the window has slid past them: no new flag.
    w.block(at=w.now + 31 * DAY_MS)
    assert not _events(w.open_emergency(), "emergency.overuse")


def test_the_threshold_and_durations_come_from_policy_parameters() -> None:
    w = World()
    w.vote_policy("set_policy_param", {"name": "emergency_threshold", "value": 0})
    w.vote_policy("set_policy_param", {"name": "emergency_max_ms", "value": 2 * HOUR})
    result = w.open_emergency()  # the default (24 h) is capped by the new maximum
    assert int(_events(result, "emergency.opened")[0]["expires"]) == w.now + 2 * HOUR
    assert _events(result, "emergency.overuse")
    too_long = w.send(
        "h1/er-b",
        "emergency.open",
        {"pid": w.pid, "reason_hash": JUSTIFICATION, "duration_ms": 3 * HOUR},
    )
    assert too_long.code == Code.INVALID_BODY
