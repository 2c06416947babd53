"""`records/custody_of`: what a hospital was custodian of, asked by its recovery (review
finding 13: a patient of whom no replica peer holds anything must still be named).

It reads the custody keys the records contract keeps anyway (first care record starts one, a
shredding ends it): no state is added, so nothing a chain replays changes."""

from __future__ import annotations

import hashlib

import pytest

from medledger.contracts import queries, records
from medledger.ledger.errors import Code, TxError
from tests.support.ledger import META_CT, make_net, run_block

# pids spread over the key space, so pages cross the scan's two-hex-digit ranges
EARLY, MIDDLE, LATE, SHARED = "00" * 32, "7f" * 32, "ff" * 32, "7f" + "01" * 31


def _entry(rid: str, pid: str) -> dict[str, object]:
    return {
        "rid": rid,
        "pid": pid,
        "commitment": hashlib.sha256(rid.encode()).digest(),
        "meta_ct": META_CT,
    }


def _world():
    net = make_net(3)
    app = net.app()
    h0 = [_entry(f"r{i}", pid) for i, pid in enumerate((LATE, EARLY, MIDDLE, SHARED, EARLY))]
    txs = [
        net.tx(net.orgs["h0"], "records.register", {"entries": h0}),
        net.tx(net.orgs["h1"], "records.register", {"entries": [_entry("s1", SHARED)]}),
    ]
    assert all(r.ok for r in run_block(app, txs, net.solo).results)
    return net, app


def test_a_custodian_lists_the_pids_in_its_custody_and_no_others() -> None:
    net, app = _world()
    assert app.query_obj("records/custody_of", {"org": "h0"}) == [EARLY, SHARED, MIDDLE, LATE]
    assert app.query_obj("records/custody_of", {"org": "h1"}) == [SHARED]
    assert app.query_obj("records/custody_of", {"org": "h2"}) == []


def test_pages_walk_every_pid_once_in_order() -> None:
    net, app = _world()
    seen: list[str] = []
    while True:
        args = {"org": "h0", "limit": 1, **({"after": seen[-1]} if seen else {})}
        page = app.query_obj("records/custody_of", args)
        if not page:
            break
        assert len(page) == 1
        seen += page
    assert seen == [EARLY, SHARED, MIDDLE, LATE]
    assert queries.CUSTODY_PAGE == records.MAX_CUSTODY_PAGE  # the typed read's page size


def test_a_shredding_ends_a_custody_and_a_later_record_starts_one_again() -> None:
    net, app = _world()
    shred = {"pid": MIDDLE, "digest": b"\x05" * 32, "records": 1}
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "records.shredded", shred)], net.solo).results[0].ok
    )
    assert MIDDLE not in app.query_obj("records/custody_of", {"org": "h0"})
    again = net.tx(net.orgs["h0"], "records.register", {"entries": [_entry("r9", MIDDLE)]})
    assert run_block(app, [again], net.solo).results[0].ok
    assert MIDDLE in app.query_obj("records/custody_of", {"org": "h0"})


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({}, "needs org"),
        ({"org": "h0", "after": "not-a-pid"}, "field after"),
        ({"org": "h0", "limit": 0}, "field limit"),
        ({"org": "h0", "limit": records.MAX_CUSTODY_PAGE + 1}, "field limit"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(args: dict[str, object], field: str) -> None:
    net, app = _world()
    with pytest.raises(TxError) as refused:
        app.query_obj("records/custody_of", args)
    assert refused.value.code == Code.INVALID_BODY and field in str(refused.value)
