"""Governance: two thirds of the current members decide; proposals expire."""

from __future__ import annotations

from medledger.contracts.common import DAY_MS
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.ledger import T0, make_net, run_block


def _admit(net, org: str = "h9", **extra):
    key = SigningKey.generate()
    args = {"org": org, "name": org.upper(), "key": key.public_key, **extra}
    return net.tx(
        net.orgs["h0"], "governance.propose", {"action": "admit_member", "args": args}
    ), key


def _members(app) -> list[str]:
    return [m["org"] for m in app.query_obj("governance/members", {})]


def test_admission_needs_two_thirds_of_four_members() -> None:
    net = make_net(4)
    app = net.app()
    propose, _ = _admit(net)
    run_block(app, [propose], net.solo)
    run_block(
        app, [net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})], net.solo
    )
    assert "h9" not in _members(app)  # 2 of 4 is not enough
    out = run_block(
        app, [net.tx(net.orgs["h2"], "governance.vote", {"proposal": 1, "approve": True})], net.solo
    )
    assert "h9" in _members(app)  # 3 of 4 >= 2/3
    assert {e.type for e in out.results[0].events} >= {"member.admitted", "proposal.executed"}
    assert app.query_obj("governance/proposal", {"id": 1})["status"] == "executed"


def test_a_new_member_can_then_act_and_a_removed_one_cannot() -> None:
    net = make_net(3)
    app = net.app()
    propose, key9 = _admit(net)
    run_block(
        app,
        [propose, net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})],
        net.solo,
    )
    body = {"practitioner": "dr-new", "key": SigningKey.generate().public_key, "roles": ["nurse"]}
    net.orgs["h9"] = key9
    assert run_block(app, [net.tx(key9, "identity.register", body)], net.solo).results[0].ok
    remove = net.tx(
        net.orgs["h0"], "governance.propose", {"action": "remove_member", "args": {"org": "h9"}}
    )
    votes = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": 2, "approve": True})
        for o in ("h1", "h2")
    ]
    run_block(app, [remove, *votes], net.solo)
    assert "h9" not in _members(app)
    body2 = {"practitioner": "dr-late", "key": SigningKey.generate().public_key, "roles": ["nurse"]}
    assert app.check_tx(net.tx(key9, "identity.register", body2)).code == Code.UNAUTHORIZED


def test_more_than_a_third_against_rejects_the_proposal() -> None:
    net = make_net(4)
    app = net.app()
    propose, _ = _admit(net)
    no1 = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": False})
    no2 = net.tx(net.orgs["h2"], "governance.vote", {"proposal": 1, "approve": False})
    run_block(app, [propose, no1, no2], net.solo)
    assert app.query_obj("governance/proposal", {"id": 1})["status"] == "rejected"
    late = net.tx(net.orgs["h3"], "governance.vote", {"proposal": 1, "approve": True})
    assert app.check_tx(late).code == Code.CONFLICT


def test_a_proposal_expires() -> None:
    net = make_net(4)
    app = net.app()
    propose, _ = _admit(net)
    run_block(app, [propose], net.solo, time_ms=T0 + 1000)
    late = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    out = run_block(app, [late], net.solo, time_ms=T0 + 1000 + 8 * DAY_MS)
    assert out.results[0].code == Code.EXPIRED


def test_admitting_a_validator_returns_a_validator_update() -> None:
    net = make_net(3)
    app = net.app()
    vkey = SigningKey.generate().public_key
    propose, _ = _admit(net, validator_key=vkey, power=10)
    vote = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    out = run_block(app, [propose, vote], net.solo)
    assert [(u.pub_key, u.power) for u in out.validator_updates] == [(vkey, 10)]
    power = net.tx(
        net.orgs["h0"],
        "governance.propose",
        {"action": "set_power", "args": {"org": "h9", "power": 0}},
    )
    votes = [
        net.tx(net.orgs[o], "governance.vote", {"proposal": 2, "approve": True})
        for o in ("h1", "h2")
    ]
    out = run_block(app, [power, *votes], net.solo)  # 3 of the now 4 members
    assert [(u.pub_key, u.power) for u in out.validator_updates] == [(vkey, 0)]


def test_invalid_proposals_are_refused_before_anyone_votes() -> None:
    net = make_net(3)
    app = net.app()
    cases = [
        (
            {"action": "admit_member", "args": {"org": "h1", "name": "x", "key": bytes(32)}},
            Code.CONFLICT,
        ),
        (
            {"action": "admit_member", "args": {"org": "Bad/Id", "name": "x", "key": bytes(32)}},
            Code.INVALID_BODY,
        ),
        ({"action": "remove_member", "args": {"org": "nobody"}}, Code.NOT_FOUND),
        ({"action": "launch_rockets", "args": {}}, Code.INVALID_BODY),
        (
            {"action": "activate_contract", "args": {"name": "identity", "version": 9}},
            Code.NOT_FOUND,
        ),
        (
            {"action": "set_param", "args": {"name": "proposal_ttl_ms", "value": -1}},
            Code.INVALID_BODY,
        ),
    ]
    for body, code in cases:
        result = app.check_tx(net.tx(net.orgs["h0"], "governance.propose", body))
        assert result.code == code, (body, result)
