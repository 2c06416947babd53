"""Review of session 8's study queries (issue 18): who approves. The ethics approval attests
an ethics committee's decision and a custodian's approval is its DPO's; the contract took
the role `dpo`, which a hospital's organisation key holds along with every other role, so the
node's operator (`study query approve` without `--as`) approved its own researcher's query
for the ethics committee, with no DPO named on the chain."""

from __future__ import annotations

from medledger.ledger.errors import Code
from tests.contracts.test_study_queries import _approve, _submit, _world


def test_an_organisation_key_approves_nothing_a_dpo_must_approve() -> None:
    w = _world()
    assert _submit(w).ok  # by h1's researcher res-b
    for org, role in (("h1", "ethics"), ("h0", "custodian")):
        refused = _approve(w, org, role)
        assert refused.code == Code.UNAUTHORIZED, (org, refused)
        assert "a DPO's practitioner key" in refused.log
    assert w.q("research/query", {"query": "s1/q0001"})["approvals"] == []
    # The DPOs themselves still approve, each named on the chain.
    assert _approve(w, "h1/dpo-b", "ethics").ok
    assert _approve(w, "h0/dpo-a").ok
    approvals = w.q("research/query", {"query": "s1/q0001"})["approvals"]
    assert [(a["org"], a["by"]) for a in approvals] == [("h1", "dpo-b"), ("h0", "dpo-a")]
