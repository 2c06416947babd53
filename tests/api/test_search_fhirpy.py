"""Search through a third-party FHIR client (fhirpy) against a node served on loopback: each
parameter as fhirpy spells it, `.count()`, `_include`, `_elements`, and `fetch_all` paging to
the end while the same patient's new results are being ingested."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
from fhirpy import AsyncFHIRClient, SyncFHIRClient

from medledger.interop.synth import generate

from .conftest import Api
from .test_fhirpy_client import served  # noqa: F401 - the fixture

INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"


def _client(api: Api, url: str) -> SyncFHIRClient:
    return SyncFHIRClient(
        url, authorization=api.token("Practitioner/dr-martin", "user/*.rs")["Authorization"]
    )


def test_fhirpy_searches_with_each_kind_of_parameter(served: tuple[Api, str]) -> None:  # noqa: F811
    api, url = served
    client = _client(api, url)
    rid = api.patient_rid
    observations = client.resources("Observation")

    hemoglobin = observations.search(patient=rid, code="http://loinc.org|718-7").fetch_all()
    assert len(hemoglobin) == 4 and {o["code"]["coding"][0]["code"] for o in hemoglobin} == {
        "718-7"
    }
    assert observations.search(subject=f"Patient/{rid}", code="718-7").count() == 4
    labs = observations.search(patient=rid, category="laboratory").fetch_all()
    assert len(labs) == 8

    days = sorted(
        {o["effectiveDateTime"][:10] for o in observations.search(patient=rid).fetch_all()}
    )
    late = observations.search(patient=rid, date__ge=days[2]).sort("-date").fetch_all()
    assert len(late) == 10 and all(o["effectiveDateTime"][:10] >= days[2] for o in late)
    stamps = [o["effectiveDateTime"] for o in late]
    assert stamps == sorted(stamps, reverse=True)
    assert observations.search(patient=rid, date__lt=days[0]).count() == 0

    raw = (
        observations.search(patient=rid, code="718-7").include("Observation", "patient").fetch_raw()
    )
    modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in raw["entry"]]
    assert modes.count(("include", "Patient")) == 1 and modes.count(("match", "Observation")) == 4

    slim = observations.search(patient=rid, code="718-7").elements("code").fetch()
    assert slim and all("valueQuantity" not in o and o["status"] == "final" for o in slim)

    patient = client.resources("Patient").search(_id=rid).get()
    ins = next(i["value"] for i in patient["identifier"] if i["system"] == INS_NIR_TEST)
    again = client.resources("Patient").search(identifier=f"{INS_NIR_TEST}|{ins}").get()
    assert again["id"] == rid

    conditions = client.resources("Condition").search(patient=rid, clinical_status="active")
    assert conditions.count() == 2

    ignored = observations.search(patient=rid, code="718-7", flavour="sweet").fetch_raw()
    assert ignored["total"] == 4
    self_link = next(link["url"] for link in ignored["link"] if link["relation"] == "self")
    assert "flavour" not in self_link
    outcome = [e for e in ignored["entry"] if e["search"]["mode"] == "outcome"]
    assert "flavour" in outcome[0]["resource"]["issue"][0]["diagnostics"]


def test_fhirpy_pages_to_the_end_while_records_arrive(served: tuple[Api, str]) -> None:  # noqa: F811
    api, url = served
    client = _client(api, url)
    stored = {
        rid for rid in api.rids if api.services.vault.info(rid).resource_type == "Observation"
    }
    bundle = generate(1, ["chu-lyon", "aphp-paris"], seed=5)["chu-lyon"][0]  # the same person
    results: list[Any] = []

    def arrive(n: int) -> None:
        done = api.services.ingestor.ingest_bytes(orjson.dumps(bundle), f"again-{n}.json")
        results.append(done)

    def arrive_more() -> None:
        for n in (1, 2):
            arrive(n)

    writer = threading.Thread(target=arrive_more)
    seen: list[str] = []
    for observation in client.resources("Observation").search(patient=api.patient_rid).limit(3):
        seen.append(observation["id"])
        if len(seen) == 1:  # new Observations of this patient land between pages, and while
            arrive(0)  # we page
            writer.start()
    writer.join(timeout=60)
    assert all(not r.rejections for r in results) and len(results) == 3
    assert len(seen) == len(set(seen)) and set(seen) == stored
    assert client.resources("Observation").search(patient=api.patient_rid).count() == 4 * len(
        stored
    )


def test_the_async_client_pages_a_sorted_search_with_its_includes(
    served: tuple[Api, str],  # noqa: F811
) -> None:
    api, url = served
    token = api.token("Practitioner/dr-martin", "user/*.rs")["Authorization"]

    async def search() -> list[Any]:
        client = AsyncFHIRClient(url, authorization=token)
        found = (
            client.resources("Encounter")
            .search(patient=api.patient_rid)
            .revinclude("Condition", "encounter")
            .sort("date")
            .limit(1)
        )
        return list(await found.fetch_all())

    encounters = asyncio.run(search())
    starts = [e["period"]["start"] for e in encounters]
    assert len(encounters) == 4 and starts == sorted(starts)
