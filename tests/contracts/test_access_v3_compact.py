"""`access` v3: v2's trail from a compact tx (a field shared by every entry given once, the
journal's sequences as steps). The same entries leave the same trail under v2 and v3; a
compact body that says anything ambiguous is refused, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.contracts import access
from medledger.ledger import codec
from medledger.ledger.app import Application
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.contracts.test_access_v3 import _net as _bare_net
from tests.support.access import PID, _entry
from tests.support.ledger import Net, run_block

OTHER = "cd" * 32
DR_B = SigningKey(b"\x07" * 32)  # h0's practitioner dr-b
SEQ0 = 1_764_500_000_000_000  # a journal's first sequence: its clock in µs


def _local(**over: Any) -> dict[str, Any]:
    """An entry of h0's own practitioner reading at h0 (no signed request)."""
    return _entry(
        **{"actor": "practitioner:h0/dr-b", "actor_org": "h0", "basis": "custodian", **over}
    )


def _net(version: int) -> tuple[Net, Application]:
    """A network on `version` of `access`, with h0's practitioner dr-b registered."""
    net, app = _bare_net(version)
    body = {"practitioner": "dr-b", "key": DR_B.public_key, "roles": ["nurse"]}
    assert (
        run_block(app, [net.tx(net.orgs["h0"], "identity.register", body)], net.solo).results[0].ok
    )
    return net, app


def _trail(app: Application, pid: str = PID) -> list[dict[str, Any]]:
    """The patient's trail without what names the tx (its bytes differ between versions)."""
    return [
        {k: v for k, v in e.items() if k not in ("tx", "key")}
        for e in app.query_obj("access/of_patient", {"pid": pid})
    ]


def _journal_batch(other_patient: bool) -> list[dict[str, Any]]:
    """What a journal sends under load: many reads of one patient by the hospital itself,
    sequences following on, with a gap where another tx took some (and one other patient)."""
    seqs = [*range(SEQ0, SEQ0 + 300), *range(SEQ0 + 310, SEQ0 + 499)]
    entries = [_local(seq=s, rids=[f"obs-{s % 97}"], actor="org:h0") for s in seqs]
    if other_patient:
        entries.append(_local(seq=SEQ0 + 600, pid=OTHER, actor="org:h0", rids=[]))
    return entries


@pytest.mark.parametrize(("other_patient", "shrink"), [(False, 10), (True, 1.5)])
def test_the_same_entries_leave_the_same_trail_under_v2_and_v3_from_fewer_bytes(
    other_patient: bool, shrink: float
) -> None:
    """One patient's reads: a tenth of v2's bytes; two patients (the pid a column): less."""
    entries = _journal_batch(other_patient)
    trails, sizes = {}, {}
    for version in (2, 3):
        net, app = _net(version)
        body = access.log_body(entries, version)
        sizes[version] = len(codec.encode(body))
        result = run_block(app, [net.tx(net.orgs["h0"], "access.log", body)], net.solo).results[0]
        assert result.ok, result.log
        trails[version] = (_trail(app), _trail(app, OTHER))
        mark = app.query_obj("access/seq", {"key": net.orgs["h0"].public_key})
        assert mark == entries[-1]["seq"]
    assert trails[3] == trails[2]
    assert len(trails[3][0]) == 489 and len(trails[3][1]) == int(other_patient)
    assert sizes[3] * shrink < sizes[2]
    compact = access.log_body(entries, 3)
    assert compact["same"]["actor"] == "org:h0" and compact["seq_base"] == SEQ0 - 1
    same_rids = access.log_body([_local(seq=1), _local(seq=2)], 3)
    assert "rids" in same_rids["columns"]  # per-entry data stays a column, even when equal
    steps = compact["columns"]["seq"]
    assert set(steps) == ({1, 11, 102} if other_patient else {1, 11})


def test_a_v2_body_signed_before_the_vote_is_still_taken_under_v3() -> None:
    net, app = _net(3)
    body = access.log_body([_local(seq=5), _local(seq=6, rids=["r9"])], 2)
    assert run_block(app, [net.tx(net.orgs["h0"], "access.log", body)], net.solo).results[0].ok
    assert [e["rids"] for e in _trail(app)] == [["r1", "r2"], ["r9"]]


def test_re_sent_entries_are_skipped_by_their_sequence_as_in_v2() -> None:
    net, app = _net(3)
    first = access.log_body([_local(seq=SEQ0 + i) for i in range(3)], 3)
    again = access.log_body([_local(seq=SEQ0 + i) for i in range(5)], 3)  # 3 sent again
    for body in (first, again):
        tx = net.tx(net.orgs["h0"], "access.log", body)
        assert run_block(app, [tx], net.solo).results[0].ok
    assert [e["seq"] for e in _trail(app)] == [SEQ0 + i for i in range(5)]


_ONE = access.log_body([_local(seq=SEQ0), _local(seq=SEQ0 + 1, rids=["r3"])], 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**_ONE, "count": 3}, "columns.rids: a list of count values"),
        ({**_ONE, "count": 0}, "field count: 1..500"),
        ({**_ONE, "count": 501}, "field count: 1..500"),
        ({**_ONE, "same": {**_ONE["same"], "rids": ["r1"]}}, "same.rids: also a column"),
        (  # 500 entries sharing 1,000 rids: a small tx writing what no v2 tx could carry
            {
                "count": 500,
                "same": {**_ONE["same"], "rids": [f"r{i}" for i in range(1000)]},
                "seq_base": SEQ0,
            },
            "same.rids: given per entry",
        ),
        ({"count": 1, "same": {**_ONE["same"], "request": None}}, "same.request: given per"),
        ({**_ONE, "same": {**_ONE["same"], "seq": 0}}, "a step 1.."),
        ({**_ONE, "same": {**_ONE["same"], "seq": -2}}, "a step 1.."),
        ({**_ONE, "same": {**_ONE["same"], "seq": "1"}}, "a step 1.."),
        ({**_ONE, "seq_base": -1}, "field seq_base"),
        ({**_ONE, "seq_base": access.MAX_SEQ}, "field seq_base"),
        ({**_ONE, "seq_base": access.MAX_SEQ - 2}, "strictly increasing in a tx, below"),
        ({**_ONE, "same": {k: v for k, v in _ONE["same"].items() if k != "seq"}}, "field seq"),
        ({**_ONE, "same": {**_ONE["same"], "colour": "red"}}, "'colour'"),
        ({**_ONE, "same": {**_ONE["same"], "pid": "not a pid"}}, "pid"),
        ({**_ONE, "entries": [_local()]}, "not both"),
    ],
)
def test_a_compact_body_that_says_anything_ambiguous_is_refused(
    body: dict[str, Any], message: str
) -> None:
    net, app = _net(3)
    result = app.check_tx(net.tx(net.orgs["h0"], "access.log", body))
    assert result.code == Code.INVALID_BODY and message in result.log, result.log


def test_a_practitioner_still_cannot_number_entries_in_a_compact_body() -> None:
    net, app = _net(3)
    body = access.log_body([_local(seq=access.MAX_SEQ - 1)], 3)
    assert "seq_base" in body
    result = app.check_tx(net.tx(DR_B, "access.log", body))
    assert result.code == Code.UNAUTHORIZED and "only the hospital's journal" in result.log
