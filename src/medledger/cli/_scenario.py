"""The demo scenario, told in plain words: what `make demo` plays on a running network.

It acts only through what a hospital has: its node (wallets, queries), its vault and its
ingestion; the hospitals' own node processes (sync agents, gateways) do the rest, such as
prefetching records a consent entitles them to, or delivering a referral's file. It works the
same on the solo sandbox and on the CometBFT network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from medledger.contracts import emergency, identity, queries, research
from medledger.contracts.consent import Grant
from medledger.contracts.erasure import Request as ErasureRequest
from medledger.contracts.patients import Bind
from medledger.contracts.referral import Admit, Create
from medledger.interop.synth import HBA1C_LOINC, LOINC, generate, hba1c_patient
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.node.ingest import Ingestor
from medledger.node.notes import NoteStore, emergency_justification, referral_letter, study_title
from medledger.node.wallet import TxRejected, Wallet
from medledger.vault import Vault

DAY_MS = 24 * 3600 * 1000
Say = Callable[[str], None]


@dataclass
class Hospital:
    node: Node
    vault: Vault

    @property
    def org(self) -> str:
        return self.node.config.org

    @property
    def name(self) -> str:
        return self.node.config.name


@dataclass
class Story:
    """What the scenario made, for the summary (tokens, ids)."""

    patient_ins: str = ""
    patient_pid: str = ""
    study_query: str = ""  # the federated query's id, once asked
    practitioners: dict[str, list[str]] = field(default_factory=dict)
    facts: list[str] = field(default_factory=list)


def eventually(check: Callable[[], Any], timeout: float = 60.0, every: float = 0.25) -> Any:
    """What another hospital's node does happens on its own time: wait for it, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(every)


def _register(h: Hospital, practitioner: str, roles: list[str], story: Story) -> None:
    path = h.node.config.practitioner_key_path(practitioner)
    key = SigningKey.from_file(path) if path.exists() else SigningKey.generate()
    known = queries.practitioners(h.node.engine, h.org)
    if not any(p["id"] == practitioner for p in known):
        h.node.wallet.send_message(identity.Register(practitioner, key.public_key, roles))
        key.save(path)
    story.practitioners.setdefault(h.org, []).append(practitioner)


