"""A token is the patient only when it says so twice: `sub` is `Patient/<pid>` and its `patient`
launch context is the same pid. A practitioner's token from a SMART EHR launch carries a
`patient` too: that context only narrows what the practitioner reaches; they are still
authorized as themselves, with their status and roles read on the chain (issue 11 review,
item 2)."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.api.tokens import Claims, patient_of

from .conftest import STRANGER_PID, Api, _signed_in, consent, consents, eventually, post_consent


def _claims(sub: str, patient: str | None) -> Claims:
    return Claims(sub, frozenset(), patient, "iss", 0, {})


def test_a_token_is_the_patient_only_when_subject_and_launch_context_agree() -> None:
    pid = "ab" * 32
    assert patient_of(_claims(f"Patient/{pid}", pid)) == pid
    assert patient_of(_claims("Practitioner/dr-martin", pid)) is None
    assert patient_of(_claims(f"Patient/{pid}", "cd" * 32)) is None
    assert patient_of(_claims(f"Patient/{pid}", None)) is None
    assert patient_of(_claims("Device/backend", pid)) is None


def _trail(api: Api) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.services.node.engine.query(
        "access/of_patient", {"pid": api.pid}
    )
    return found


def test_a_revoked_practitioner_with_a_patient_launch_context_reads_nothing(api: Api) -> None:
    api.services.node.wallet.send("identity.revoke", {"practitioner": "dr-martin"})
    ehr = api.token("Practitioner/dr-martin", "patient/*.rs launch", patient=api.pid)
    r = api.client.get(f"/fhir/Observation?patient={api.pid}", headers=ehr)
    # Before: 200 with every Observation, basis "patient", actor the revoked practitioner.
    assert r.status_code == 403, r.text
    assert "actor revoked" in r.text


def test_a_revoked_practitioner_with_a_patient_launch_context_cannot_consent_as_the_portal(
    api: Api,
) -> None:
    api.services.node.wallet.send("identity.revoke", {"practitioner": "dr-martin"})
    ehr = api.token("Practitioner/dr-martin", "patient/Consent.c launch", patient=api.pid)
    r = post_consent(api, ehr, consent(api.pid, "aphp-paris"))
    # Before: 201, on the chain as channel "portal": "the patient asked for it themself".
    assert r.status_code == 403, r.text
    assert consents(api, api.pid) == []


def test_an_active_practitioners_launch_context_narrows_and_is_authorized_as_them(
    api: Api,
) -> None:
    ehr = api.token("Practitioner/dr-martin", "patient/*.rs launch", patient=api.pid)
    r = api.client.get(f"/fhir/Observation?patient={api.pid}", headers=ehr)
    assert r.status_code == 200 and r.json()["total"] > 0, r.text

    def granted() -> list[dict[str, Any]]:
        return [e for e in _trail(api) if e["outcome"] == "granted" and e["action"] == "search"]

    assert eventually(lambda: bool(granted()))
    assert {e["basis"] for e in granted()} != {"patient"}
    assert {e["actor"] for e in granted()} == {"practitioner:chu-lyon/dr-martin"}
    # The launch context is a limit: another patient is refused even where authorize allows.
    other = api.client.get(f"/fhir/Observation?patient={STRANGER_PID}", headers=ehr)
    assert other.status_code in (403, 404), other.text


def test_an_ehr_launched_consent_is_taken_by_the_practitioner_not_the_portal(api: Api) -> None:
    ehr = api.token("Practitioner/dr-martin", "patient/Consent.c launch", patient=api.pid)
    r = post_consent(api, ehr, consent(api.pid, "aphp-paris"))
    assert r.status_code == 201, r.text
    (recorded,) = consents(api, api.pid)
    assert recorded["signed"]["practitioner"] == "dr-martin", recorded["signed"]
    assert recorded["signed"].get("channel") != "portal", recorded["signed"]


def test_a_practitioners_launch_context_does_not_sign_in_to_the_patient_portal(api: Api) -> None:
    ehr = api.token("Practitioner/dr-martin", "patient/*.cruds launch", patient=api.pid)
    client, landing = _signed_in(api, ehr)
    assert "Sign in" in landing and "My health records" not in landing
    refused = client.post("/portal/erasure", data={"csrf": "x"})
    assert refused.status_code in (401, 403), refused.text


# -- a sign-out holds whatever the spelling (issue 11 review, item 5) --------------------------


def test_a_signed_out_token_stays_out_with_its_signature_re_encoded(api: Api) -> None:
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    client, _ = _signed_in(api, headers)
    client.get("/logout")
    head, body, sig = headers["Authorization"].removeprefix("Bearer ").split(".")
    # The same bytes for a lenient decoder (padding, skipped characters), another SHA-256 of
    # the string: before, the sign-out list missed them and the token was served again.
    variants = [f"{head}.{body}.{sig}==", f"{head}.{body}.!!!!{sig}", f"{head}==.{body}.{sig}"]
    read = f"/fhir/Patient/{api.patient_rid}"
    answers = [
        api.client.get(read, headers={"Authorization": f"Bearer {v}"}).status_code for v in variants
    ]
    assert answers == [401, 401, 401]


@pytest.mark.parametrize(
    ("spelling", "why"),
    [
        (lambda t: t + "=", "not base64url"),
        (lambda t: t[:10] + "*" + t[10:], "not base64url"),
        (lambda t: t[:10] + "+" + t[11:], "not base64url"),
    ],
)
def test_a_token_is_decoded_strictly_with_the_reason_named(
    api: Api, spelling: Any, why: str
) -> None:
    token = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)["Authorization"][7:]
    r = api.client.get(
        f"/fhir/Patient/{api.patient_rid}", headers={"Authorization": f"Bearer {spelling(token)}"}
    )
    assert r.status_code == 401 and why in r.text, r.text


def test_unused_low_bits_in_the_last_character_are_refused() -> None:
    from medledger.api.tokens import TokenError, _b64, _unb64

    text = _b64(b"\xff\xfe")  # 3 characters: the last one carries 2 unused low bits
    assert _unb64(text, "signature") == b"\xff\xfe"
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    flipped = text[:-1] + last[last.index(text[-1]) + 1]  # same bytes to a lenient decoder
    with pytest.raises(TokenError, match="signature is not canonical"):
        _unb64(flipped, "signature")


def test_a_sign_out_is_keyed_on_the_signed_content_not_its_spelling(api: Api) -> None:
    from medledger.api.tokens import verify_token

    svc = api.services
    token = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)["Authorization"][7:]
    claims = verify_token(token, svc.trusted_issuers, svc.audience)
    svc.signed_out.revoke(claims.token_id, claims.expires)
    r = api.client.get(
        f"/fhir/Patient/{api.patient_rid}", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401 and "signed out" in r.text
