"""Review 10: count-once links, as the junk filer (issue 18).

A member that filed one junk record of a patient (knowing their INS is enough) is their
custodian, and as custodian it may enrol them in a study in their name, or attest a first
key for a keyless patient and enrol them with it. Either act makes it the patient's link,
the counting hospital, which receives the other custodians' facts. The chain cannot tell
that act from a real hospital's; only time can: the patient and the earlier custodians are
told, and a link counts only once `study_link_settle_ms` old at the query's start
(72 h in a founded consortium). Younger, it *holds* the patient: nobody counts them, no
facts move, and the holder's answer says how many it held."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from medledger.contracts.common import DAY_MS
from medledger.contracts.study_query import PatientFacts
from medledger.ledger.keys import SigningKey
from medledger.node.study_partials import (
    answering,
    check,
    custodians,
    linked,
    settled_by,
)
from medledger.provisioning.founding import FOUNDING_PARAMS
from tests.contracts.test_study_queries import _world
from tests.support.world import World, pid_of

SETTLE = 3 * DAY_MS
FORM = hashlib.sha256(b"a form nobody signed").digest()


def _settling_world() -> World:
    """A consortium as founded across machines: links settle in 72 h."""
    w = _world()
    w.vote_policy("set_policy_param", {"name": "study_link_settle_ms", "value": SETTLE})
    return w


def _record(w: World, query_id: str = "s1/q0001") -> dict[str, Any]:
    return {
        "id": query_id,
        "study": "s1",
        "status": "running",
        "answerers": ["h0", "h1", "h2"],
        "started": w.now,
        "deadline_ms": int(time.time() * 1000) + 60_000,
    }


def _who_counts(w: World, pid: str, record: dict[str, Any]) -> str:
    links = linked(w.state, "s1", pid, record)
    return answering(
        record["id"], custodians(w.state, pid, record), links, settled_by(w.state, record)
    )


def _send(w: World, record: dict[str, Any], sender: str, receiver: str, pid: str) -> Any:
    """(kept pids, dropped pids) of one partials message, as the receiver checks it."""
    facts = PatientFacts(sex="male", matched={"cohort": True}, value=("2026-03-02", 8100))
    body = {"query": record["id"], "patients": [[pid, facts.to_obj()]]}
    _, kept, dropped = check(w.state, record, sender, receiver, body, int(time.time() * 1000))
    return set(kept), dropped


def _portal_enrol(w: World, org: str, pid: str) -> Any:
    body = {"study": "s1", "pid": pid, "evidence_hash": FORM, "channel": "portal"}
    return w.ok(org, "research.enrol", body)


def test_a_founded_consortium_settles_links_in_72_hours_a_sandbox_at_once() -> None:
    assert FOUNDING_PARAMS["study_link_settle_ms"] == SETTLE
    assert _world().q("policies/params", {})["study_link_settle_ms"] == 0


def test_a_forged_enrolment_holds_the_patient_and_the_real_custodian_can_undo_it() -> None:
    w = _settling_world()
    gus = pid_of("gus")
    w.records("h2", gus, ["r-gus-junk"])  # h2 knows gus's INS and files first
    w.records("h0", gus, ["r-gus-hba1c"])  # h0 treats him; he never joined the study
    enrolled = _portal_enrol(w, "h2", gus)  # h2 enrols him in his name: nobody asked it to
    told = {(e.type, e.get("custodian")) for e in enrolled.events}
    assert ("patient.acted_for", None) in told and ("study.notify", "h0") in told
    record = _record(w)  # a query starts at once
    assert [link.org for link in linked(w.state, "s1", gus, record)] == ["h2"]
    assert _who_counts(w, gus, record) == ""  # held: counted by nobody, h2 included
    assert _send(w, record, "h0", "h2", gus) == (set(), [gus])  # h2 keeps none of h0's facts
    # h0's DPO, told, withdraws gus on his behalf within the 72 h: the link is gone.
    body = {"study": "s1", "pid": gus, "evidence_hash": FORM, "channel": "portal"}
    w.ok("h0", "research.withdraw", body, at=w.now + DAY_MS)
    w.block(at=w.now + SETTLE)
    later = _record(w, "s1/q0002")
    assert not linked(w.state, "s1", gus, later)
    assert w.q("research/enrolment", {"study": "s1", "pid": gus})["status"] == "withdrawn"


def test_a_forged_enrolment_nobody_undoes_counts_once_settled() -> None:
    """The residual risk, documented: told and left alone for 72 h, the link stands."""
    w = _settling_world()
    hal = pid_of("hal")
    w.records("h2", hal, ["r-hal-junk"])
    w.records("h0", hal, ["r-hal-hba1c"])
    _portal_enrol(w, "h2", hal)
    w.block(at=w.now + SETTLE)
    assert _who_counts(w, hal, _record(w)) == "h2"


def test_a_first_key_attested_by_the_junk_filer_holds_the_patient() -> None:
    w = _settling_world()
    ida = pid_of("ida")
    w.records("h2", ida, ["r-ida-junk"])
    w.records("h0", ida, ["r-ida-hba1c"])
    # Ida has no key: h2, the oldest custodian, attests one of its making a day on, and
    # enrols her with it (as the patient: no on-behalf enrolment names a hospital).
    fake = SigningKey(hashlib.sha256(b"h2's key for ida").digest())
    since = int(w.state.get(f"rec/custody/{ida}/h2"))
    body = {"pid": ida, "key": fake.public_key, "evidence_hash": FORM}
    w.ok("h2", "patients.bind", body, at=max(w.now + 1000, since + DAY_MS))
    w.ok(fake, "research.enrol", {"study": "s1", "pid": ida})
    record = _record(w)
    assert [link.org for link in linked(w.state, "s1", ida, record)] == ["h2"]
    assert _who_counts(w, ida, record) == ""
    assert _send(w, record, "h0", "h2", ida) == (set(), [ida])


def test_a_real_enrolment_is_held_too_never_handed_to_the_junk_filer_that_filed_first() -> None:
    """What the rule costs: a patient just enrolled at their hospital is counted by nobody
    until the link settles, rather than by the oldest custodian (the junk filer)."""
    w = _settling_world()
    jo = pid_of("jo")
    w.records("h2", jo, ["r-jo-junk"])
    w.records("h0", jo, ["r-jo-hba1c"])
    w.records("h1", jo, ["r-jo-glucose"])
    _portal_enrol(w, "h1", jo)  # at her hospital's portal, as real enrolments are
    fresh = _record(w)
    assert _who_counts(w, jo, fresh) == ""
    for sender in ("h0", "h2"):
        assert _send(w, fresh, sender, "h2" if sender == "h0" else "h0", jo) == (set(), [jo])
    w.block(at=w.now + SETTLE)
    settled = _record(w, "s1/q0002")
    assert _who_counts(w, jo, settled) == "h1"
    assert _send(w, settled, "h0", "h1", jo) == ({jo}, [])
    assert _send(w, settled, "h0", "h2", jo) == (set(), [jo])


def test_a_young_link_of_a_patient_with_one_custodian_holds_nothing() -> None:
    """No facts move for a patient only one hospital holds: it counts them at once."""
    w = _settling_world()
    kim = pid_of("kim")
    w.records("h1", kim, ["r-kim-hba1c"])
    _portal_enrol(w, "h1", kim)
    assert _who_counts(w, kim, _record(w)) == "h1"


def test_an_older_link_is_not_skipped_for_a_younger_one() -> None:
    """A settled key attestation and a fresh forged enrolment: the enrolment comes first in
    precedence, so the patient is held; the junk filer does not win either way."""
    w = _settling_world()
    lea = pid_of("lea")
    w.records("h2", lea, ["r-lea-junk"])
    w.records("h0", lea, ["r-lea-hba1c"])
    key = SigningKey(hashlib.sha256(b"lea's phone").digest())
    since = int(w.state.get(f"rec/custody/{lea}/h0"))
    body = {"pid": lea, "key": key.public_key, "evidence_hash": FORM}
    w.ok("h0", "patients.bind", body, at=max(w.now + 1000, since + DAY_MS))
    w.block(at=w.now + SETTLE)
    _portal_enrol(w, "h2", lea)
    record = _record(w)
    assert [link.org for link in linked(w.state, "s1", lea, record)] == ["h2", "h0"]
    assert _who_counts(w, lea, record) == ""


def test_a_junk_filer_re_enrolling_a_patient_only_holds_them_and_is_undone_alike() -> None:
    """The patient was enrolled at their hospital long ago; the junk filer withdraws and
    re-enrols them in their name to become the link. Fresh, its link holds them (counted
    nowhere, and said); their hospital, told, does the same back, and its link then wins."""
    w = _settling_world()
    max_ = pid_of("max")
    w.records("h2", max_, ["r-max-junk"])
    w.records("h0", max_, ["r-max-hba1c"])
    _portal_enrol(w, "h0", max_)
    w.block(at=w.now + SETTLE)
    assert _who_counts(w, max_, _record(w)) == "h0"
    body = {"study": "s1", "pid": max_, "evidence_hash": FORM, "channel": "portal"}
    w.ok("h2", "research.withdraw", body)
    _portal_enrol(w, "h2", max_)
    assert _who_counts(w, max_, _record(w, "s1/q0002")) == ""  # held, never h2's
    w.ok("h0", "research.withdraw", body, at=w.now + DAY_MS)
    _portal_enrol(w, "h0", max_)
    w.block(at=w.now + SETTLE)
    assert _who_counts(w, max_, _record(w, "s1/q0003")) == "h0"
