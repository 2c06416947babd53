"""The one builder of `access.log` entries, shared by the API, the gateway and the sync agent."""

from __future__ import annotations

from medledger.contracts.access import Entry, log_entry
from medledger.contracts.authorize import Decision
from medledger.ledger.contract import parse_message

PID = "cd" * 32


def test_a_grant_names_its_basis_and_parses_as_the_contract_message() -> None:
    entry = log_entry(
        actor="h1/dr-a",
        actor_org="h1",
        pid=PID,
        action="read",
        purpose="treatment",
        decision=Decision(True, "consent:4", ""),
        rids=["r1", "r2"],
    )
    assert entry["outcome"] == "granted" and entry["basis"] == "consent:4"
    assert entry["reason"] == "" and "request" not in entry
    parsed = parse_message(Entry, entry)
    assert parsed.rids == ["r1", "r2"]


def test_a_denial_keeps_only_the_reason_code_and_carries_the_signed_request() -> None:
    request = {"signature": b"\x01" * 64}
    entry = log_entry(
        actor="h2/dr-b",
        actor_org="h2",
        pid=PID,
        action="search",
        purpose="treatment",
        decision=Decision(False, "", "no consent: nothing covers this record for h2"),
        rids=[],
        request=request,
    )
    assert entry["outcome"] == "denied" and entry["basis"] == ""
    assert entry["reason"] == "no consent"  # the wording stays with the caller
    assert entry["request"] is request
