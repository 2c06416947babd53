"""A revocation the recording hospital signs without evidence (channel `recorder`) checks the
practitioner it names like any request taken, and takes no other channel or free text."""

from __future__ import annotations

import pytest

from medledger.ledger.errors import Code
from tests.contracts.test_custody import body, events, granted_id
from tests.support.world import World


@pytest.mark.parametrize(
    "extra",
    [
        {"taken_by": "res-a"},  # a researcher: not a REQUEST_ROLES taker
        {"taken_by": "nobody"},  # no such practitioner at h0
        {"channel": "bogus"},  # not one of CHANNELS
        {"channel": "portal", "taken_by": "dr-a"},  # portal takes no practitioner
    ],
)
def test_a_recorder_revoke_refuses_a_taker_or_channel_it_does_not_check(
    extra: dict[str, str],
) -> None:
    w = World()
    cid = granted_id(w.ok("h0", "consent.grant", body(w, "org:h2", taken_by="dr-a")))
    result = w.send("h0", "consent.revoke", {"id": cid, **extra})
    acted = events(result, "patient.acted_for") if result.ok else []
    assert not result.ok, (
        f"accepted {extra} silently; the trail says channel={acted[0]['channel']!r} "
        f"taken_by={acted[0]['taken_by']!r}"
    )
    assert result.code in (Code.UNAUTHORIZED, Code.INVALID_BODY)


def test_a_recorder_revoke_carries_no_unbounded_free_text_next_to_a_pid() -> None:
    """Every free-text field of every contract message is bounded and refused naming the
    field: a diagnosis written into `channel` or `taken_by` never reaches a block."""
    w = World()
    cid = granted_id(w.ok("h0", "consent.grant", body(w, "org:h2", taken_by="dr-a")))
    text = "patient is HIV positive, under treatment since 2019; " * 200  # ~10 KB
    result = w.send("h0", "consent.revoke", {"id": cid, "channel": text, "taken_by": text})
    assert not result.ok and result.code == Code.INVALID_BODY, (
        f"accepted {len(text)} characters of free text in channel and taken_by"
    )


def test_a_recorder_revoke_names_the_practitioner_who_took_it() -> None:
    w = World()
    cid = granted_id(w.ok("h0", "consent.grant", body(w, "org:h2", taken_by="dr-a")))
    result = w.ok("h0", "consent.revoke", {"id": cid, "taken_by": "dr-a"})
    (acted,) = events(result, "patient.acted_for")
    assert (acted["channel"], acted["taken_by"]) == ("recorder", "dr-a")
