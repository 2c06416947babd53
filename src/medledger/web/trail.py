"""The patient's access trail as they read it: grouped by who and day, in words.

The ledger keeps one entry per read, search or refusal (with its proof); a patient wants to know
who looked at their data, when, why and on what grounds: "Dr dubois, AP-HP Paris, for your
treatment, under your consent #1 of 2026-03-03 — 4 reads". Each group keeps the proof links of
its entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medledger.contracts.access import DENIAL_REASONS, reason_in_words
from medledger.web.render import when

_PURPOSES = {
    "treatment": "for your treatment",
    "emergency": "in an emergency",
    "research": "for research",
    "patient-request": "at your request",
    "export": "to export",
}
_ACTIONS = {"read": "read", "search": "searched", "export": "exported", "create": "wrote"}


#: A phrase to translate, with its placeholders: `_(text, **values)` in the template.
Phrase = tuple[str, dict[str, object]]


def actor_in_words(actor: str, names: Mapping[str, str], pid: str) -> str:
    """`practitioner:aphp-paris/dr-a` → "dr-a, AP-HP Paris"; `org:chu-lille` → "CHU de Lille";
    the patient's own pid → "you"."""
    kind, _, rest = actor.partition(":")
    if kind == "practitioner":
        org, _, who = rest.partition("/")
        return f"{who}, {names.get(org, org)}"
    if kind == "org":
        return names.get(rest, rest)
    if actor == pid or rest == pid or actor == f"patient:{pid}":
        return "you"
    return actor


def basis_in_words(basis: str, consents: Mapping[int, Mapping[str, Any]]) -> Phrase:
    """`consent:1` → ("under your consent #{id} of {day}", ...); `custodian` → "as the hospital
    that made the record"..."""
    kind, _, ident = basis.partition(":")
    if kind == "consent" and ident.isdigit():
        found = consents.get(int(ident))
        if found:
            day = when(int(found["start_ms"]))[:10]
            return ("under your consent #{id} of {day}", {"id": ident, "day": day})
        return ("under your consent #{id}", {"id": ident})
    if kind == "custodian":
        return ("as the hospital that made the record", {})
    if kind == "emergency":
        return ("by emergency access #{id} (reviewed by the hospital's DPO)", {"id": ident})
    if kind == "referral":
        return ("under referral #{id}", {"id": ident})
    if kind == "study":
        return ("for study {id}, which you joined", {"id": ident})
    if kind == "patient":
        return ("you, yourself", {})
    return (basis, {})


def refusal_in_words(code: str) -> str:
    """A denial code as the patient reads it ("no consent of yours covered it")."""
    return DENIAL_REASONS.get(code) or reason_in_words(code)


def hospitals_in(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hospitals the filter of `grouped` offers: each that acted, or received an export."""
    orgs = {str(a["actor_org"]) for a in entries} | {str(a.get("to") or "") for a in entries}
    return sorted(orgs - {""})


def grouped(
    entries: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    pid: str,
    consents: Mapping[int, Mapping[str, Any]],
    *,
    who: str = "",
    outcome: str = "",
) -> list[dict[str, Any]]:
    """The trail grouped by (actor, day, purpose, basis, outcome), newest first; `who` keeps
    what one hospital (its org code) did or received: its actors' acts, and the exports sent
    to it (`to`); `outcome` only "granted" or "denied"."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for a in sorted(entries, key=lambda e: int(e["time"]), reverse=True):
        if who and who not in (a["actor_org"], a.get("to")):
            continue
        if outcome and a["outcome"] != outcome:
            continue
        day = when(int(a["time"]))[:10]
        basis = str(a["basis"] or "")
        key = (str(a["actor"]), day, str(a["purpose"]), basis, str(a["outcome"]), str(a["reason"]))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "day": day,
                "last": int(a["time"]),
                "who": actor_in_words(str(a["actor"]), names, pid),
                "org": names.get(str(a["actor_org"]), str(a["actor_org"])),
                "why": _PURPOSES.get(str(a["purpose"]), str(a["purpose"])),
                "grounds": basis_in_words(basis, consents)
                if a["outcome"] == "granted"
                else ("refused: {reason}", {"reason": refusal_in_words(str(a["reason"]))}),
                "granted": a["outcome"] == "granted",
                "actions": {},
                "served_by": set(),
                "signers": set(),
                "requested_by": set(),
                "sent_to": set(),
                "proofs": [],
            }
        actions: dict[str, int] = group["actions"]
        verb = _ACTIONS.get(str(a["action"]), str(a["action"]))
        actions[verb] = actions.get(verb, 0) + 1
        # Who answers for the line is the entry's signer (the serving hospital); a remote act
        # carries its hospital's signed request, verified on the chain.
        group["served_by"].add(names.get(str(a["custodian"]), str(a["custodian"])))
        group["signers"].add(_hex(a.get("signer")))
        if a.get("request_signer"):
            group["requested_by"].add(actor_in_words(str(a["request_signer"]), names, pid))
        if a.get("to"):  # an export's receiving hospital (access v3)
            group["sent_to"].add(names.get(str(a["to"]), str(a["to"])))
        group["proofs"].append({"tx": _hex(a["tx"]), "height": a["height"]})
    shown = []
    for g in groups.values():
        g["what"] = list(g["actions"].items())  # (verb, count), translated by the template
        g["served_by"] = ", ".join(sorted(g["served_by"]))
        g["signers"] = " ".join(sorted(x for x in g["signers"] if x))
        g["requested_by"] = ", ".join(sorted(g["requested_by"]))
        g["sent_to"] = ", ".join(sorted(g["sent_to"]))
        shown.append(g)
    return shown


def _hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else str(value or "")
