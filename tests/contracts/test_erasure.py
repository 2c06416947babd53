"""Erasure: holders found from the chain, retention refusals, attestations, overdue flags."""

from __future__ import annotations

import hashlib

import pytest

from medledger.contracts.common import DAY_MS
from medledger.contracts.erasure import add_years, iso_date
from medledger.contracts.research import member_token
from medledger.ledger.errors import Code
from tests.contracts.test_org_key_acts import _world_on
from tests.support.ledger import T0
from tests.support.world import World, pid_of

RECEIPT = hashlib.sha256(b"vault erasure receipt").digest()


def _holders(status):
    return {o["holder"]: o for o in status["obligations"]}


def test_every_holder_is_found_and_the_custodian_is_refused_for_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # research v3: h2, holding nothing of alice, releases her data (v4 refuses it:
    # test_release15); its erasure obligation for what a release says it holds is kept here.
    w = _world_on(monkeypatch, research=3)
    w.grant("org:h1")  # h1 may have prefetched copies
    c = w.commitments
    w.refer(w.now + DAY_MS, rids=["r-labs"])
    w.ok("h1", "referral.admit", {"id": 1})
    w.ok("h0", "referral.deliver", {"id": 1, "rids": ["r-labs"], "commitments": [c["r-labs"]]})
    for name in ("bob", "carol"):
        w.bind(name)
    w.study("s1")
    w.grant("study:s1", purpose="research")
    for name in ("alice", "bob", "carol"):
        w.ok(f"patient:{name}", "research.enrol", {"study": "s1", "pid": pid_of(name)})
    w.ok(
        "h2",
        "research.release",
        {
            "study": "s1",
            "dataset_hash": RECEIPT,
            "members": [member_token("s1", pid_of(n)) for n in ("alice", "bob", "carol")],
            "counts": {"patients": 3},
        },
    )
    result = w.ok("patient:alice", "erasure.request", {"pid": w.pid})
    notices = {
        dict(e.attrs)["holder"]: dict(e.attrs)["action"]
        for e in result.events
        if e.type == "erasure.notify"
    }
    assert notices == {"h0": "retain", "h1": "erase", "h2": "erase"}
    status = w.q("erasure/status", {"pid": w.pid})
    holders = _holders(status)
    custody = holders["h0"]["custody"]
    until = iso_date(add_years(T0, 20))
    assert custody["status"] == "refused" and custody["reason"] == f"retention until {until}"
    # h0 also received no copy; h1 holds copies by consent, referral and as the study sponsor.
    assert holders["h0"]["copies"] is None and holders["h0"]["status"] == "refused"
    assert holders["h1"]["copies"]["sources"] == [
        "consent:1",
        "consent:2",
        "referral:1",
        "study:s1",
    ]
    assert holders["h2"]["copies"]["sources"] == ["release:s1/1"]
    assert status["status"] == "open"

    refused = w.send("h0", "erasure.attest", {"request": 1, "digest": RECEIPT})
    assert refused.code == Code.REFUSED and f"retention until {until}" in refused.log
    # erasure v2: the organisation key attests (its DPO's key no longer does: test_org_key_acts)
    w.ok("h1", "erasure.attest", {"request": 1, "digest": RECEIPT, "records": 1})
    assert w.send("h1", "erasure.attest", {"request": 1, "digest": RECEIPT}).code == Code.CONFLICT
    # h2 references its records.shredded entry instead of a digest.
    w.ok("h2", "records.shredded", {"pid": w.pid, "digest": RECEIPT, "records": 0, "copies": 3})
    result = w.ok("h2", "erasure.attest", {"request": 1})
    assert "erasure.completed" in [e.type for e in result.events]
    status = w.q("erasure/status", {"id": 1})
    assert status["status"] == "done"
    assert _holders(status)["h2"]["attestation"]["digest"] == RECEIPT


def test_unattested_obligations_are_flagged_overdue_at_the_deadline() -> None:
    w = World()
    w.grant("org:h1")
    w.ok("h0", "erasure.request", {"pid": w.pid, "evidence_hash": RECEIPT, "taken_by": "dpo-a"})
    # Filed on the patient's behalf: it opens after on_behalf_delay_ms, the deadline runs
    # from then.
    effective = w.q("erasure/pending", {"pid": w.pid})["effective_ms"]
    w.block(at=effective)
    deadline = w.q("erasure/status", {"id": 1})["deadline"]
    assert deadline == effective + 30 * DAY_MS
    out = w.block(at=deadline)
    assert [(e.type, dict(e.attrs)["holder"]) for e in out.events] == [("erasure.overdue", "h1")]
    status = w.q("erasure/status", {"id": 1})
    assert status["status"] == "overdue" and _holders(status)["h1"]["status"] == "overdue"
    w.ok("h1", "erasure.attest", {"request": 1, "digest": RECEIPT})
    status = w.q("erasure/status", {"id": 1})
    assert status["status"] == "done" and _holders(status)["h1"]["attestation"]["late"] is True


def test_records_past_retention_are_erased_by_their_custodian_too() -> None:
    w = World()
    later = add_years(w.now, 21)
    w.block(at=later)
    w.ok("patient:alice", "erasure.request", {"pid": w.pid})
    h0 = _holders(w.q("erasure/status", {"id": 1}))["h0"]
    assert h0["custody"]["status"] == "pending"
    w.ok("h0", "erasure.attest", {"request": 1, "digest": RECEIPT, "records": 3})
    assert w.q("erasure/status", {"id": 1})["status"] == "done"


def test_after_a_request_no_new_consent_or_enrolment_and_no_second_request() -> None:
    w = World()
    w.study()
    w.ok("patient:alice", "erasure.request", {"pid": w.pid})
    again = w.send("patient:alice", "erasure.request", {"pid": w.pid})
    assert again.code == Code.CONFLICT
    body = {
        "pid": w.pid,
        "grantee": "org:h1",
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
    }
    assert w.send("patient:alice", "consent.grant", body).code == Code.REFUSED
    enrol = w.send("patient:alice", "research.enrol", {"study": "s1", "pid": w.pid})
    assert enrol.code == Code.REFUSED


def test_iso_dates_and_leap_days() -> None:
    assert iso_date(0) == "1970-01-01"
    feb29 = (11016) * DAY_MS  # 2000-02-29
    assert iso_date(feb29) == "2000-02-29"
    assert iso_date(add_years(feb29, 20)) == "2020-02-29"
    assert iso_date(add_years(feb29, 1)) == "2001-02-28"
