"""The patient's metadata epoch: the count of their entitlements that have ended.

Custodians seal index metadata under keys of this epoch (indexing.py); once an entitlement
ends the epoch moves on, so the hospital that lost it cannot open what is registered after.
"""

from __future__ import annotations

from medledger.contracts.authorize import meta_epoch
from medledger.contracts.common import DAY_MS
from tests.support.world import HOUR, World


def test_each_ended_entitlement_moves_the_epoch_on_and_it_never_goes_back() -> None:
    w = World()
    seen = [meta_epoch(w.state, w.pid, w.now)]
    assert seen == [0]

    cid = w.grant("org:h1")  # a consent running: nothing has ended
    assert meta_epoch(w.state, w.pid, w.now) == 0
    w.ok("patient:alice", "consent.revoke", {"id": cid})
    seen.append(meta_epoch(w.state, w.pid, w.now))  # revoked

    w.grant("org:h2", end_ms=w.now + 10 * 1000)
    w.block(at=w.now + 60 * 1000)
    seen.append(meta_epoch(w.state, w.pid, w.now))  # expired, by time alone

    w.study()
    w.ok("patient:alice", "research.enrol", {"study": "s1", "pid": w.pid})
    w.ok("patient:alice", "research.withdraw", {"study": "s1", "pid": w.pid})
    seen.append(meta_epoch(w.state, w.pid, w.now))  # withdrawn

    w.open_emergency(duration_ms=HOUR)
    w.block(at=w.now + 2 * HOUR)
    seen.append(meta_epoch(w.state, w.pid, w.now))  # the opening has ended

    w.refer(w.now + DAY_MS)
    w.block(at=w.now + 40 * DAY_MS)
    seen.append(meta_epoch(w.state, w.pid, w.now))  # past the referral's window

    assert seen == [0, 1, 2, 3, 4, 5]
    # The same state and time give the same epoch (every replica agrees); another patient's
    # entitlements do not count.
    assert meta_epoch(w.state, w.pid, w.now) == 5
    assert w.q("authorize/epoch", {"pid": w.pid, "at_ms": w.now}) == 5
    assert meta_epoch(w.state, "0" * 64, w.now) == 0
