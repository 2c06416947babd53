"""review15, on trust15's access v6: `access.log` is the organisation key's only, so that a
clinician's own key writes no export that never was into its hospital's trail. A
registration's `disclosures` (records' `record_entry`) still wrote one: an `export`, granted,
to any other member, on a basis the signer only spells (`consent:<any id>`), and marked the
record disclosed to it (the gateway then serves that hospital's reads of it without an entry
of their own). From records v4 only the organisation key (its node's ingestion, the one
writer of disclosures) may disclose; v3 replays as it was."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from medledger.contracts.records import META_CT_SIZES, disclosed
from medledger.ledger.errors import Code
from tests.contracts.test_org_key_acts import _activate, _world_on
from tests.support.world import World, pid_of


def _registration(rid: str) -> dict[str, Any]:
    """bob's new record at h0, disclosed to h2 on a consent that does not exist."""
    entry = {
        "rid": rid,
        "pid": pid_of("bob"),
        "commitment": hashlib.sha256(rid.encode()).digest(),
        "meta_ct": b"c" * META_CT_SIZES[0],
    }
    disclosure = {"org": "h2", "basis": "consent:999", "rids": [rid]}
    return {"entries": [entry], "disclosures": [disclosure]}


def _exports(w: World) -> list[dict[str, Any]]:
    trail = w.q("access/of_patient", {"pid": pid_of("bob")})
    return [e for e in trail if e["action"] == "export"]


def test_a_practitioner_key_cannot_write_an_export_through_a_registrations_disclosure() -> None:
    w = World()
    assert w.q("governance/contracts", {})["access"] == 6
    refused = w.send("h0/dr-a", "records.register", _registration("r-forged"))
    assert refused.code == Code.UNAUTHORIZED
    assert refused.log.startswith("signer: practitioner h0/dr-a may not disclose records")
    assert "organisation key" in refused.log and pid_of("bob") not in refused.log
    assert w.q("records/entry", {"rid": "r-forged"}) is None
    assert _exports(w) == [] and not disclosed(w.state, "h2", "r-forged")

    w.ok("h0/dr-a", "records.register", {"entries": _registration("r-own")["entries"]})
    # The node's ingestion: the organisation key signs, naming the clinician as author.
    w.ok("h0", "records.register", _registration("r-node") | {"author": "practitioner:h0/dr-a"})
    assert [(e["actor_org"], e["signer"]) for e in _exports(w)] == [("h2", "org:h0")]
    assert disclosed(w.state, "h2", "r-node")


def test_records_v3_replays_a_practitioners_disclosure_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _world_on(monkeypatch, records=3)
    assert w.send("h0/dr-a", "records.register", _registration("r-old")).ok  # v3's reading
    assert [e["signer"] for e in _exports(w)] == ["practitioner:h0/dr-a"]
    assert disclosed(w.state, "h2", "r-old")
    _activate(w, "records", 4)
    refused = w.send("h0/dr-a", "records.register", _registration("r-new"))
    assert refused.code == Code.UNAUTHORIZED and "h0/dr-a" in refused.log
    assert len(_exports(w)) == 1 and w.q("records/entry", {"rid": "r-new"}) is None
