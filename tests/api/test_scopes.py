"""SMART scopes as the one decision of the API and the pages: v1, v2 and category restrictions."""

from __future__ import annotations

import pytest

from medledger.api.scopes import ScopeError, permission

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


def _observation(code: str) -> dict[str, object]:
    system, _, value = code.partition("|")
    return {
        "resourceType": "Observation",
        "category": [{"coding": [{"system": system, "code": value}]}],
    }


def test_v1_and_v2_scopes_grant_their_letters() -> None:
    assert permission({"patient/*.read"}, "Observation", "search").levels == {"patient"}
    assert not permission({"patient/*.read"}, "Observation", "create")
    assert permission({"user/Observation.cu"}, "Observation", "update")
    assert not permission({"user/Observation.uc"}, "Observation", "update")  # c r u d s order
    assert not permission({"launch", "openid"}, "Observation", "read")


def test_a_category_restriction_reaches_only_resources_with_that_coding() -> None:
    allowed = permission({f"patient/Observation.rs?category={LAB}"}, "Observation", "read")
    assert allowed.categories == frozenset({LAB})
    assert allowed.covers(_observation(LAB)) and not allowed.covers(_observation(VITALS))
    bare = permission({"patient/Observation.rs?category=vital-signs"}, "Observation", "read")
    assert bare.covers(_observation(VITALS)) and not bare.covers({"resourceType": "Observation"})
    several = permission(
        {f"patient/Observation.rs?category={LAB},{VITALS}"}, "Observation", "search"
    )
    assert several.covers(_observation(VITALS))


def test_an_unrestricted_grant_wins_over_a_restricted_one() -> None:
    scopes = {f"patient/Observation.rs?category={LAB}", "patient/*.rs"}
    assert permission(scopes, "Observation", "read").categories is None


@pytest.mark.parametrize(
    ("scope", "why"),
    [
        ("patient/Observation.rs?code=http://loinc.org|4548-4", "'code' is not supported"),
        ("patient/Observation.rs?category=", "not system|code or code"),
        ("patient/Observation.rs?category=|lab", "not system|code or code"),
        ("patient/Observation.rs?category", "not a query string"),
    ],
)
def test_a_restriction_that_cannot_be_honoured_is_an_error(scope: str, why: str) -> None:
    with pytest.raises(ScopeError, match=why.replace("|", r"\|")):
        permission({scope}, "Observation", "read")
