"""Access entries as AuditEvents: who asked, for which hospital, and who served and signed."""

from __future__ import annotations

from medledger.api.audit import to_audit_event


def _entry(**over: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "actor": "practitioner:aphp-paris/dr-b",
        "actor_org": "aphp-paris",
        "custodian": "chu-lyon",
        "signer": "org:chu-lyon",
        "pid": "ab" * 32,
        "rids": ["r1"],
        "action": "read",
        "purpose": "treatment",
        "basis": "consent:7",
        "outcome": "granted",
        "reason": "",
        "request": b"\x07" * 32,
        "time": 1_790_000_000_000,
        "height": 12,
        "tx": b"\x01" * 32,
        "n": 0,
    }
    entry.update(over)
    return entry


def _ids(event: dict, system: str) -> list[str]:  # type: ignore[type-arg]
    found = [a["who"]["identifier"] for a in event["agent"]]
    found += [e["what"]["identifier"] for e in event["entity"] if "identifier" in e["what"]]
    return [i["value"] for i in found if i["system"] == system]


def test_a_remote_read_names_the_requesting_hospital_the_server_and_the_signed_request() -> None:
    event = to_audit_event(_entry(), "Patient/p1")
    assert _ids(event, "urn:medledger:actor") == ["practitioner:aphp-paris/dr-b"]
    assert _ids(event, "urn:medledger:org") == ["aphp-paris", "chu-lyon"]
    source = event["agent"][-1]
    assert source["name"] == "served and signed by chu-lyon" and not source["requestor"]
    assert source["altId"] == "org:chu-lyon"
    assert event["source"]["observer"]["identifier"]["value"] == "chu-lyon"
    assert _ids(event, "urn:medledger:request") == ["07" * 32]


def test_a_local_read_has_one_organisation_agent_and_no_request() -> None:
    local = _entry(actor="practitioner:chu-lyon/dr-a", actor_org="chu-lyon", request=b"")
    event = to_audit_event(local, "Patient/p1")
    assert _ids(event, "urn:medledger:org") == ["chu-lyon"]
    assert _ids(event, "urn:medledger:request") == []


def test_a_research_export_names_the_hospital_that_received_the_facts() -> None:
    """A study's partial facts sent to the patient's answering hospital (access v3's `to`):
    the AuditEvent and the portal's trail both say where they went."""
    from medledger.web.render import templates
    from medledger.web.trail import grouped

    sent = _entry(
        actor="org:chu-lyon",
        actor_org="chu-lyon",
        action="export",
        purpose="research",
        basis="enrolment:lyon-2026-007",
        rids=[],
        request=b"",
        to="aphp-paris",
    )
    event = to_audit_event(sent, "Patient/p1")
    destination = event["agent"][-2]
    assert destination["type"]["coding"][0]["code"] == "110152"  # DCM Destination Role ID
    assert destination["who"]["identifier"]["value"] == "aphp-paris"
    assert event["agent"][-1]["name"] == "served and signed by chu-lyon"  # the source, last
    assert "110152" not in str(to_audit_event(_entry(), "Patient/p1"))  # a read has none

    (line,) = grouped([sent], {"aphp-paris": "AP-HP Paris"}, "ab" * 32, {})
    assert line["sent_to"] == "AP-HP Paris"
    html = templates.get_template("portal.html").render(
        title="My health records",
        hospital="CHU Lyon",
        csrf="c" * 32,
        pid="ab" * 32,
        records=[],
        sealed=[],
        accesses=[line],
        sections={
            "consents": [],
            "requests": [],
            "studies": [],
            "erasure": None,
            "waiting": None,
            "hours": 72,
            "members": [],
            "custodians": [],
            "acts": [],
            "rebind": None,
        },
        categories={},
        hospitals={},
        trail_orgs=[],
        types={},
    )
    assert "sent to AP-HP Paris" in html


def test_the_trail_filtered_by_a_hospital_shows_the_exports_it_received() -> None:
    """What did aphp-paris see or receive: its own reads, and the export chu-lyon sent it
    (access `to`); not chu-lille's read. The sender's filter keeps the export too."""
    from medledger.web.trail import grouped, hospitals_in

    sent = _entry(
        actor="org:chu-lyon",
        actor_org="chu-lyon",
        action="export",
        purpose="research",
        basis="enrolment:lyon-2026-007",
        rids=[],
        request=b"",
        to="aphp-paris",
    )
    read = _entry(time=1_790_000_001_000)  # aphp-paris's dr-b, served by chu-lyon
    other = _entry(actor="practitioner:chu-lille/dr-c", actor_org="chu-lille", to="")
    trail = [sent, read, other]

    def shown(who: str) -> list[tuple[str, str]]:
        lines = grouped(trail, {}, "ab" * 32, {}, who=who)
        return [(line["who"], line["sent_to"]) for line in lines]

    assert shown("aphp-paris") == [("dr-b, aphp-paris", ""), ("chu-lyon", "aphp-paris")]
    assert shown("chu-lyon") == [("chu-lyon", "aphp-paris")]
    assert shown("chu-lille") == [("dr-c, chu-lille", "")]
    # The form offers a hospital that only received (the trail's `who` is one of these).
    assert hospitals_in([sent]) == ["aphp-paris", "chu-lyon"]
