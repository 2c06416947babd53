"""`access` v2: a tx's entries written once per patient, re-sends known by the serving
hospital's journal sequence, entries by column; the trail read over both layouts after a
consortium activates v2 by vote."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from medledger.contracts import access
from medledger.contracts.access import _entries_of, _fast_entries, log_body
from medledger.ledger.app import Application
from medledger.ledger.errors import Code, TxError
from medledger.ledger.keys import SigningKey
from tests.support.access import PID, _entry
from tests.support.ledger import ACCESS_VERSION, Net, make_net, run_block

OTHER = "cd" * 32
DR_B = SigningKey(b"\x07" * 32)  # h0's practitioner dr-b


def _local(**over: Any) -> dict[str, Any]:
    """An entry of h0's own practitioner reading at h0 (no signed request)."""
    return _entry(
        **{"actor": "practitioner:h0/dr-b", "actor_org": "h0", "basis": "custodian", **over}
    )


def _v2_net() -> tuple[Net, Application]:
    before = ACCESS_VERSION[0]
    ACCESS_VERSION[0] = 2  # new consortia start on the newest (v3: `to`, test_access_v3.py)
    try:
        net = make_net()
    finally:
        ACCESS_VERSION[0] = before
    app = net.app()
    assert app.query_obj("governance/contracts", {})["access"] >= 2  # new consortia: newest
    body = {"practitioner": "dr-b", "key": DR_B.public_key, "roles": ["nurse"]}
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "identity.register", body)], net.solo).results[0].ok
    )
    return net, app


def _log(net: Net, app: Application, entries: list[dict[str, Any]], need: int = 0) -> Any:
    tx = net.tx(net.orgs["h0"], "access.log", log_body(entries, 2, need))
    return run_block(app, [tx], net.solo).results[0]


def _keys(app: Application, prefix: str) -> list[str]:
    with app.read_view() as view:
        return [k for k, _ in view.scan(prefix)]


def test_a_tx_writes_one_row_per_patient_and_one_for_its_custodian() -> None:
    net, app = _v2_net()
    entries = [_local(seq=1), _local(seq=2, rids=["r3"]), _local(seq=3, pid=OTHER)]
    assert _log(net, app, entries).ok
    assert len(_keys(app, f"acc/ptx/{PID}/")) == 1 and len(_keys(app, f"acc/ptx/{OTHER}/")) == 1
    assert len(_keys(app, "acc/otx/h0/")) == 1
    assert _keys(app, "acc/id/") == [] and _keys(app, "acc/pid/") == []  # no row per entry
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [(e["n"], e["rids"], e["seq"], e["custodian"]) for e in trail] == [
        (0, ["r1", "r2"], 1, "h0"),
        (1, ["r3"], 2, "h0"),
    ]
    assert trail[0]["signer"] == "org:h0" and trail[0]["height"] == app.height
    mine = app.query_obj("access/by_custodian", {"org": "h0"})
    assert sorted(e["pid"] for e in mine) == sorted([PID, PID, OTHER])
    assert app.query_obj("access/seq", {"key": net.orgs["h0"].public_key}) == 3


def test_an_entry_re_sent_at_or_below_the_mark_is_skipped_and_the_rest_lands() -> None:
    net, app = _v2_net()
    assert _log(net, app, [_local(seq=5), _local(seq=6)]).ok
    again = _log(net, app, [_local(seq=6), _local(seq=9, rids=["r9"])])  # 6 committed before
    assert again.ok
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [e["seq"] for e in trail] == [5, 6, 9]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_local(seq=4), _local(seq=4)], r"entries\[1\]\.seq: strictly increasing"),
        ([_local(seq=4), _local(seq=2)], r"entries\[1\]\.seq: strictly increasing"),
        ([_local(seq=-1)], r"entries\[0\]\.seq: strictly increasing"),
        ([_local(seq=3, id="ab" * 16)], r"entries\[0\]\.id: an entry with a seq has no id"),
    ],
)
def test_sequences_are_strictly_increasing_in_a_tx_and_never_beside_an_id(
    entries: list[dict[str, Any]], message: str
) -> None:
    net, app = _v2_net()
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", log_body(entries, 2)))
    assert result.code == Code.INVALID_BODY
    assert re.search(message, result.log), result.log


def test_a_tx_resting_on_an_entry_not_yet_on_the_chain_waits_and_writes_nothing() -> None:
    """Txs of one signer may commit out of order (a nonce may skip): the journal says which
    of its entries must be on the chain first, and the tx is refused as NOT_YET until then,
    so no tx lifts the mark over an entry that would then be skipped for good."""
    net, app = _v2_net()
    later = _log(net, app, [_local(seq=11)], need=10)
    assert later.code == Code.NOT_YET and "not on the chain yet" in later.log
    assert app.query_obj("access/of_patient", {"pid": PID}) == []
    assert _log(net, app, [_local(seq=9), _local(seq=10)]).ok  # the earlier tx lands
    assert _log(net, app, [_local(seq=11)], need=10).ok  # sent again: now it lands
    assert [e["seq"] for e in app.query_obj("access/of_patient", {"pid": PID})] == [9, 10, 11]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"columns": {**log_body([_local()], 2)["columns"], "pid": []}}, "one value per entry"),
        ({"columns": {**log_body([_local()], 2)["columns"], "colour": ["red"]}}, "'colour'"),
        ({"columns": {**log_body([_local()], 2)["columns"], "rids": "r1"}}, "rids: expected a"),
        ({"columns": {}}, "1..500 entries"),
        ({"entries": [_local()], "columns": log_body([_local()], 2)["columns"]}, "not both"),
    ],
)
def test_columns_are_lists_of_one_value_per_entry(body: dict[str, Any], message: str) -> None:
    net, app = _v2_net()
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", body))
    assert result.code == Code.INVALID_BODY and message in result.log, result.log


