"""The FHIR API's view of studies: ResearchStudy and ResearchSubject, read from the chain.

A study is read by anyone a scope allows, its title only by the sponsor's own staff; a
subject (an enrolment) only by the patient themself or by the practitioners of a hospital
that is custodian of the patient, and every such search is on the access trail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from fhirpy import SyncFHIRClient

from medledger.interop.fhir_research import subject_id
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.node.notes import NoteStore, study_title
from medledger.vault import Vault

from .conftest import Api, eventually
from .test_fhirpy_client import served  # noqa: F401  (the API on loopback, for fhirpy)

EVIDENCE = hashlib.sha256(b"the signed enrolment form").digest()
STAFF = "user/*.rs"


@dataclass
class Studies:
    api: Api
    other_pid: str  # a second patient of chu-lyon, enrolled then withdrawn
    remote_pid: str  # a patient only aphp-paris holds, enrolled in the same study


def _ingest(node: Node, home: Path, seed: int) -> str:
    bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=seed)["chu-lyon"][0]
    with Vault.open(node.config.vault_config()) as vault:
        result = Ingestor(node, vault).ingest_bytes(orjson.dumps(bundle), "p.json")
    assert not result.rejections
    (pid,) = result.pids
    return str(pid)


def _enrol(node: Node, study: str, pid: str, taken_by: str) -> None:
    body = {"study": study, "pid": pid, "evidence_hash": EVIDENCE, "taken_by": taken_by}
    node.wallet.send("research.enrol", body)


@pytest.fixture
def studies(api: Api, consortium: list[Path]) -> Iterator[Studies]:
    node = api.services.node
    title_hash = study_title(NoteStore(node.config.home), "s-2026-01", "Heart failure outcomes")
    node.wallet.send(
        "research.register",
        {
            "study": "s-2026-01",
            "protocol_hash": hashlib.sha256(b"protocol").digest(),
            "ethics_ref": "CPP-2026-0142",
            "categories": ["labs", "medications"],
            "min_cohort": 3,
            "title_hash": title_hash,
        },
    )
    other_pid = _ingest(node, consortium[0], seed=11)
    _enrol(node, "s-2026-01", api.pid, "dr-martin")
    _enrol(node, "s-2026-01", other_pid, "dr-martin")
    withdrawal = {"study": "s-2026-01", "pid": other_pid, "evidence_hash": EVIDENCE}
    node.wallet.send("research.withdraw", withdrawal | {"taken_by": "dr-martin"})
    with Node.open(consortium[1]) as paris:  # through the first node's served ledger
        paris.wallet.send(
            "identity.register",
            {"practitioner": "dr-roux", "key": b"\x01" * 32, "roles": ["physician"]},
        )
        remote_pid = _ingest(paris, consortium[1], seed=12)
        _enrol(paris, "s-2026-01", remote_pid, "dr-roux")
        paris.wallet.send(
            "research.register",
            {
                "study": "p-2026-07",
                "protocol_hash": hashlib.sha256(b"paris protocol").digest(),
                "ethics_ref": "CPP-2026-0999",
                "categories": ["labs"],
                "min_cohort": 5,
                "title_hash": hashlib.sha256(b"kept at aphp-paris").digest(),
            },
        )
    yield Studies(api, other_pid, remote_pid)


def _get(api: Api, path: str, scope: str = STAFF, **kw: str) -> dict:  # type: ignore[type-arg]
    headers = api.token("Practitioner/dr-martin", scope) | kw
    r = api.client.get(path, headers=headers)
    assert r.status_code == 200, r.text
    found: dict = r.json()  # type: ignore[type-arg]
    return found


def _ids(bundle: dict) -> list[str]:  # type: ignore[type-arg]
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_a_study_reads_as_a_research_study_its_title_only_for_the_sponsors_staff(
    studies: Studies,
) -> None:
    api = studies.api
    study = _get(api, "/fhir/ResearchStudy/s-2026-01")
    assert study["resourceType"] == "ResearchStudy" and study["status"] == "active"
    assert study["title"] == "Heart failure outcomes"  # kept by chu-lyon, the sponsor
    assert {"system": "urn:medledger:ethics-approval", "value": "CPP-2026-0142"} in study[
        "identifier"
    ]
    codes = [c["coding"][0]["code"] for c in study["category"]]
    assert codes == ["labs", "medications"]
    assert study["sponsor"]["identifier"]["value"] == "chu-lyon"
    # Another hospital's study: no title here, even for staff; only its hash is on the chain.
    assert "title" not in _get(api, "/fhir/ResearchStudy/p-2026-07")
    # A patient reads the study they are in, without the sponsor's title.
    patient = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    seen = api.client.get("/fhir/ResearchStudy/s-2026-01", headers=patient).json()
    assert seen["id"] == "s-2026-01" and "title" not in seen
    missing = api.client.get("/fhir/ResearchStudy/nope", headers=patient)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_research_study_search_by_id_and_status(studies: Studies) -> None:
    api = studies.api
    assert sorted(_ids(_get(api, "/fhir/ResearchStudy"))) == ["p-2026-07", "s-2026-01"]
    assert _ids(_get(api, "/fhir/ResearchStudy?_id=p-2026-07")) == ["p-2026-07"]
    assert _ids(_get(api, "/fhir/ResearchStudy?_id=p-2026-07,nope")) == ["p-2026-07"]
    assert _ids(_get(api, "/fhir/ResearchStudy?_id=p-2026-07&_id=s-2026-01")) == []  # AND
    assert _get(api, "/fhir/ResearchStudy?status=completed")["total"] == 0
    by_ethics = "/fhir/ResearchStudy?identifier=urn:medledger:ethics-approval|CPP-2026-0999"
    assert _ids(_get(api, by_ethics)) == ["p-2026-07"]
    assert _get(api, "/fhir/ResearchStudy?identifier=urn:other|CPP-2026-0999")["total"] == 0
    api.services.node.wallet.send("research.close", {"study": "s-2026-01"})
    done = _get(
        api, "/fhir/ResearchStudy?status=http://hl7.org/fhir/research-study-status|completed"
    )
    assert _ids(done) == ["s-2026-01"]
    # Paged with _count: the next link carries the offset.
    first = _get(api, "/fhir/ResearchStudy?_count=1")
    assert first["total"] == 2 and len(_ids(first)) == 1
    (following,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = _get(api, "/fhir" + following.split("/fhir", 1)[1])
    assert _ids(second) != _ids(first) and len(_ids(second)) == 1


def test_unknown_parameters_are_left_out_or_refused_under_strict(studies: Studies) -> None:
    api = studies.api
    lenient = _get(api, "/fhir/ResearchStudy?title=heart&status=active")
    (self_link,) = [link["url"] for link in lenient["link"] if link["relation"] == "self"]
    assert "status=active" in self_link and "title" not in self_link
    (outcome,) = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "title" in outcome["resource"]["issue"][0]["diagnostics"]
    headers = api.token("Practitioner/dr-martin", STAFF) | {"Prefer": "handling=strict"}
    strict = api.client.get("/fhir/ResearchSubject?focus=x&study=s-2026-01", headers=headers)
    assert strict.status_code == 400 and "focus" in strict.text
    # A modifier the search does not apply is not silently dropped either.
    modified = _get(api, "/fhir/ResearchSubject?status:not=withdrawn")
    assert any(e["search"]["mode"] == "outcome" for e in modified["entry"])


def test_capability_statement_lists_exactly_what_the_research_views_answer(
    studies: Studies,
) -> None:
    statement = studies.api.client.get("/fhir/metadata").json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    study = by_type["ResearchStudy"]
    assert [i["code"] for i in study["interaction"]] == ["read", "search-type"]
    assert [p["name"] for p in study["searchParam"]] == ["_id", "identifier", "status", "_count"]
    subject = by_type["ResearchSubject"]
    assert [i["code"] for i in subject["interaction"]] == ["search-type"]
    assert [p["name"] for p in subject["searchParam"]] == [
        "study",
        "patient",
        "individual",
        "status",
        "_count",
    ]
    api = studies.api
    headers = api.token("Practitioner/dr-martin", STAFF)
    not_offered = api.client.get(f"/fhir/ResearchSubject/{'0' * 64}", headers=headers)
    assert not_offered.status_code == 405


def test_subjects_only_of_this_hospitals_patients_never_the_whole_study(studies: Studies) -> None:
    api = studies.api
    found = _get(api, "/fhir/ResearchSubject?study=ResearchStudy/s-2026-01")
    # Three patients are in the study; the one only aphp-paris holds is not chu-lyon's to list.
    pids = sorted(e["resource"]["individual"]["identifier"]["value"] for e in found["entry"])
    assert pids == sorted([api.pid, studies.other_pid])
    assert studies.remote_pid not in orjson.dumps(found).decode()
    statuses = {
        e["resource"]["individual"]["identifier"]["value"]: e["resource"]["status"]
        for e in found["entry"]
    }
    assert statuses == {api.pid: "on-study", studies.other_pid: "withdrawn"}
    withdrawn = _get(api, "/fhir/ResearchSubject?study=s-2026-01&status=withdrawn")
    assert _ids(withdrawn) == [subject_id("s-2026-01", studies.other_pid)]
    # By patient: the local Patient id, or the pid.
    mine = _get(api, f"/fhir/ResearchSubject?patient=Patient/{api.patient_rid}")
    assert _ids(mine) == [subject_id("s-2026-01", api.pid)]
    assert _ids(_get(api, f"/fhir/ResearchSubject?individual={api.pid}")) == _ids(mine)
    # Naming a patient this hospital is no custodian of finds nothing, not their enrolment.
    assert _get(api, f"/fhir/ResearchSubject?patient={studies.remote_pid}")["total"] == 0
    # Each patient's search is on their access trail.
    engine = api.services.node.engine

    def on_trail() -> bool:
        trail = engine.query("access/of_patient", {"pid": studies.other_pid})
        return any(e.get("action") == "search" for e in trail)

    assert eventually(on_trail)


def test_a_patient_sees_their_own_enrolments_only(studies: Studies) -> None:
    api = studies.api
    headers = api.token(f"Patient/{api.pid}", "patient/*.rs", api.pid)
    own = api.client.get("/fhir/ResearchSubject", headers=headers).json()
    assert _ids(own) == [subject_id("s-2026-01", api.pid)]
    own_by_study = api.client.get("/fhir/ResearchSubject?study=s-2026-01", headers=headers)
    assert _ids(own_by_study.json()) == _ids(own)
    other = api.client.get(f"/fhir/ResearchSubject?patient={studies.other_pid}", headers=headers)
    assert other.status_code == 403


def test_a_researcher_or_dpo_reads_the_study_but_no_enrolment_list(studies: Studies) -> None:
    """ResearchSubject is for treatment roles (an enrolment list names patients): a researcher
    or a DPO of the hospital is refused it, and reads the study itself (README)."""
    from medledger.ledger.keys import SigningKey

    api = studies.api
    for name, roles in (("res-lyon", ["researcher"]), ("dpo-lyon", ["dpo"])):
        key = SigningKey.generate()
        key.save(api.services.node.config.practitioner_key_path(name))
        api.services.node.wallet.send(
            "identity.register", {"practitioner": name, "key": key.public_key, "roles": roles}
        )
        headers = api.token(f"Practitioner/{name}", STAFF)
        refused = api.client.get("/fhir/ResearchSubject?study=s-2026-01", headers=headers)
        assert refused.status_code == 403, (name, refused.text)
        assert "may not act for treatment" in refused.text and api.pid not in refused.text
        study = api.client.get("/fhir/ResearchStudy/s-2026-01", headers=headers)
        assert study.status_code == 200 and study.json()["id"] == "s-2026-01"


def test_no_scope_for_research_types_is_refused(studies: Studies) -> None:
    api = studies.api
    headers = api.token("Practitioner/dr-martin", "user/Observation.rs")
    assert api.client.get("/fhir/ResearchStudy", headers=headers).status_code == 403
    assert api.client.get("/fhir/ResearchSubject", headers=headers).status_code == 403


def test_fhirpy_searches_studies_and_subjects(
    studies: Studies,
    served: tuple[Api, str],  # noqa: F811
) -> None:
    api, url = served
    staff = api.token("Practitioner/dr-martin", STAFF)["Authorization"]
    client = SyncFHIRClient(url, authorization=staff)
    active = client.resources("ResearchStudy").search(status="active").fetch_all()
    assert sorted(s["id"] for s in active) == ["p-2026-07", "s-2026-01"]
    study = client.reference("ResearchStudy", "s-2026-01").to_resource()
    assert study["title"] == "Heart failure outcomes"
    subjects = client.resources("ResearchSubject").search(study="s-2026-01").limit(1).fetch_all()
    assert sorted(s["status"] for s in subjects) == ["on-study", "withdrawn"]
