"""Cedar policies on the chain: set by governance, checked at proposal, cached by hash."""

from __future__ import annotations

from medledger.contracts import policies
from medledger.contracts.categories import CATEGORIES
from medledger.ledger.errors import Code
from medledger.ledger.store import StateView
from tests.support.world import World


def _propose(w: World, action: str, args: dict[str, object]):
    return w.send("h0", "governance.propose", {"action": action, "args": args})


def test_genesis_has_the_default_policy_and_parameters() -> None:
    w = World()
    docs = w.q("policies/list", {})
    assert [d["id"] for d in docs] == ["defaults"]
    assert "no-research-on-documents" in docs[0]["text"]
    assert w.q("policies/params", {}) == policies.DEFAULT_PARAMS


def test_invalid_policies_are_refused_before_anyone_votes() -> None:
    w = World()
    cases = [
        ("permit(", "does not parse"),
        ("forbid(principal, action, resource) when { context.nope == 1 };", "schema"),
        ("permit(principal == ?principal, action, resource);", "templates"),
        ("// nothing", "no policy"),
    ]
    for text, fragment in cases:
        result = _propose(w, "set_policy", {"id": "bad", "text": text})
        assert result.code == Code.INVALID_BODY and fragment in result.log, (text, result)
    result = _propose(
        w, "set_policy", {"id": "Bad/Id", "text": "forbid(principal, action, resource);"}
    )
    assert result.code == Code.INVALID_BODY
    assert _propose(w, "remove_policy", {"id": "nope"}).code == Code.NOT_FOUND
    assert _propose(w, "set_policy_param", {"name": "nope", "value": 1}).code == Code.INVALID_BODY
    zero = _propose(w, "set_policy_param", {"name": "emergency_max_ms", "value": 0})
    assert zero.code == Code.INVALID_BODY


def test_a_voted_policy_applies_and_removing_it_restores_access() -> None:
    w = World()
    w.grant("org:h1", categories=["*"])
    assert w.auth("h1/nurse-b", category="imaging").allowed
    text = (
        "// Nurses of other hospitals do not read imaging.\n"
        '@id("no-remote-imaging-for-nurses")\n'
        'forbid(principal, action, resource == Category::"imaging")\n'
        '  when { context.roles.contains("nurse") && !context.own };\n'
    )
    proposal = _propose(w, "set_policy", {"id": "imaging", "text": text})
    assert proposal.ok
    assert w.auth("h1/nurse-b", category="imaging").allowed  # not yet: one vote of three
    w.ok("h1", "governance.vote", {"proposal": 1, "approve": True})
    denied = w.auth("h1/nurse-b", category="imaging")
    assert denied.reason == "policy forbid imaging/no-remote-imaging-for-nurses"
    assert w.auth("h1/dr-b", category="imaging").allowed
    assert w.auth("h1/nurse-b", category="labs").allowed
    w.vote_policy("remove_policy", {"id": "imaging"})
    assert w.auth("h1/nurse-b", category="imaging").allowed


def test_compiled_sets_are_cached_by_hash() -> None:
    w = World()
    state = StateView(w.app.store)
    first = policies.compiled(state)
    assert policies.compiled(state) is first
    policies._compiled.clear()
    again = policies.compiled(state)
    assert again is not first and again.names == first.names


def test_policy_categories_match_the_vocabulary() -> None:
    # Every category is a valid resource in the schema's sense (no validation error).
    for category in CATEGORIES:
        text = f'forbid(principal, action, resource == Category::"{category}");'
        policies.check_policy_text(text)
