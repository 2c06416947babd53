"""Consent and patients' keys: who may grant and revoke, indexes, FHIR Consent round trips."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.interop.fhir_consent import FhirConsentError, from_fhir, to_fhir
from medledger.ledger.errors import Code
from medledger.ledger.keys import SigningKey
from tests.support.world import EVIDENCE, World, pid_of


def test_binding_a_patient_key() -> None:
    w = World()
    bound = w.q("patients/key", {"pid": w.pid})
    assert bound["key"] == w.patient.public_key and bound["org"] == "h0"
    assert w.q("patients/of_key", {"key": w.patient.public_key}) == w.pid
    # A practitioner without the admin role cannot bind; the hospital's admin can.
    new = SigningKey.generate()
    body = {"pid": w.pid, "key": new.public_key, "evidence_hash": EVIDENCE}
    assert w.send("h1/dr-b", "patients.bind", body).code == Code.UNAUTHORIZED
    stranger = w.send("h1/admin-b", "patients.bind", body)
    assert stranger.code == Code.UNAUTHORIZED and "not a custodian" in stranger.log
    w.records("h1", w.pid, ["r-h1"])  # h1 now treats alice: its admin may rebind her key
    result = w.ok("h1/admin-b", "patients.bind", body)
    # A rebinding waits 72 h (on_behalf_delay_ms), the old key working meanwhile.
    assert [e.type for e in result.events] == [
        "patient.rebind_pending",
        "patient.acted_for",
        "patient.notify",
    ]
    effective = w.q("patients/pending", {"pid": w.pid})["effective_ms"]
    assert w.q("patients/of_key", {"key": w.patient.public_key}) == w.pid
    out = w.block(at=effective)
    assert [e.type for e in out.events] == ["patient.key_replaced"]
    assert w.q("patients/of_key", {"key": w.patient.public_key}) is None
    assert w.q("patients/of_key", {"key": new.public_key}) == w.pid
    w.records("h0", pid_of("bob"), ["r-bob"])
    taken = {"pid": pid_of("bob"), "key": new.public_key, "evidence_hash": EVIDENCE}
    assert w.send("h0", "patients.bind", taken).code == Code.CONFLICT
    org_key = {"pid": pid_of("bob"), "key": w.keys["h1"].public_key, "evidence_hash": EVIDENCE}
    assert w.send("h0", "patients.bind", org_key).code == Code.CONFLICT


def test_on_behalf_consents_record_the_evidence_and_the_recorder_may_revoke() -> None:
    w = World()
    body = {
        "pid": w.pid,
        "grantee": "org:h1",
        "categories": ["labs", "imaging"],
        "purpose": "treatment",
        "start_ms": w.now,
        "evidence_hash": EVIDENCE,
    }
    w.ok("h0/dr-a", "consent.grant", body)
    consent = w.q("consent/get", {"id": 1})
    assert consent["signed"] == {
        "by": "hospital",
        "org": "h0",
        "practitioner": "dr-a",
        "evidence_hash": EVIDENCE,
        "channel": "desk",
    }
    assert consent["categories"] == ["imaging", "labs"]  # canonical order
    assert w.send("h1", "consent.revoke", {"id": 1}).code == Code.UNAUTHORIZED
    w.ok("h0", "consent.revoke", {"id": 1, "reason": "entered-in-error"})
    assert w.send("h0", "consent.revoke", {"id": 1}).code == Code.CONFLICT
    revoked = w.q("consent/get", {"id": 1})
    assert revoked["status"] == "revoked" and revoked["revoked"]["by"] == "hospital"


def test_a_custodian_revokes_with_the_patients_evidence_a_stranger_cannot() -> None:
    w = World()
    w.grant("org:h1")
    stranger = w.send("h2", "consent.revoke", {"id": 1, "evidence_hash": EVIDENCE})
    assert stranger.code == Code.UNAUTHORIZED and "not a custodian" in stranger.log
    body = {"id": 1, "evidence_hash": EVIDENCE, "taken_by": "dr-a"}
    result = w.ok("h0", "consent.revoke", body)
    assert dict(result.events[0].attrs)["by"] == "hospital"


def test_listing_consents_of_a_patient_and_of_a_grantee() -> None:
    w = World()
    w.grant("org:h1")
    w.grant("practitioner:h2/dr-c", categories=["*"])
    w.grant("org:h1", categories=["imaging"])
    assert [c["id"] for c in w.q("consent/list", {"pid": w.pid})] == [1, 2, 3]
    assert [c["id"] for c in w.q("consent/list", {"pid": w.pid, "grantee": "org:h1"})] == [1, 3]
    granted = w.q("consent/granted_to", {"grantee": "practitioner:h2/dr-c"})
    assert [c["id"] for c in granted] == [2]


@pytest.mark.parametrize(
    "extra, code, fragment",
    [
        ({"grantee": "org:nowhere"}, Code.NOT_FOUND, "grantee"),
        ({"grantee": "practitioner:h1/ghost"}, Code.NOT_FOUND, "grantee"),
        ({"grantee": "study:none", "purpose": "research"}, Code.NOT_FOUND, "grantee"),
        ({"grantee": "hospital:h1"}, Code.INVALID_BODY, "grantee"),
        ({"categories": []}, Code.INVALID_BODY, "categories"),
        ({"categories": ["labs", "labs"]}, Code.INVALID_BODY, "categories"),
        ({"purpose": "marketing"}, Code.INVALID_BODY, "purpose"),
        ({"end_ms": 1}, Code.INVALID_BODY, "end_ms"),
        ({"custodian": "nowhere"}, Code.NOT_FOUND, "custodian"),
        ({"evidence_hash": b"short"}, Code.INVALID_BODY, "evidence_hash"),
        ({"evidence_hash": EVIDENCE}, Code.INVALID_BODY, "taken_by"),
        ({"evidence_hash": EVIDENCE, "taken_by": "ghost"}, Code.UNAUTHORIZED, "taken_by"),
        ({"evidence_hash": EVIDENCE, "channel": "fax"}, Code.INVALID_BODY, "channel"),
    ],
)
def test_grant_errors_name_the_field(extra: dict[str, Any], code: Code, fragment: str) -> None:
    w = World()
    body = {
        "pid": w.pid,
        "grantee": "org:h1",
        "categories": ["labs"],
        "purpose": "treatment",
        "start_ms": w.now,
        **extra,
    }
    result = w.send("h0" if "evidence_hash" in extra else "patient:alice", "consent.grant", body)
    assert result.code == code and fragment in result.log, result


# -- FHIR Consent ----------------------------------------------------------------------------

GRANTS: list[dict[str, Any]] = [
    {"grantee": "org:h1", "categories": ["labs", "imaging"], "purpose": "treatment"},
    {
        "grantee": "practitioner:h2/dr-c",
        "categories": ["*"],
        "purpose": "emergency",
        "custodian": "h0",
        "end_ms": 1,
    },
    {"grantee": "study:s1", "categories": ["labs"], "purpose": "research"},
]


@pytest.mark.parametrize("version", ["R4", "R5"])
@pytest.mark.parametrize("grant", range(len(GRANTS)))
def test_fhir_consent_round_trip(version: str, grant: int) -> None:
    from fhir.resources.consent import Consent as ConsentR5
    from fhir.resources.R4B.consent import Consent as ConsentR4

    w = World()
    w.study("s1")
    spec: dict[str, Any] = dict(GRANTS[grant])
    if spec.get("end_ms"):
        spec["end_ms"] = w.now + 86_400_000
    on_behalf = grant == 1
    body = {"pid": w.pid, "start_ms": w.now - 5, **spec}
    if on_behalf:
        body.update(evidence_hash=EVIDENCE, taken_by="dr-a")
    w.ok("h0" if on_behalf else "patient:alice", "consent.grant", body)
    consent = w.q("consent/get", {"id": 1})

    resource = to_fhir(consent, version=version)
    model = ConsentR4 if version == "R4" else ConsentR5
    model.model_validate(resource)  # a valid FHIR resource of that version
    assert resource["id"] == "medledger-consent-1"
    assert resource["status"] == "active"
    parsed = from_fhir(resource)
    expected = {
        "pid": w.pid,
        "grantee": consent["grantee"],
        "categories": consent["categories"],
        "purpose": consent["purpose"],
        "start_ms": consent["start_ms"],
        "end_ms": consent["end_ms"],
        "custodian": consent["custodian"],
        "evidence_hash": EVIDENCE if on_behalf else b"",
    }
    assert parsed == expected
    # And the parsed body is a valid grant again.
    w.ok("h0", "consent.grant", {**parsed, "evidence_hash": EVIDENCE, "taken_by": "dr-a"})


def test_fhir_export_of_a_revoked_consent_is_inactive() -> None:
    w = World()
    w.grant("org:h1")
    w.ok("patient:alice", "consent.revoke", {"id": 1})
    consent = w.q("consent/get", {"id": 1})
    assert to_fhir(consent, "R4")["status"] == "inactive"
    assert to_fhir(consent, "R5")["status"] == "inactive"


def test_fhir_import_refuses_what_it_cannot_represent() -> None:
    w = World()
    w.grant("org:h1")
    good = to_fhir(w.q("consent/get", {"id": 1}), "R5")
    with pytest.raises(FhirConsentError, match="resourceType"):
        from_fhir({**good, "resourceType": "Patient"})
    with pytest.raises(FhirConsentError, match="deny"):
        from_fhir({**good, "decision": "deny"})
    no_patient = {k: v for k, v in good.items() if k != "subject"}
    with pytest.raises(FhirConsentError, match="patient"):
        from_fhir(no_patient)
