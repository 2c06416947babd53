"""Review 12c: a DPO's approval seen at CheckTx (`StudyAgent._checked`, ahead18), attacked.

The agent keeps an approval CheckTx accepted as `_pending` until its tx is in a block or its
signer's nonce passes it (`_settle_pending`). A tx that leaves the mempool without either
(its signer's practitioner key revoked in a block before it: the carry-over runs it again and
drops it, and a revoked key never signs again) stays pending for ever: the hospital keeps
counting its DPO's decision that never counted and evaluates its patients for the query.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

from medledger.ledger.app import Application
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import Event, TxResult
from medledger.research.agent import PENDING_MAX_BLOCKS, StudyAgent
from medledger.research.answer import preparable
from tests.support.ledger import make_net, register_body, run_block


class _Engine:
    """The chain as the agent asks it (`queries`), from an in-process replica."""

    def __init__(self, app: Application) -> None:
        self.app = app

    def query(self, path: str, args: dict[str, Any]) -> Any:
        return self.app.query_obj(path, args)


def _agent(app: Application, org: str) -> StudyAgent:
    """Only the state `_checked` and `_settle_pending` use (no vault, no exchange)."""
    agent = StudyAgent.__new__(StudyAgent)
    agent.node = cast(
        Any, SimpleNamespace(engine=_Engine(app), app=app, config=SimpleNamespace(org=org))
    )
    agent.org = org
    agent.ahead = True
    agent._pending = {}
    agent._lock = threading.Lock()
    agent._wake = threading.Event()
    return agent


def test_an_approval_dropped_from_the_mempool_after_its_dpo_was_revoked_is_forgotten() -> None:
    net = make_net()
    app = net.app()
    h0 = net.orgs["h0"]
    dpo = SigningKey(bytes([7, 7]) * 16)
    run_block(
        app, [net.tx(h0, "identity.register", register_body("dpo-a", dpo, ["dpo"]))], net.solo
    )
    agent = _agent(app, "h0")
    # dpo-a approves query q-1; CheckTx accepts it (as the contract would: event and all).
    approval = net.tx(dpo, "research.query_approve", {"query": "q-1", "role": "custodian"}, 1)
    accepted = TxResult(
        0,
        events=(
            Event("study.query_approved", (("query", "q-1"), ("role", "custodian"), ("org", "h0"))),
        ),
    )
    agent._checked(approval, accepted)
    assert agent._settle_pending() == {"q-1": frozenset({"custodian"})}
    # h0 revokes dpo-a (a lost phone); the block does not hold the approval, and the
    # mempool no longer does either: its signer is not a practitioner of h0 any more.
    run_block(app, [net.tx(h0, "identity.revoke", {"practitioner": "dpo-a"})], net.solo)
    assert app.check_tx(net.tx(dpo, "identity.revoke", {"practitioner": "x"}, 2)).ok is False
    run_block(app, [], net.solo)
    # The approval can never commit: this hospital must not act on it any more.
    pending = agent._settle_pending()
    record = {
        "status": "submitted",
        "sponsor": "h1",
        "approvals": [{"org": "h1", "role": "ethics"}],
        "custodians_approve": True,
    }
    assert preparable(record, "h0", pending.get("q-1", frozenset())) is False, pending


def test_an_approval_still_in_no_block_after_a_few_blocks_is_not_acted_on_ahead() -> None:
    """Its DPO is still active and never signs again, but the tx is in no block (a mempool
    that lost it, a proposer leaving it out): after `PENDING_MAX_BLOCKS` it is forgotten."""
    net = make_net()
    app = net.app()
    h0 = net.orgs["h0"]
    dpo = SigningKey(bytes([8, 8]) * 16)
    run_block(
        app, [net.tx(h0, "identity.register", register_body("dpo-b", dpo, ["dpo"]))], net.solo
    )
    agent = _agent(app, "h0")
    approval = net.tx(dpo, "research.query_approve", {"query": "q-2", "role": "custodian"}, 1)
    accepted = TxResult(
        0,
        events=(
            Event("study.query_approved", (("query", "q-2"), ("role", "custodian"), ("org", "h0"))),
        ),
    )
    agent._checked(approval, accepted)
    for _ in range(PENDING_MAX_BLOCKS):
        run_block(app, [], net.solo)
        assert agent._settle_pending() == {"q-2": frozenset({"custodian"})}
    run_block(app, [], net.solo)
    assert agent._settle_pending() == {}
