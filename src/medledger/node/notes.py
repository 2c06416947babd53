"""Documents a hospital keeps off chain while the chain holds only their hash.

Some facts must be written down and traceable, yet never sit on the chain for ever next to a
pid or a cohort: a break-the-glass justification (its reason code, "unconscious", is a fact
about the patient's health, and its note even more), a study's title ("Heart failure
outcomes" beside the pids enrolled), a referral letter (a template letter, "referral letter:
coronary bypass", is found again from its plain hash by trying the few procedures). The chain
keeps `SHA-256(document)`; the hospital that wrote the document keeps it here, in its home
(`notes/<hash hex>.json`, mode 0600), and shows it to whom may see it: its DPO reviewing the
opening, the patients of its portal.

Each document carries 16 random bytes (`salt`): without them its hash could be found by
trying the few reason codes or the likely titles. The stored bytes are exactly the hashed
ones, so a document read back is checked against the hash the chain holds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

#: A note's fields are short by design (a reason code, a justification, a title).
MAX_FIELD = 2000


class NoteStore:
    """One hospital's off-chain notes, by the hash the chain holds."""

    def __init__(self, home: Path) -> None:
        self.folder = home / "notes"

    def keep(self, kind: str, **fields: str) -> bytes:
        """Store a document; returns the SHA-256 to post on the chain."""
        for name, value in fields.items():
            if len(value) > MAX_FIELD:
                raise ValueError(f"{kind} {name}: at most {MAX_FIELD} characters")
        document = {"kind": kind, "salt": os.urandom(16).hex(), **fields}
        data = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(data).digest()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.folder / f"{digest.hex()}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return digest

    def get(self, digest: bytes) -> dict[str, Any] | None:
        """The document with this hash, if this hospital wrote it (and it is intact)."""
        if len(digest) != 32:
            return None
        try:
            data = (self.folder / f"{digest.hex()}.json").read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).digest() != digest:
            return None
        found: dict[str, Any] = orjson.loads(data)
        return found


def emergency_justification(store: NoteStore, reason: str, note: str) -> bytes:
    """Keep a break-the-glass justification (reason code and note); returns its hash."""
    from medledger.contracts.emergency import REASONS

    if reason not in REASONS:
        raise ValueError(f"reason: one of {', '.join(REASONS)}, not {reason!r}")
    if reason == "other" and not note.strip():
        raise ValueError("note: a written justification is required when the reason is 'other'")
    return store.keep("emergency", reason=reason, note=note)


def study_title(store: NoteStore, study: str, title: str) -> bytes:
    """Keep a study's title at its sponsor; returns the hash `research.register` posts."""
    return store.keep("study", study=study, title=title)


def title_of_study(store: NoteStore, study: dict[str, Any]) -> str | None:
    """The title of a study this hospital sponsors (None elsewhere: only its hash is public)."""
    digest = study.get("title_hash")
    kept = store.get(bytes(digest)) if isinstance(digest, bytes) else None
    if kept is None or kept.get("kind") != "study" or kept.get("study") != study.get("id"):
        return None
    return str(kept["title"])


def referral_letter(store: NoteStore, letter: bytes, name: str = "") -> bytes:
    """Keep a referral letter's record at the referring hospital; returns the salted hash
    `referral.create` posts as `procedure_hash` (never the letter's own SHA-256).

    The note holds the letter's SHA-256, so the letter (kept in the hospital's files) is
    checked against it, and the letter's text too when it is short UTF-8 text.
    """
    try:
        text = letter.decode()
    except UnicodeDecodeError:
        text = ""
    if len(text) > MAX_FIELD:
        text = ""
    digest = hashlib.sha256(letter).hexdigest()
    return store.keep("referral", letter_sha256=digest, name=name[:200], text=text)


def referral_letter_hash(store: NoteStore, letter_sha256: bytes) -> bytes:
    """As `referral_letter`, for a letter given by its SHA-256 only (`--letter-hash`)."""
    return store.keep("referral", letter_sha256=letter_sha256.hex(), name="", text="")
