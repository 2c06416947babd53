"""The patient's pages in French and English: every text of them has its French, and the
language follows the browser unless the switch chose one."""

from __future__ import annotations

import re
from pathlib import Path

from medledger.contracts.access import DENIAL_REASONS
from medledger.web import i18n, trail
from medledger.web.portal import CATEGORY_WORDS
from medledger.web.records import TYPE_WORDS
from medledger.web.render import day_in_words

TEMPLATES = Path(i18n.__file__).parent / "templates"
_CALL = re.compile(r"""_\(\s*"([^"]+)"|_\(\s*'([^']+)'""")


def _texts(*names: str) -> set[str]:
    found = set()
    for name in names:
        for a, b in _CALL.findall((TEMPLATES / name).read_text()):
            found.add(a or b)
    return found


def test_every_text_of_the_patients_pages_has_its_french() -> None:
    texts = _texts("portal.html", "portal_sections.html", "base.html", "login.html")
    texts |= set(CATEGORY_WORDS.values())
    texts |= set(trail._PURPOSES.values()) | set(trail._ACTIONS.values())
    texts |= {"high", "low", "abnormal", "you"} | set(TYPE_WORDS.values())
    texts |= {words for code, words in DENIAL_REASONS.items() if code != "denied"}
    table_headers = {"day", "who", "what", "why", "on what grounds", "served by", "proof"}
    missing = sorted(t for t in texts | table_headers if t not in i18n.FRENCH)
    assert missing == []


def test_the_grounds_of_an_access_are_phrases_to_translate() -> None:
    text, values = trail.basis_in_words("consent:4", {4: {"start_ms": 1_772_500_000_000}})
    assert i18n.translator("fr")(text, **values) == "selon votre consentement n°4 du 2026-03-03"
    assert i18n.translator("en")(text, **values) == "under your consent #4 of 2026-03-03"


def test_dates_read_as_people_write_them() -> None:
    assert day_in_words("2026-03-03", "fr") == "3 mars 2026"
    assert day_in_words("2026-03-03T10:00:00Z", "en") == "3 March 2026"
    assert day_in_words("unknown", "fr") == "unknown"  # never a crash on an odd value


def test_a_refusal_reads_in_the_patients_language() -> None:
    text, values = trail.grouped(
        [
            {
                "time": 1_772_500_000_000,
                "actor": "org:chu-lille",
                "actor_org": "chu-lille",
                "custodian": "chu-lyon",
                "purpose": "treatment",
                "basis": "",
                "outcome": "denied",
                "reason": "no consent",
                "action": "read",
                "signer": "",
                "tx": b"\x01",
                "height": 3,
            }
        ],
        {"chu-lille": "CHU de Lille"},
        "f" * 64,
        {},
    )[0]["grounds"]
    assert i18n.translator("fr")(text, **values) == (
        "refusé : aucun de vos consentements ne le couvrait"
    )
    assert i18n.translator("en")(text, **values) == "refused: no consent of yours covered it"
