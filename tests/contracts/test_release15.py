"""`research` v4 (session 15, release15): a release only from a custodian of every member.

v1 to v3 took `research.release` from any member's researcher or organisation key: a hospital
holding nothing of a patient could name her study token in a release, and `holders()` then
listed it as holding her data (`release:<study>/<seq>`), her portal showed it, and her erasure
gave it an obligation. From v4 the signer's hospital must hold custody of every member's
patient (records' custody index); the study's sponsor is no exception, since the data a
release covers comes from a custodian (and `holders()` lists the sponsor already, as
`study:<study>`). The refusal names the member's index and the hospital, never the pid.
"""

from __future__ import annotations

import hashlib

import pytest

from medledger.contracts.research import holders, member_token
from medledger.ledger.errors import Code
from tests.contracts.test_org_key_acts import _activate, _world_on
from tests.support.world import World, pid_of

DATASET = hashlib.sha256(b"pseudonymised dataset").digest()
COHORT = ("alice", "bob", "carol")


def _enrolled(w: World) -> None:
    """alice, bob and carol (h0 holds their care records) enrol in h1's study s1."""
    w.study("s1")
    for name in COHORT:
        if f"patient:{name}" not in w.keys:
            w.bind(name)
        w.ok(f"patient:{name}", "research.enrol", {"study": "s1", "pid": pid_of(name)})


def _release(names: tuple[str, ...] = COHORT) -> dict[str, object]:
    members = [member_token("s1", pid_of(n)) for n in names]
    return {
        "study": "s1",
        "dataset_hash": DATASET,
        "members": members,
        "counts": {"patients": len(members)},
    }


def test_research_v4_is_what_a_new_consortium_runs() -> None:
    assert World().q("governance/contracts", {})["research"] == 4


@pytest.mark.parametrize("signer", ["h2", "h2/dr-c", "h1", "h1/res-b"])
def test_a_hospital_holding_none_of_the_members_cannot_release_them(signer: str) -> None:
    """h2 holds nothing of them; h1 is the sponsor but holds nothing either. (h2's physician
    key lacks the researcher role: refused before custody is asked, as in v1.)"""
    w = World()
    _enrolled(w)
    refused = w.send(signer, "research.release", _release())
    assert refused.code == Code.UNAUTHORIZED, refused
    org = signer.split("/")[0]
    if signer != "h2/dr-c":
        assert refused.log.startswith(f"members[0]: {org} holds no custody of this member")
        assert "study s1" in refused.log
    assert all(pid_of(n) not in refused.log for n in COHORT)  # the index, never the pid
    assert w.q("research/releases", {"study": "s1"}) == []
    assert w.q("research/study", {"study": "s1"})["releases"] == 0
    assert not any(
        src.startswith("release:")
        for n in COHORT
        for src in holders(w.state, pid_of(n)).get(org, [])
    )


def test_the_refusal_names_the_first_member_the_signer_does_not_hold() -> None:
    """h2 holds carol's care records only: a release of alice, carol and bob stops at
    members[2] (bob); one of carol alone passes the custody check (then the cohort minimum)."""
    w = World()
    _enrolled(w)
    w.records("h2", pid_of("carol"), ["r-carol-h2"])
    refused = w.send("h2", "research.release", _release(("carol", "alice")))
    assert refused.code == Code.UNAUTHORIZED and refused.log.startswith("members[1]: h2 ")
    w.records("h2", pid_of("alice"), ["r-alice-h2"])
    refused = w.send("h2", "research.release", _release(("alice", "carol", "bob")))
    assert refused.code == Code.UNAUTHORIZED and refused.log.startswith("members[2]: h2 ")
    w.ok("h2", "research.release", _release(("alice", "carol")))
    (release,) = w.q("research/releases", {"study": "s1"})
    assert release["custodian"] == "h2" and release["members"] == 2


@pytest.mark.parametrize("signer", ["h0", "h0/res-a"])
def test_a_custodian_of_every_member_releases_them(signer: str) -> None:
    w = World()
    _enrolled(w)
    result = w.ok(signer, "research.release", _release())
    assert "study.released" in [e.type for e in result.events]
    (release,) = w.q("research/releases", {"study": "s1"})
    assert release["custodian"] == "h0" and release["members"] == 3
    assert holders(w.state, pid_of("bob"))["h0"] == ["release:s1/1"]


def test_a_custodian_that_shredded_the_patient_no_longer_releases_her() -> None:
    w = World()
    _enrolled(w)
    body = {"pid": pid_of("bob"), "digest": DATASET, "records": 1, "copies": 0}
    w.ok("h0", "records.shredded", body)
    refused = w.send("h0", "research.release", _release())
    assert refused.code == Code.UNAUTHORIZED and refused.log.startswith("members[1]: h0 ")


def test_research_v3_still_takes_a_non_custodians_release_until_a_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replay: a v3 chain keeps v3's acceptance; after the vote to v4 the same act is refused."""
    w = _world_on(monkeypatch, research=3)
    _enrolled(w)
    w.ok("h2", "research.release", _release())
    assert holders(w.state, pid_of("alice"))["h2"] == ["release:s1/1"]
    _activate(w, "research", 4)
    refused = w.send("h2", "research.release", _release())
    assert refused.code == Code.UNAUTHORIZED and refused.log.startswith("members[0]: h2 ")
    assert w.q("research/study", {"study": "s1"})["releases"] == 1
