"""Every caller that sent a dict now sends the contract's message dataclass: the table below
pairs, for each converted call, the body the caller wrote by hand with the message it now
builds, and shows what the wallet signs.

A body that left its defaults out is signed byte for byte as before. A body that spelled a
default (`"end_ms": 0`, `"evidence_hash": b""`, ...) is now signed without it: the contract
parses both to the same message, so its state and the app hash are the same; `SPELLED` names
each such field, so a change here is a decision, not an accident.
"""

from __future__ import annotations

from typing import Any

import pytest

from medledger.contracts import (
    consent,
    emergency,
    erasure,
    governance,
    identity,
    patients,
    records,
    referral,
    research,
)
from medledger.contracts.messages import body_of, kind_of
from medledger.ledger.contract import parse_message
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import sign_tx

PID = "ab" * 32
H = b"\x11" * 32
KEY = b"\x22" * 32

# (who sends it, kind, the body as written by hand, the message sent now, defaults spelled)
TABLE: list[tuple[str, str, dict[str, Any], Any, set[str]]] = [
    (
        "cli consent grant (patient's key, no end)",
        "consent.grant",
        {
            "pid": PID,
            "grantee": "org:h2",
            "categories": ["labs"],
            "purpose": "treatment",
            "start_ms": 1000,
            "end_ms": 0,
            "custodian": "*",
            "evidence_hash": b"",
        },
        consent.Grant(PID, "org:h2", ["labs"], "treatment", 1000, 0, "*", b""),
        {"end_ms", "custodian", "evidence_hash"},
    ),
    (
        "scenario / api consent grant on the patient's behalf",
        "consent.grant",
        {
            "pid": PID,
            "grantee": "org:h2",
            "categories": ["*"],
            "purpose": "treatment",
            "start_ms": 1000,
            "end_ms": 9000,
            "evidence_hash": H,
            "taken_by": "dr-martin",
        },
        consent.Grant(
            PID, "org:h2", ["*"], "treatment", 1000, 9000, evidence_hash=H, taken_by="dr-martin"
        ),
        set(),
    ),
    (
        "portal consent revoke",
        "consent.revoke",
        {"id": 4, "reason": "patient-request"},
        consent.Revoke(id=4, reason="patient-request"),
        set(),
    ),
    (
        "cli consent revoke (patient's key)",
        "consent.revoke",
        {"id": 4, "reason": "", "evidence_hash": b""},
        consent.Revoke(id=4, reason="", evidence_hash=b""),
        {"reason", "evidence_hash"},
    ),
    (
        "cli consent contest",
        "consent.contest",
        {"id": 4, "reason": "patient-denies", "evidence_hash": H},
        consent.Contest(id=4, reason="patient-denies", evidence_hash=H),
        set(),
    ),
    ("cli consent confirm", "consent.confirm", {"id": 4}, consent.Confirm(id=4), set()),
    (
        "pages access request",
        "consent.request",
        {"pid": PID, "categories": ["*"], "purpose": "treatment", "reason_hash": H},
        consent.RequestAccess(pid=PID, categories=["*"], purpose="treatment", reason_hash=H),
        set(),
    ),
    (
        "pages / scenario break-glass",
        "emergency.open",
        {"pid": PID, "reason_hash": H},
        emergency.Open(pid=PID, reason_hash=H),
        set(),
    ),
    (
        "cli emergency open (the policy's duration)",
        "emergency.open",
        {"pid": PID, "reason_hash": H, "duration_ms": 0},
        emergency.Open(pid=PID, reason_hash=H, duration_ms=0),
        {"duration_ms"},
    ),
    (
        "cli / scenario emergency review",
        "emergency.review",
        {"id": 2, "verdict": "approved", "note_hash": H},
        emergency.Review(id=2, verdict="approved", note_hash=H),
        set(),
    ),
    (
        "cli patients bind-key",
        "patients.bind",
        {"pid": PID, "key": KEY, "evidence_hash": H},
        patients.Bind(pid=PID, key=KEY, evidence_hash=H),
        set(),
    ),
    (
        "cli consent cancel --what key",
        "patients.cancel_bind",
        {"pid": PID},
        patients.CancelBind(pid=PID),
        set(),
    ),
    (
        "portal / scenario erasure request",
        "erasure.request",
        {"pid": PID},
        erasure.Request(pid=PID),
        set(),
    ),
    (
        "cli consent cancel --what erasure",
        "erasure.cancel",
        {"request": 3},
        erasure.Cancel(request=3),
        set(),
    ),
    (
        "node shredding / sync agent attest",
        "erasure.attest",
        {"request": 3, "digest": H, "records": 7},
        erasure.Attest(request=3, digest=H, records=7),
        set(),
    ),
    (
        "node shredding attest of its own care records",
        "erasure.attest",
        {"request": 3, "digest": b"", "records": 7},
        erasure.Attest(request=3, records=7),
        {"digest"},
    ),
    (
        "node shredding / sync agent shredded",
        "records.shredded",
        {"pid": PID, "digest": H, "records": 2, "copies": 1},
        records.Shredded(pid=PID, digest=H, records=2, copies=1),
        set(),
    ),
    (
        "ingest registration",
        "records.register",
        {"entries": [{"rid": "r1", "pid": PID, "commitment": H, "meta_ct": b"x"}]},
        records.Register([{"rid": "r1", "pid": PID, "commitment": H, "meta_ct": b"x"}], [], ""),
        set(),
    ),
    (
        "cli / scenario referral create",
        "referral.create",
        {
            "pid": PID,
            "to": "h2",
            "date_ms": 5000,
            "categories": ["labs"],
            "procedure_hash": H,
            "rids": ["r1"],
            "consent": 4,
        },
        referral.Create(PID, "h2", 5000, ["labs"], H, ["r1"], consent=4),
        set(),
    ),
    (
        "cli referral create (evidence, no records named)",
        "referral.create",
        {
            "pid": PID,
            "to": "h2",
            "date_ms": 5000,
            "categories": ["labs"],
            "procedure_hash": H,
            "rids": [],
            "consent": 0,
            "evidence_hash": H,
        },
        referral.Create(PID, "h2", 5000, ["labs"], H, [], 0, H),
        {"rids", "consent"},
    ),
    ("cli / scenario referral admit", "referral.admit", {"id": 5}, referral.Admit(5), set()),
    (
        "cli / sync agent referral deliver",
        "referral.deliver",
        {"id": 5, "rids": ["r1"], "commitments": [H]},
        referral.Deliver(id=5, rids=["r1"], commitments=[H]),
        set(),
    ),
    (
        "cli / sync agent referral confirm",
        "referral.confirm",
        {"id": 5, "commitments": [H]},
        referral.Confirm(5, [H]),
        set(),
    ),
    (
        "cli study register (no title, no end)",
        "research.register",
        {
            "study": "s-1",
            "protocol_hash": H,
            "ethics_ref": "CPP-1",
            "categories": ["labs"],
            "min_cohort": 3,
            "title_hash": b"",
            "end_ms": 0,
        },
        research.Register("s-1", H, "CPP-1", ["labs"], 3, b"", 0),
        {"title_hash", "end_ms"},
    ),
    (
        "scenario study register",
        "research.register",
        {
            "study": "s-1",
            "protocol_hash": H,
            "ethics_ref": "CPP-1",
            "categories": ["labs"],
            "min_cohort": 3,
            "title_hash": H,
        },
        research.Register("s-1", H, "CPP-1", ["labs"], 3, title_hash=H),
        set(),
    ),
    (
        "cli / scenario study enrol",
        "research.enrol",
        {"study": "s-1", "pid": PID, "evidence_hash": H, "taken_by": "dr-martin"},
        research.Enrol(study="s-1", pid=PID, evidence_hash=H, taken_by="dr-martin"),
        set(),
    ),
    (
        "portal study withdraw",
        "research.withdraw",
        {"study": "s-1", "pid": PID},
        research.Withdraw(study="s-1", pid=PID),
        set(),
    ),
    (
        "cli / scenario study release",
        "research.release",
        {"study": "s-1", "dataset_hash": H, "members": [KEY], "counts": {"patients": 1}},
        research.Release("s-1", H, [KEY], {"patients": 1}),
        set(),
    ),
    (
        "cli governance propose (with a note)",
        "governance.propose",
        {"action": "remove_member", "args": {"org": "h3"}, "note": "closed"},
        governance.Propose("remove_member", {"org": "h3"}, "closed"),
        set(),
    ),
    (
        "cli governance propose (no note)",
        "governance.propose",
        {"action": "remove_member", "args": {"org": "h3"}, "note": ""},
        governance.Propose("remove_member", {"org": "h3"}, ""),
        {"note"},
    ),
    (
        "cli governance vote",
        "governance.vote",
        {"proposal": 1, "approve": True},
        governance.Vote(proposal=1, approve=True),
        set(),
    ),
    (
        "cli / scenario practitioner register",
        "identity.register",
        {"practitioner": "dr-a", "key": KEY, "roles": ["physician"]},
        identity.Register("dr-a", KEY, ["physician"]),
        set(),
    ),
    (
        "cli practitioner roles",
        "identity.update_roles",
        {"practitioner": "dr-a", "roles": ["nurse"]},
        identity.UpdateRoles("dr-a", ["nurse"]),
        set(),
    ),
    (
        "cli practitioner revoke",
        "identity.revoke",
        {"practitioner": "dr-a", "reason": "left"},
        identity.Revoke("dr-a", "left"),
        set(),
    ),
]


@pytest.mark.parametrize(
    ("caller", "kind", "written", "msg", "spelled"), TABLE, ids=[row[0] for row in TABLE]
)
def test_the_message_signs_what_the_caller_wrote(
    caller: str, kind: str, written: dict[str, Any], msg: Any, spelled: set[str]
) -> None:
    assert kind_of(msg) == kind
    body = body_of(msg)
    # Only the defaults a caller spelled are left out; every other field is as written.
    assert set(written) - set(body) == spelled
    assert body == {k: v for k, v in written.items() if k not in spelled}
    # Both parse to the same message: the contract (and so the state) sees no difference.
    cls = type(msg)
    assert parse_message(cls, written) == parse_message(cls, body) == msg
    key = SigningKey(b"\x07" * 32)
    same_bytes = sign_tx(key, "test-chain", kind, written, 1) == sign_tx(
        key, "test-chain", kind, body, 1
    )
    assert same_bytes == (not spelled)
