"""A contract's message dataclass becomes the (kind, body) the wallet signs."""

from __future__ import annotations

import pytest

from medledger.contracts import access, all_contracts, consent, erasure
from medledger.contracts.messages import body_of, kind_of
from medledger.ledger.contract import parse_message

PID = "ef" * 32


def test_each_message_class_names_one_kind() -> None:
    kinds: dict[type, set[str]] = {}
    for contract in all_contracts():
        for kind, message in contract.messages.items():
            kinds.setdefault(message.cls, set()).add(kind)
    assert {cls: ks for cls, ks in kinds.items() if len(ks) > 1} == {}


def test_the_body_leaves_defaults_out_and_parses_back_to_the_same_message() -> None:
    msg = erasure.Request(pid=PID, evidence_hash=b"\x02" * 32)
    assert kind_of(msg) == "erasure.request"
    assert body_of(msg) == {"pid": PID, "evidence_hash": b"\x02" * 32}
    assert parse_message(erasure.Request, body_of(msg)) == msg

    grant = consent.Grant(PID, "org:h2", ["lab"], "treatment", start_ms=0, end_ms=5)
    assert kind_of(grant) == "consent.grant"
    assert parse_message(consent.Grant, body_of(grant)) == grant
    assert kind_of(access.Log([])) == "access.log" and body_of(access.Log([])) == {"entries": []}


def test_a_dataclass_no_contract_declares_is_refused() -> None:
    with pytest.raises(TypeError, match="Entry is not a message"):
        kind_of(access.Entry("org:h1", "h1", PID, "read", "treatment", "granted"))


def test_a_refused_item_is_named_by_its_path() -> None:
    """Items are checked without spelling out their paths; a refusal still names the item."""
    from medledger.ledger.errors import TxError

    body = body_of(consent.Grant(PID, "org:h2", ["lab"], "treatment", start_ms=0))
    with pytest.raises(TxError, match=r"field categories\[1\]: expected text, got int"):
        parse_message(consent.Grant, {**body, "categories": ["lab", 3]})
    good = {"entries": [{"a": 1}]}
    assert parse_message(access.Log, good).entries == [{"a": 1}]
    assert parse_message(access.Log, good).entries is not good["entries"]  # a copy