def _mutations(rng: random.Random) -> dict[str, Any]:
    """An entry, valid or broken in one field the way a buggy or hostile sender would."""
    entry = _local(seq=rng.randint(1, 5)) if rng.random() < 0.5 else _local()
    field, value = rng.choice(
        [
            ("action", rng.choice(["read", "search", "READ", "", "peek"])),
            ("outcome", rng.choice(["granted", "denied", "maybe"])),
            ("purpose", rng.choice(["treatment", "audit", "marketing"])),
            ("basis", rng.choice(["custodian", "consent:7", "consent:", "x" * 201, "", "t:1"])),
            ("reason", rng.choice(["", "no consent", "HIV positive"])),
            ("rids", rng.choice([[], ["ok-1"], ["Bad"], ["a\nb"], ["ok"] * 1001, [1], "r1"])),
            ("pid", rng.choice([PID, PID.upper(), PID[:-1], "zz" * 32, 7])),
            ("actor_org", rng.choice(["h0", "H0", "a/b", ""])),
            ("id", rng.choice(["ab" * 16, "AB" * 16, "ab", ""])),
            ("seq", rng.choice([0, 3, -2, True])),
            ("request", rng.choice([None, {}])),
        ]
    )
    entry[field] = value
    return entry


def test_the_column_checks_accept_exactly_what_the_entry_by_entry_checks_accept() -> None:
    """`_fast_entries` either gives the same entries as `_entries_of` (v1's checks, one entry
    at a time) or hands over to it: it never accepts what those refuse."""
    rng = random.Random(13)
    for _ in range(600):
        entries = [_mutations(rng) for _ in range(rng.randint(1, 4))]
        columns = log_body(entries, 2)["columns"]
        fast = _fast_entries(columns)
        try:
            slow = _entries_of(columns)
        except TxError:
            assert fast is None, entries
            continue
        assert fast is None or fast == slow, entries


def test_a_consortium_activates_v2_by_vote_and_reads_both_layouts_in_order() -> None:
    before = ACCESS_VERSION[0]
    ACCESS_VERSION[0] = 1
    try:
        net = make_net()
    finally:
        ACCESS_VERSION[0] = before
    app = net.app()
    body = {"practitioner": "dr-b", "key": DR_B.public_key, "roles": ["nurse"]}
    run_block(app, [net.tx(net.orgs["h0"], "identity.register", body)], net.solo)
    journaled = _local(id="ab" * 16)  # a journal's entry under v1, re-sent after the vote
    v1 = net.tx(net.orgs["h0"], "access.log", log_body([journaled, _local(rids=["r5"])], 1))
    assert run_block(app, [v1], net.solo).results[0].ok
    propose = net.tx(
        net.orgs["h0"],
        "governance.propose",
        {"action": "activate_contract", "args": {"name": "access", "version": 2}},
    )
    vote = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    assert all(r.ok for r in run_block(app, [propose, vote], net.solo).results)
    assert app.query_obj("governance/contracts", {})["access"] == 2

    assert _log(net, app, [journaled, _local(seq=1, rids=["r7"])]).ok  # the id: skipped
    late = _local(id="cd" * 16, rids=["r8"])  # a v1 body signed before the vote, after it
    v1_body = net.tx(net.orgs["h0"], "access.log", log_body([late, journaled], 1))
    assert run_block(app, [v1_body], net.solo).results[0].ok
    trail = app.query_obj("access/of_patient", {"pid": PID})
    assert [e["rids"] for e in trail] == [["r1", "r2"], ["r5"], ["r7"], ["r8"]]  # chain order
    refs = [access.journal_ref(e) for e in trail]
    assert refs == [f"id:{'ab' * 16}", "id:", "seq:1", f"id:{'cd' * 16}"]
    assert len(app.query_obj("access/by_custodian", {"org": "h0"})) == 4
    assert _keys(app, "acc/pid/") and _keys(app, "acc/ptx/")  # v1 rows stay, v2 rows added


def test_a_practitioner_cannot_number_entries_to_hide_its_hospitals_next_ones() -> None:
    """A sequence lifts its custodian's mark, and entries at or below it are skipped: a
    practitioner's key (a nurse's, say) signing a huge one would make its hospital's journal
    silently write nothing more. Only the organisation key (the journal's) numbers entries."""
    net, app = _v2_net()
    own = _local(seq=access.MAX_SEQ - 1)
    for body in (log_body([own], 2), log_body([_local()], 2, need=1)):
        result = app.check_tx(net.tx(DR_B, "access.log", body))
        assert result.code == Code.UNAUTHORIZED and "only the hospital's journal" in result.log
    assert app.query_obj("access/seq", {"key": net.orgs["h0"].public_key}) == 0
    plain = log_body([_local()], 2)  # without: as before
    assert run_block(app, [net.tx(DR_B, "access.log", plain)], net.solo).results[0].ok
