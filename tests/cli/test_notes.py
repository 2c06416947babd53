"""Notes kept off chain: the chain holds a salted hash, the hospital the document."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medledger.node.notes import (
    NoteStore,
    emergency_justification,
    referral_letter,
    referral_letter_hash,
    study_title,
    title_of_study,
)


def test_a_justification_is_kept_here_and_only_its_salted_hash_goes_on_chain(
    tmp_path: Path,
) -> None:
    store = NoteStore(tmp_path)
    first = emergency_justification(store, "unconscious", "found at 3 am")
    again = emergency_justification(store, "unconscious", "found at 3 am")
    assert first != again  # salted: the few reason codes cannot be tried against the hash
    kept = store.get(first)
    assert kept is not None and (kept["reason"], kept["note"]) == ("unconscious", "found at 3 am")
    assert (tmp_path / "notes" / f"{first.hex()}.json").stat().st_mode & 0o077 == 0
    (tmp_path / "notes" / f"{first.hex()}.json").write_bytes(b'{"reason": "urgent-care"}')
    assert store.get(first) is None  # a document that no longer matches its hash is not shown
    assert NoteStore(tmp_path / "elsewhere").get(again) is None


@pytest.mark.parametrize(
    ("reason", "note", "words"),
    [("asleep", "x", "reason: one of"), ("other", " ", "note: a written justification")],
)
def test_a_justification_needs_a_known_reason_and_a_note_for_other(
    tmp_path: Path, reason: str, note: str, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        emergency_justification(NoteStore(tmp_path), reason, note)


def test_a_study_title_shows_only_for_the_study_it_was_kept_for(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    digest = study_title(store, "s-1", "Heart failure outcomes")
    assert title_of_study(store, {"id": "s-1", "title_hash": digest}) == "Heart failure outcomes"
    assert title_of_study(store, {"id": "s-2", "title_hash": digest}) is None
    assert title_of_study(store, {"id": "s-1", "title_hash": b""}) is None


def test_a_referral_letter_goes_on_chain_only_as_a_salted_hash(tmp_path: Path) -> None:
    """Issue 11 review, item 4: sha256("referral letter: coronary bypass") was on the chain
    beside the pid; trying the likely procedures found it."""
    store = NoteStore(tmp_path)
    letter = b"referral letter: coronary bypass"
    posted = referral_letter(store, letter, "bypass.txt")
    assert posted != hashlib.sha256(letter).digest()
    assert posted != referral_letter(store, letter)  # the same letter twice: two hashes
    kept = store.get(posted)
    assert kept is not None and kept["kind"] == "referral"
    assert kept["letter_sha256"] == hashlib.sha256(letter).hexdigest()
    assert kept["text"] == "referral letter: coronary bypass"
    # A letter given by its hash only is salted as well.
    given = referral_letter_hash(store, hashlib.sha256(letter).digest())
    assert given != hashlib.sha256(letter).digest() and store.get(given) is not None
