"""Review of issue 17: what the new pages show must be what the token and the grounds allow."""

from __future__ import annotations

import orjson

from tests.api.conftest import Api, _signed_in


def _name_and_ins(api: Api) -> tuple[str, str]:
    patient = orjson.loads(api.services.vault.get(api.patient_rid))
    family = str(patient["name"][0]["family"])
    ins = next(str(i["value"]) for i in patient.get("identifier", []) if i.get("value"))
    return family, ins


def test_a_clinician_whose_token_reads_no_patient_resource_is_not_shown_the_name_or_ins(
    api: Api,
) -> None:
    family, ins = _name_and_ins(api)
    client, _ = _signed_in(api, api.token("Practitioner/dr-martin", "user/Observation.rs"))
    page = client.get(f"/clinician?patient={api.pid}").text
    assert "<td>" in page  # it does see the observations
    assert family not in page and ins not in page, "the header read a Patient it may not"


def test_a_patient_token_without_patient_scope_still_sees_its_records_but_no_identity(
    api: Api,
) -> None:
    family, ins = _name_and_ins(api)
    headers = api.token(f"Patient/{api.pid}", "patient/Observation.rs", api.pid)
    client, _ = _signed_in(api, headers)
    page = client.get("/portal").text
    assert ins not in page


def test_a_hospital_filter_the_form_cannot_show_is_not_applied(api: Api) -> None:
    from tests.api.conftest import eventually

    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    client, _ = _signed_in(api, headers)
    assert eventually(lambda: "block " in client.get("/portal").text)  # its own visit
    page = client.get("/portal?who=no-such-hospital").text
    # the select shows "all": the table must not be silently emptied by the unknown code
    assert "nothing matches this filter" not in page
    assert 'value="no-such-hospital" selected' not in page


def test_the_language_switch_goes_back_only_to_this_site_and_injects_no_header(api: Api) -> None:
    for evil in (
        "//evil.example/x",
        "https://evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/\t/evil.example",
        "/x\r\nSet-Cookie: a=b",
        "javascript:alert(1)",
    ):
        r = api.client.get("/lang/fr", params={"next": evil}, follow_redirects=False)
        assert r.status_code == 303
        location = r.headers["location"]
        assert location.startswith("/") and not location.startswith(("//", "/\\")), location
        assert (
            "\r" not in location
            and "\n" not in location
            and "set-cookie"
            not in r.headers.get("set-cookie", "").lower().replace("medledger_lang", "")
        ), r.headers
    r = api.client.get("/lang/xx", params={"next": "/portal"}, follow_redirects=False)
    assert "set-cookie" not in r.headers  # an unknown language sets nothing
    # The page's filters survive the switch: the link carries its query, the switch keeps it.
    page = api.client.get("/explorer?x=1").text
    assert "/lang/fr?next=/explorer%3Fx%3D1" in page
    r = api.client.get("/lang/fr", params={"next": "/portal?who=chu-lyon"}, follow_redirects=False)
    assert r.headers["location"] == "/portal?who=chu-lyon"


def test_the_consent_form_grants_only_known_categories_for_the_signed_in_patient(api: Api) -> None:
    from tests.api.conftest import consents, csrf

    headers = api.token(f"Patient/{api.pid}", "patient/*.rs patient/Consent.c", api.pid)
    client, page = _signed_in(api, headers)
    before = len(consents(api, api.pid))
    r = client.post(
        "/portal/consent",
        data={
            "grantee": "org:aphp-paris",
            "purpose": "treatment",
            "categories": ["labs", "no-such-category"],
            "csrf": csrf(page),
        },
    )
    granted = consents(api, api.pid)[before:]
    assert all("no-such-category" not in c["categories"] for c in granted), (r.status_code, granted)
    r = client.post(
        "/portal/consent",
        data={"grantee": "org:aphp-paris", "purpose": "treatment", "categories": ["labs"]},
    )
    assert r.status_code in (400, 403), r.status_code  # no CSRF token, no consent


def test_the_french_portal_has_no_english_sentence_left(api: Api) -> None:
    """Consent statuses, the erasure section and the acts in the patient's name are French too,
    with hospitals by their names."""
    from tests.api.conftest import csrf, eventually

    scopes = "patient/*.rs patient/Consent.cu patient/Patient.d"
    client, page = _signed_in(api, api.token(f"Patient/{api.pid}", scopes, api.pid))
    client.headers["accept-language"] = "fr-FR,fr;q=0.9"
    page = client.get("/portal").text
    assert "Vous pouvez demander à chaque hôpital d&#39;effacer vos données" in page
    assert "You may ask every hospital" not in page
    client.post(
        "/portal/consent",
        data={
            "grantee": "org:aphp-paris",
            "purpose": "treatment",
            "categories": "*",
            "csrf": csrf(page),
        },
    )
    client.post("/portal/erasure", data={"csrf": csrf(page)})
    assert eventually(
        lambda: "Demande n°1, déposée en votre nom par CHU de Lyon" in client.get("/portal").text
    )
    page = client.get("/portal").text
    for english in (
        "Nothing is erased",
        ">active<",
        "consent.grant",
        "erasure.request",
        ">portal<",
        ">chu-lyon<",
    ):
        assert english not in page, english
    assert "en vigueur" in page and "a accordé un consentement" in page and "par ce portail" in page


def test_a_consent_form_with_nothing_ticked_grants_nothing(api: Api) -> None:
    """ "All my records" is a box of its own: an empty selection is not a grant of everything."""
    from tests.api.conftest import consents, csrf

    scopes = "patient/*.rs patient/Consent.c"
    client, page = _signed_in(api, api.token(f"Patient/{api.pid}", scopes, api.pid))
    assert 'name="categories" value="*"' in page  # the explicit choice
    client.headers["accept-language"] = "fr"
    r = client.post(
        "/portal/consent",
        data={"grantee": "org:aphp-paris", "purpose": "treatment", "csrf": csrf(page)},
    )
    assert r.status_code == 400 and "rien n&#39;a été accordé" in r.text, r.text
    assert consents(api, api.pid) == []
    r = client.post(
        "/portal/consent",
        data={
            "grantee": "org:aphp-paris",
            "purpose": "treatment",
            "categories": ["*"],
            "csrf": csrf(page),
        },
    )
    (granted,) = consents(api, api.pid)
    assert granted["categories"] == ["*"]