def _evidence(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


#: The study's synthetic cohort: enough patients that its query publishes figures (k = 5).
STUDY_COHORT = 30
#: The demo's query: the HbA1c of the study's patients, by sex. Exact (epsilon 0): the demo
#: study has no privacy budget, and at 30 patients noise would swamp the figures.
STUDY_QUERY: dict[str, Any] = {
    "categories": ["labs"],
    "cohort": {
        "types": ["Observation"],
        "codes": [{"system": LOINC, "code": HBA1C_LOINC}],
        "value": {"min": 3, "max": 20, "unit": "%"},
    },
    "sex": ["female", "male"],
    "value_of": "last",
    "statistics": [
        {"kind": "count"},
        {"kind": "mean"},
        {"kind": "stddev"},
        {"kind": "histogram", "edges": [3, "6.5", 20]},  # 6.5 %: the diabetes threshold
    ],
    "stratify": ["sex"],
}


def _cohort_patient(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Bundle entries of study patient n: the Patient and one or two HbA1c results."""
    sex = "female" if rng.random() < 0.55 else "male"
    year, month = rng.randint(1950, 1990), rng.randint(1, 12)
    birth = dt.date(year, month, rng.randint(1, 28))
    results = []
    for i in range(rng.randint(1, 2)):
        value = min(max(round(rng.gauss(7.4 if sex == "male" else 6.6, 1.1), 1), 4.5), 12.0)
        results.append((f"{2024 + i}-{rng.randint(1, 12):02d}-10", value))
    url = f"urn:uuid:{hashlib.sha256(f'demo-cohort/{n}'.encode()).hexdigest()[:32]}"
    return hba1c_patient(n, sex, birth, results, url=url, family=f"ETUDE{n}", department="59")


def _study_cohort(
    hospitals: list[Hospital], study: str, desk: dict[str, str], wait: float
) -> dict[str, int]:
    """`STUDY_COHORT` synthetic patients with an HbA1c, each followed at one of `hospitals`
    (one Bundle, so one registration, per hospital), who opt in to the study at the desk of
    the hospital that treats them (the enrolments pipelined). Returns patients per hospital."""
    rng = random.Random(18)
    enrolled: dict[str, int] = {}
    last: list[tuple[Hospital, bytes]] = []
    for i, h in enumerate(hospitals):
        entries = [
            e for n in range(i, STUDY_COHORT, len(hospitals)) for e in _cohort_patient(n, rng)
        ]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        result = Ingestor(h.node, h.vault).ingest_bytes(orjson.dumps(bundle), f"{h.org}-study.json")
        if result.rejections:
            raise RuntimeError(f"demo study data refused: {result.rejections[0]}")
        for pid in sorted(result.pids):
            submitted = h.node.wallet.submit_message(
                research.Enrol(
                    study=study,
                    pid=pid,
                    evidence_hash=_evidence(f"opt-in {pid}"),
                    taken_by=desk[h.org],
                )
            )
            if not submitted.accepted:
                raise RuntimeError(f"demo enrolment refused: {submitted.check.log}")
            last.append((h, submitted.tx_id))
        enrolled[h.org] = len(result.pids)
    for h, tx in last:  # every enrolment committed before the query starts
        h.node.engine.wait_for_commit(tx, timeout=wait)
    return enrolled


def _figures(result: dict[str, Any]) -> str:
    """The published figures of the demo's query, as a sentence."""
    parts = []
    for row in result["strata"]:
        if row.get("count") is None:
            parts.append(f"{row['stratum']}: suppressed (under k)")
            continue
        histogram = "histogram " + (
            "suppressed (a bin under k)"
            if row.get("histogram") is None
            else " / ".join(str(n) for n in row["histogram"])
        )
        parts.append(
            f"{row['stratum']}: {row['count']} patients, mean {row['mean']} % "
            f"(sd {row['stddev']}), {histogram}"
        )
    return "; ".join(parts)


def _federated_query(
    sponsor: Hospital, hospitals: list[Hospital], study: str, say: Say, wait: float
) -> str:
    """The sponsor's researcher asks the HbA1c of the study's patients by sex; the ethics
    approval and every member's DPO let it run; each hospital's node answers over its own
    records (`medledger.research`), and the chain publishes the combined figures, a figure
    under k suppressed."""
    from medledger.contracts import study_query
    from medledger.contracts.research_queries import QueryApprove, QuerySubmit

    document = STUDY_QUERY
    canonical = study_query.to_obj(study_query.parse(document))
    submitted = sponsor.node.practitioner_wallet("dr-chercheuse").send_message(
        QuerySubmit(study=study, query=canonical)
    )
    query_id = next(
        str(e.get("query")) for e in submitted.result.events if e.type == "study.query_submitted"
    )
    ethics = queries.study(sponsor.node.engine, study)
    assert ethics is not None
    decision = _evidence("the ethics committee's decision on the query")
    sponsor.node.practitioner_wallet("dpo").send_message(
        QueryApprove(query_id, "ethics", ethics["ethics_ref"], decision)
    )
    for h in hospitals:
        if h.org != sponsor.org:
            h.node.practitioner_wallet("dpo").send_message(
                QueryApprove(query_id, "custodian", decision_hash=decision)
            )
    say(
        f"{sponsor.name}'s researcher asks, under {study}, the HbA1c of the study's patients by "
        "sex (count, mean, standard deviation, histogram); its DPO attests the ethics decision "
        "and every member's DPO approves: the query runs."
    )
    deadline = time.monotonic() + wait
    record = queries.study_query(sponsor.node.engine, query_id)
    while record is not None and record["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        record = queries.study_query(sponsor.node.engine, query_id)
    if record is None or record["status"] != "done":
        say(f"Query {query_id} is not answered yet ({record and record['status']}).")
        return query_id
    answered = ", ".join(f"{o} {a['patients']}" for o, a in sorted(record["answers"].items()))
    say(
        f"Each hospital's node answers by itself, masked; patients followed at several count "
        f"once. Enrolled patients answered for: {answered}. Published (k = "
        f"{record['result']['k']}, no noise): {_figures(record['result'])}. "
        f"`medledger study query result {query_id} --crate DIR` packages it with its chain "
        "references; the researcher's page (/research) shows it with a chart."
    )
    return query_id


def play(
    hospitals: list[Hospital], say: Say, *, patients: int = 6, seed: int = 7, wait: float = 60.0
) -> Story:
    lyon, paris, bordeaux, lille = hospitals[:4]
    story = Story()
    now = int(time.time() * 1000)

    say(f"Four hospitals run the consortium: {', '.join(h.name for h in hospitals)}.")
    for h in hospitals:
        _register(h, "dpo", ["dpo"], story)
    _register(lyon, "dr-martin", ["physician"], story)
    _register(paris, "dr-dubois", ["physician"], story)
    _register(bordeaux, "dr-urgence", ["physician", "emergency"], story)
    _register(lille, "dr-chercheuse", ["researcher"], story)
    say("Each registers its practitioners and its DPO on the chain (keys stay at the hospital).")

    # -- synthetic chronic patients, ingested where they are followed -----------------------
    orgs = [lyon.org, paris.org, bordeaux.org]
    bundles = generate(patients, orgs, seed=seed)
    pids_at: dict[str, set[str]] = {}
    for h in hospitals[:3]:
        ingestor = Ingestor(h.node, h.vault)
        n = 0
        for i, bundle in enumerate(bundles.get(h.org, [])):
            result = ingestor.ingest_bytes(orjson.dumps(bundle), f"{h.org}-{i}.json")
            if result.rejections:
                raise RuntimeError(f"demo data refused: {result.rejections[0]}")
            n += result.accepted
            for pid in result.pids:
                pids_at.setdefault(pid, set()).add(h.org)
        say(f"{h.name} ingests its synthetic FHIR records: {n} resources, encrypted in its vault.")
    say("On the chain: only pseudonyms, salted commitments and sealed metadata.")

    # -- a chronic patient followed in three hospitals --------------------------------------
    chronic = next((p for p, at in sorted(pids_at.items()) if len(at) == 3), None)
    chronic = chronic or next(iter(sorted(pids_at)))
    story.patient_pid = chronic
    story.patient_ins = _ins_of(bundles, lyon.org, lyon.node.config.pseudonym_key(), chronic)
    at = ", ".join(sorted(pids_at[chronic]))
    say(f"Patient {chronic[:12]}… has a chronic disease and is followed at {at}.")

    consent = lyon.node.wallet.send_message(
        Grant(
            pid=chronic,
            grantee=f"org:{paris.org}",
            categories=["*"],
            purpose="treatment",
            start_ms=now - 60_000,
            end_ms=now + 365 * DAY_MS,
            evidence_hash=_evidence("signed consent form, chronic follow-up"),
            taken_by="dr-martin",  # Lyon treats the patient; dr-martin took the form
        )
    )
    consent_id = int(
        next(e.get("id") for e in consent.result.events if e.type == "consent.granted") or 0
    )
    say(
        f"The patient consents (form signed at {lyon.name}, which treats them, and taken by "
        f"dr-martin; consent {consent_id}): {paris.name} may read their records for treatment."
    )
    copies = eventually(
        lambda: [
            i for i in paris.vault.records_of(chronic) if i.is_copy and i.custodian == lyon.org
        ],
        timeout=wait,
    )
    if copies:
        say(
            f"Within seconds {paris.name}'s sync agent fetched the metadata key, read the new "
            f"index entries from its own replica and prefetched {len(copies)} records from "
            f"{lyon.name} over mutual TLS, each read recorded on the chain."
        )
    else:
        say(f"({paris.name} has not prefetched the records yet: is its node running?)")

    lyon.node.wallet.send_message(
        Grant(
            pid=chronic,
            grantee=f"org:{lille.org}",
            categories=["labs", "conditions"],
            purpose="treatment",
            start_ms=now - 60_000,
            end_ms=now + 90 * DAY_MS,
            evidence_hash=_evidence("signed consent form, second opinion"),
            taken_by="dr-martin",
        )
    )
    second = eventually(lambda: [i for i in lille.vault.records_of(chronic) if i.is_copy], wait)
    say(
        f"For a second opinion the patient also lets {lille.name} see their labs and conditions: "
        f"{len(second)} records copied there, re-encrypted under {lille.name}'s own keys."
    )
    try:  # holding copies is not treating the patient: Lille cannot act in their name
        lille.node.wallet.send_message(
            Grant(
                pid=chronic,
                grantee=f"org:{lille.org}",
                categories=["*"],
                purpose="treatment",
                start_ms=now,
                evidence_hash=_evidence("a form nobody signed"),
                taken_by="dpo",
            )
        )
    except TxRejected as exc:
        say(
            f"{lille.name} tries to widen its own access in the patient's name: "
            f"refused ({exc.log})."
        )

    # -- a referral for surgery, the file transferred automatically -------------------------
    surgery = now + 3 * DAY_MS
    rids = [i.rid for i in lyon.vault.records_of(chronic, include_copies=False)][:10]
    referral = lyon.node.wallet.send_message(
        Create(
            pid=chronic,
            to=paris.org,
            date_ms=surgery,
            categories=["labs", "conditions", "imaging", "medications", "allergies"],
            # The letter stays at Lyon; the chain gets its salted hash (a template letter's
            # plain hash would be found again by trying the likely procedures).
            procedure_hash=referral_letter(
                NoteStore(lyon.node.config.home), b"referral letter: coronary bypass"
            ),
            rids=rids,
            consent=consent_id,
        )
    )
    ref_id = int(
        next(e.get("id") for e in referral.result.events if e.type.startswith("referral.")) or 0
    )
    paris.node.wallet.send_message(Admit(ref_id))
    say(
        f"{lyon.name} refers the patient to {paris.name} for surgery in 3 days (referral "
        f"{ref_id}); {paris.name} records the admission: {lyon.name} must now deliver "
        f"{len(rids)} records by the deadline."
    )
    status = eventually(
        lambda: (
            (s := queries.referral_status(paris.node.engine, ref_id))
            and s.get("status") == "confirmed"
            and s
        ),
        timeout=wait * 1.5,
    )
    if status:
        say(
            f"The sync agents did the paperwork: {lyon.name} pushed the file, {paris.name} "
            f"checked every commitment and confirmed (referral {ref_id}: {status['status']})."
        )
    else:
        say(f"(referral {ref_id} not delivered yet: the nodes' sync agents deliver it)")

    # -- an emergency access at night -------------------------------------------------------
    other = next((p for p in sorted(pids_at) if bordeaux.org not in pids_at[p]), chronic)
    urgence = bordeaux.node.practitioner_wallet("dr-urgence")
    # The reason stays at Bordeaux for its DPO; the chain gets the justification's hash.
    notes = NoteStore(bordeaux.node.config.home)
    justification = emergency_justification(notes, "unconscious", "found unconscious, 3 am")
    opened = urgence.send_message(emergency.Open(pid=other, reason_hash=justification))
    eid = int(next(e.get("id") for e in opened.result.events if e.type == "emergency.opened") or 0)
    say(
        f"3 a.m.: an unconscious patient arrives at {bordeaux.name}. dr-urgence breaks the glass "
        f"(emergency access {eid}, 24 h): the patient and the custodians' DPOs are notified."
    )
    bordeaux.node.practitioner_wallet("dpo").send_message(
        emergency.Review(id=eid, verdict="approved", note_hash=_evidence("justified"))
    )
    say(f"In the morning {bordeaux.name}'s DPO reviews it and approves it.")

    # -- a research study's dataset release -------------------------------------------------
    study = "lille-2026-014"  # a study id is public: it names no condition
    if not queries.study(lille.node.engine, study):
        lille.node.practitioner_wallet("dr-chercheuse").send_message(
            research.Register(
                study=study,
                protocol_hash=_evidence("protocol v3"),
                ethics_ref="CPP-2026-0142",
                categories=["labs", "conditions"],
                min_cohort=3,
                # The title stays at Lille (the sponsor); the chain gets its salted hash.
                title_hash=study_title(
                    NoteStore(lille.node.config.home), study, "Heart failure outcomes"
                ),
            )
        )
    # Lyon releases the dataset: research v4 takes a release only from a custodian of every
    # member, so the cohort is drawn from the patients Lyon follows.
    cohort = sorted(p for p, at in pids_at.items() if lyon.org in at)[:4]
    # Each patient opts in (or out) at a hospital that treats them, with one of its physicians.
    desk = {lyon.org: "dr-martin", paris.org: "dr-dubois", bordeaux.org: "dr-urgence"}
    for pid in cohort:
        holder = next(h for h in hospitals[:3] if h.org in pids_at[pid])
        holder.node.wallet.send_message(
            research.Enrol(
                study=study,
                pid=pid,
                evidence_hash=_evidence(f"opt-in {pid}"),
                taken_by=desk[holder.org],
            )
        )
    withdrawn = cohort[-1]
    holder = next(h for h in hospitals[:3] if h.org in pids_at[withdrawn])
    holder.node.wallet.send_message(
        research.Withdraw(
            study=study,
            pid=withdrawn,
            evidence_hash=_evidence("opt-out"),
            taken_by=desk[holder.org],
        )
    )
    say(
        f"{lille.name} registers study {study} (ethics CPP-2026-0142); "
        "4 patients opt in, one withdraws."
    )
    try:
        lyon.node.wallet.send_message(
            research.Release(
                study=study,
                dataset_hash=_evidence("dataset-with-withdrawn"),
                members=[research.member_token(study, p) for p in cohort],
                counts={"patients": 4},
            )
        )
    except TxRejected as exc:
        say(f"A release including the withdrawn patient is refused by the contract: {exc.log}.")
    kept = cohort[:-1]
    lyon.node.wallet.send_message(
        research.Release(
            study=study,
            dataset_hash=_evidence("dataset v1"),
            members=[research.member_token(study, p) for p in kept],
            counts={"patients": len(kept)},
        )
    )
    say(
        f"The pseudonymised dataset of {len(kept)} patients is released: "
        "its hash and counts are on the chain."
    )

    started = time.monotonic()
    grown = _study_cohort(hospitals[:3], study, desk, wait)
    say(
        f"The study grows: {sum(grown.values())} more patients with an HbA1c opt in where they "
        f"are treated ({', '.join(f'{o} {n}' for o, n in grown.items())}; synthetic, loaded "
        f"and enrolled in {time.monotonic() - started:.1f} s)."
    )
    story.study_query = _federated_query(lille, hospitals, study, say, wait)

    # -- erasure: another patient leaves; refused for care records, done for the copies -----
    # The featured patient stays, so the served demo ends with their cross-hospital timeline.
    # The leaver is followed at Paris (which files the request) and, if possible, elsewhere;
    # consents first give Paris and Lille copies of the other hospitals' records.
    others = [p for p in sorted(pids_at) if p != chronic]
    leaver = next(
        (p for p in others if paris.org in pids_at[p] and len(pids_at[p]) >= 2),
        next((p for p in others if paris.org in pids_at[p]), others[0] if others else chronic),
    )
    filer = paris if paris.org in pids_at[leaver] else lyon
    if filer.org not in pids_at[leaver]:
        filer = next(h for h in hospitals[:3] if h.org in pids_at[leaver])
    source = next((h for h in hospitals[:3] if h.org in pids_at[leaver] and h is not filer), None)
    if source is not None:
        for grantee, cats in ((filer, ["*"]), (lille, ["labs", "conditions"])):
            source.node.wallet.send_message(
                Grant(
                    pid=leaver,
                    grantee=f"org:{grantee.org}",
                    categories=cats,
                    purpose="treatment",
                    start_ms=now - 60_000,
                    end_ms=now + 90 * DAY_MS,
                    evidence_hash=_evidence(f"consent form of another patient, {grantee.org}"),
                    taken_by=desk[source.org],
                )
            )
        eventually(lambda: [i for i in lille.vault.records_of(leaver) if i.is_copy], wait)
        eventually(lambda: [i for i in filer.vault.records_of(leaver) if i.is_copy], wait)
    filer.node.wallet.send_message(
        ErasureRequest(
            pid=leaver, evidence_hash=_evidence("erasure request letter"), taken_by="dpo"
        )
    )
    waiting = queries.erasure_pending(filer.node.engine, leaver)
    assert waiting is not None  # filed on the patient's behalf just above
    hours = (waiting["effective_ms"] - waiting["time"]) // (3600 * 1000)
    at = ", ".join(sorted(pids_at[leaver]))
    say(
        f"Another patient {leaver[:12]}…, followed at {at}, asks {filer.name}'s DPO for "
        f"erasure (their consents had given {filer.name} and {lille.name} copies). Filed in "
        f"the patient's name by a hospital, it waits {hours} h (request "
        f"{waiting['id']}): the patient and the other hospitals that treat them are told, and "
        "may cancel it."
    )
    # The patient does not wait: they sign it with their own key, bound at the desk.
    patient_key = SigningKey.generate()
    filer.node.wallet.send_message(
        Bind(
            pid=leaver,
            key=patient_key.public_key,
            evidence_hash=_evidence("identity check at the desk"),
        )
    )
    Wallet(patient_key, filer.node.config.chain_id, filer.node.engine).send_message(
        ErasureRequest(pid=leaver)
    )
    erasure = queries.erasure_status(filer.node.engine, leaver)
    assert erasure is not None  # requested with the patient's key just above
    refused = [
        o["holder"]
        for o in erasure["obligations"]
        if o.get("custody") and o["custody"]["status"] == "refused"
    ]
    say(
        f"Signed with the patient's own key, bound at {filer.name}, erasure request "
        f"{erasure['id']} takes effect at once. The contract refuses it for "
        f"the care records of {', '.join(refused) or 'no one'} (legal retention, 20 years)."
    )

    def attested(h: Hospital) -> dict[str, Any] | None:
        status = queries.erasure_status(h.node.engine, leaver)
        found = [o for o in status["obligations"] if o["holder"] == h.org] if status else []
        return found[0] if found and found[0]["status"] == "attested" else None

    if eventually(lambda: attested(lille), timeout=wait):
        say(
            f"{lille.name}, which held only copies, crypto-shredded them (the patient's key "
            "destroyed, in constant time) and attested it on the chain."
        )
    else:
        say(f"({lille.name}'s copies are erased by its node's sync agent when it runs.)")
    mine = eventually(lambda: attested(paris), timeout=wait)
    if mine:
        retained = paris.vault.records_of(leaver, include_copies=False)
        left = [i for i in paris.vault.records_of(leaver) if i.is_copy]
        say(
            f"{paris.name} keeps its own care records ({len(retained)} record versions, still "
            f"readable, under legal retention) and crypto-shredded the "
            f"{mine['attestation']['records']} copies of other hospitals' records apart (their "
            f"key sets destroyed; {len(left)} copies left), attested on the chain."
        )
    else:
        say(f"({paris.name}'s copies are erased apart by its node's sync agent when it runs.)")
    return story


def _ins_of(bundles: dict[str, list[dict[str, Any]]], org: str, key: bytes, pid: str) -> str:
    from medledger.interop.pseudonym import patient_pid

    for bundle in bundles.get(org, []):
        for entry in bundle["entry"]:
            r = entry["resource"]
            if r["resourceType"] == "Patient" and patient_pid(key, r) == pid:
                ins: str = next(
                    i["value"]
                    for i in r["identifier"]
                    if "1.2.250.1.213.1.4" in i.get("system", "")
                )
                return ins
    return ""
