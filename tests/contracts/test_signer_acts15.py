"""Who may sign each act, session 15 (trust15): the acts still open to any key of a member.

- `access` v6: `access.log` only from the organisation key (its node's audit journal). v5
  took any active key of the hospital: a clinician's own key wrote reads, denials or
  exports that never were into the hospital's trail, "served by" it.
- `referral` v3: `referral.admit` from the organisation key or a care role (physician,
  nurse, emergency); `referral.cancel` from the organisation key or a physician. v2 took
  any key of that side: a researcher's, a DPO's, an admin's.

Each: a practitioner key refused (UNAUTHORIZED, naming the signer and the key needed,
nothing written), the organisation key accepted, and the earlier version's behaviour kept
for replay, until a vote.
"""

from __future__ import annotations

from typing import Any

import pytest

from medledger.contracts.access import log_body
from medledger.contracts.common import DAY_MS
from medledger.ledger.errors import Code
from tests.contracts.test_org_key_acts import _activate, _world_on
from tests.support.world import World

# -- access v6: access.log -------------------------------------------------------------------


def _entries(w: World) -> list[dict[str, Any]]:
    """A read of alice's labs by h0's physician that never happened, and a denial of her
    own portal: what a clinician's key would forge into h0's trail of her."""
    read = {
        "actor": "practitioner:h0/dr-a",
        "actor_org": "h0",
        "pid": w.pid,
        "action": "read",
        "purpose": "treatment",
        "outcome": "granted",
        "basis": "custodian",
        "rids": ["r-labs"],
    }
    denial = read | {
        "actor": f"patient:{w.pid}",
        "outcome": "denied",
        "basis": "",
        "reason": "no consent",
        "rids": [],
    }
    return [read, denial]


def _trail(w: World) -> list[dict[str, Any]]:
    trail: list[dict[str, Any]] = w.q("access/of_patient", {"pid": w.pid})
    return trail


def test_a_practitioner_key_cannot_write_its_hospitals_access_trail() -> None:
    w = World()
    version = w.q("governance/contracts", {})["access"]
    assert version == 6  # a new consortium starts on v6
    before = _trail(w)
    for who in ("h0/dr-a", "h0/dpo-a", "h0/res-a"):
        refused = w.send(who, "access.log", log_body(_entries(w), version))
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log.startswith(
            f"signer: practitioner {who} may not write its hospital's access trail"
        )
        assert "organisation key" in refused.log
        assert _trail(w) == before
    assert w.send("h0", "access.log", log_body(_entries(w), version)).ok
    written = _trail(w)[len(before) :]
    assert [(e["actor"], e["outcome"]) for e in written] == [
        ("practitioner:h0/dr-a", "granted"),
        (f"patient:{w.pid}", "denied"),
    ]
    assert {e["signer"] for e in written} == {"org:h0"}


def test_access_v5_replays_a_practitioners_trail_entries_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, access=5)
    before = len(_trail(w))
    assert w.send("h0/dr-a", "access.log", log_body(_entries(w), 5)).ok  # v5's reading
    written = _trail(w)[before:]
    assert {e["signer"] for e in written} == {"practitioner:h0/dr-a"}
    _activate(w, "access", 6)
    before = len(_trail(w))
    refused = w.send("h0/dr-a", "access.log", log_body(_entries(w), 6))
    assert refused.code == Code.UNAUTHORIZED and "h0/dr-a" in refused.log
    assert len(_trail(w)) == before
    assert w.send("h0", "access.log", log_body(_entries(w), 6)).ok
    assert len(_trail(w)) == before + 2


# -- referral v3: referral.admit and referral.cancel ----------------------------------------


def _status(w: World, referral: int) -> str:
    return str(w.q("referral/status", {"id": referral})["status"])


def test_only_a_care_role_or_the_organisation_key_admits_a_referral() -> None:
    """An admission creates h0's delivery obligation: h1's researcher, DPO or admin may not
    sign it; its nurse (a care role) and its organisation key may."""
    w = World()
    assert w.q("governance/contracts", {})["referral"] == 3  # a new consortium starts on v3
    w.refer(w.now + DAY_MS)
    for who in ("h1/res-b", "h1/dpo-b", "h1/admin-b"):
        refused = w.send(who, "referral.admit", {"id": 1})
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log.startswith(f"signer: practitioner {who} may not admit a referral")
        assert "organisation key or one of the roles emergency, nurse, physician" in refused.log
        assert _status(w, 1) == "created"
    w.ok("h1/nurse-b", "referral.admit", {"id": 1})
    assert _status(w, 1) == "admitted"
    w.refer(w.now + DAY_MS)
    w.ok("h1", "referral.admit", {"id": 2})
    assert _status(w, 2) == "admitted"


def test_only_a_physician_or_the_organisation_key_cancels_a_referral() -> None:
    """Cancelling ends alice's referral and h1's reading window: the undoing of what a
    physician ordered. A nurse's, a DPO's, a researcher's key of either side may not."""
    w = World()
    w.refer(w.now + DAY_MS)
    for who in ("h1/nurse-b", "h1/dpo-b", "h0/res-a", "h0/dpo-a"):
        refused = w.send(who, "referral.cancel", {"id": 1, "reason": "rescheduled"})
        assert refused.code == Code.UNAUTHORIZED, who
        assert refused.log.startswith(f"signer: practitioner {who} may not cancel a referral")
        assert "organisation key or one of the roles physician" in refused.log
        assert _status(w, 1) == "created"
    w.ok("h1/dr-b", "referral.cancel", {"id": 1, "reason": "rescheduled"})
    assert w.q("referral/status", {"id": 1})["cancelled"]["by"] == "h1"
    w.refer(w.now + DAY_MS)
    w.ok("h0", "referral.cancel", {"id": 2})
    assert _status(w, 2) == "cancelled"


def test_referral_v2_replays_an_admission_and_a_cancellation_by_any_role_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, referral=2)
    w.refer(w.now + DAY_MS)
    w.refer(w.now + DAY_MS)
    assert w.send("h1/res-b", "referral.admit", {"id": 1}).ok  # v2's reading
    assert w.send("h0/dpo-a", "referral.cancel", {"id": 2}).ok
    assert (_status(w, 1), _status(w, 2)) == ("admitted", "cancelled")
    _activate(w, "referral", 3)
    w.refer(w.now + DAY_MS)
    refused = w.send("h1/res-b", "referral.admit", {"id": 3})
    assert refused.code == Code.UNAUTHORIZED and "h1/res-b" in refused.log
    refused = w.send("h0/dpo-a", "referral.cancel", {"id": 3})
    assert refused.code == Code.UNAUTHORIZED and "h0/dpo-a" in refused.log
    assert _status(w, 3) == "created"
    w.ok("h1", "referral.admit", {"id": 3})
