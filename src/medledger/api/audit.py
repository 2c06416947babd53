"""The ledger's access entries as FHIR R4 AuditEvents, following IHE BALP.

BALP (Basic Audit Log Patterns) says how a RESTful access is recorded: `type` is the DICOM
"rest" event, `subtype` the FHIR interaction, `action` C/R/U/D/E, `agent` the user and the
organisation, `entity` the patient (role 1) and the data touched (role 4), `purposeOfEvent`
the HL7 PurposeOfUse. The ledger entry adds what BALP leaves to local policy: the basis of the
decision, the tx that recorded it and its block, so that each AuditEvent can be proved.

Agents: the actor (requestor), the requesting hospital when it is not the serving one, and
the serving hospital (source role, also `source.observer`), which is the entry's signer on
the chain: the contract takes it from the signing key, never from the entry's fields. A
remote access also names the hash of the signed request the serving hospital keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from medledger.contracts.access import reason_in_words

_ACTION = {
    "read": ("R", "read"),
    "search": ("E", "search-type"),
    "create": ("C", "create"),
    "update": ("U", "update"),
    "export": ("R", "read"),
    "delete": ("D", "delete"),
    "break-glass": ("E", "read"),
}
_PURPOSE = {
    "treatment": ("TREAT", "treatment"),
    "emergency": ("ETREAT", "Emergency Treatment"),
    "research": ("HRESCH", "healthcare research"),
    "patient-request": ("PATRQT", "patient requested"),
    "audit": ("HOPERAT", "healthcare operations"),
    "operations": ("HOPERAT", "healthcare operations"),
}
_V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def to_audit_event(entry: dict[str, Any], patient_ref: str) -> dict[str, Any]:
    action, interaction = _ACTION.get(entry["action"], ("E", entry["action"]))
    purpose_code, purpose_display = _PURPOSE.get(entry["purpose"], ("HOPERAT", entry["purpose"]))
    recorded = datetime.fromtimestamp(entry["time"] / 1000, UTC).isoformat(timespec="milliseconds")
    tx = entry["tx"].hex() if isinstance(entry["tx"], bytes) else str(entry["tx"])
    denied = entry["outcome"] == "denied"
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{tx[:32]}-{entry['n']}",
        "meta": {
            "profile": [
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
                if entry["action"] == "read"
                else "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query"
            ]
        },
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110112" if entry["action"] == "search" else "rest",
            "display": "Query" if entry["action"] == "search" else "Restful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": action,
        "recorded": recorded,
        "outcome": "4" if denied else "0",
        "outcomeDesc": reason_in_words(entry["reason"])
        if denied
        else f"allowed by {entry['basis']}",
        "purposeOfEvent": [
            {"coding": [{"system": _V3_ACT, "code": purpose_code, "display": purpose_display}]}
        ],
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "who": {"identifier": {"system": "urn:medledger:actor", "value": entry["actor"]}},
                "requestor": True,
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "110153",
                            "display": "Source Role ID",
                        }
                    ]
                },
                "who": {"identifier": {"system": "urn:medledger:org", "value": entry["custodian"]}},
                "name": f"served and signed by {entry['custodian']}",
                "altId": entry.get("signer") or f"org:{entry['custodian']}",
                "requestor": False,
            },
        ],
        "source": {
            "observer": {
                "identifier": {"system": "urn:medledger:org", "value": entry["custodian"]}
            },
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [
            {
                "what": {"reference": patient_ref},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            },
            *[
                {
                    "what": {"identifier": {"system": "urn:medledger:rid", "value": rid}},
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "2",
                        "display": "System Object",
                    },
                    "role": {
                        "system": "http://terminology.hl7.org/CodeSystem/object-role",
                        "code": "4",
                        "display": "Domain Resource",
                    },
                }
                for rid in entry["rids"]
            ],
            {
                "what": {"identifier": {"system": "urn:medledger:tx", "value": tx}},
                "description": f"ledger tx in block {entry['height']}; "
                f"basis {entry['basis'] or '-'}",
            },
        ],
    }
    if entry["actor_org"] != entry["custodian"]:
        event["agent"].insert(
            1,
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                            "code": "PROV",
                            "display": "healthcare provider",
                        }
                    ]
                },
                "who": {"identifier": {"system": "urn:medledger:org", "value": entry["actor_org"]}},
                "requestor": True,
            },
        )
    if entry.get("to"):  # an export's receiving hospital (access v3), before the source
        event["agent"].insert(
            len(event["agent"]) - 1,
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "110152",
                            "display": "Destination Role ID",
                        }
                    ]
                },
                "who": {"identifier": {"system": "urn:medledger:org", "value": entry["to"]}},
                "name": f"sent to {entry['to']}",
                "requestor": False,
            },
        )
    request = entry.get("request")
    if request:
        event["entity"].append(
            {
                "what": {
                    "identifier": {
                        "system": "urn:medledger:request",
                        "value": request.hex() if isinstance(request, bytes) else str(request),
                    }
                },
                "description": "SHA-256 of the signed request the serving hospital keeps",
            }
        )
    return event
