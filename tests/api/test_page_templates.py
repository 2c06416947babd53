"""The page templates escape every value: what comes from the chain (an actor, a study id, a
validator's name) or a form is text, never markup."""

from __future__ import annotations

from medledger.web.render import templates

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_a_script_from_the_chain_renders_escaped_in_the_portal() -> None:
    from medledger.web.trail import grouped

    entry = {
        "time": 0,
        "actor": SCRIPT,
        "actor_org": "org-a",
        "request_signer": "",
        "signer": SCRIPT,
        "custodian": "org-a",
        "action": "read",
        "purpose": "treatment",
        "outcome": "granted",
        "basis": "consent",
        "reason": "",
        "tx": "ab" * 32,
        "height": 3,
    }
    (access,) = grouped([entry], {}, "f" * 64, {})
    study = {
        "id": SCRIPT,
        "title": "",
        "ethics_ref": "ETH-1",
        "categories": ["*"],
        "data": ["all my records"],
        "enrolled": False,
        "action": "enrol",
    }
    sections = {
        "consents": [],
        "requests": [],
        "studies": [study],
        "erasure": None,
        "waiting": None,
        "hours": 72,
        "members": [{"org": "org-b", "name": SCRIPT}],
        "custodians": [],
        "acts": [],
        "rebind": None,
    }
    html = templates.get_template("portal.html").render(
        title="My health records",
        hospital="Hospital A",
        csrf="c" * 32,
        pid="f" * 64,
        records=[],
        sealed=[],
        accesses=[access],
        sections=sections,
        categories={"*": "all my records"},
        hospitals={},
        trail_orgs=[],
        types={},
    )
    assert SCRIPT not in html
    assert f"<td>{ESCAPED}</td>" in html  # the actor and the study id, as text
    assert f'title="{ESCAPED}"' in html  # the signer, inside an attribute
    assert f'action="/portal/study/{ESCAPED}/enrol"' in html
    assert html.count('name="csrf"') == html.count('method="post"')  # every POST form


def test_a_script_in_a_validator_name_or_tx_kind_renders_escaped_in_the_explorer() -> None:
    html = templates.get_template("explorer.html").render(
        title="Network explorer",
        hospital=SCRIPT,
        csrf="",
        engine="solo",
        top=1,
        blocks=[{"height": 1, "time": 0, "txs": 1, "kinds": SCRIPT, "app_hash": "00" * 8}],
        validators=[{"org": "org-a", "name": SCRIPT, "power": 10, "key": "00" * 8, "health": None}],
    )
    assert SCRIPT not in html
    assert html.count(ESCAPED) == 3  # the hospital in the header, the name and the kind
    assert 'name="csrf"' not in html  # nobody signed in: no token to write


def test_the_explorer_shows_each_validators_voting_power_on_cometbft() -> None:
    html = templates.get_template("explorer.html").render(
        title="Network explorer",
        hospital="Hospital A",
        csrf="",
        engine="cometbft",
        top=1,
        blocks=[],
        validators=[
            {"org": "org-a", "name": "A", "power": 10, "key": "00" * 8, "health": None},
            {"org": "org-b", "name": "B", "power": 0, "key": "11" * 8, "health": None},
        ],
    )
    assert "voting power" in html and "the solo engine" not in html
    assert "<td>10</td>" in html
    assert '0 <span class="muted">(not a validator)</span>' in html
