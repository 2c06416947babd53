"""Synthetic chronic patients followed in several hospitals, as FHIR R4 transaction Bundles.

The demo and the benchmarks need data that looks like what medledger is for: a patient with
type 2 diabetes, heart failure or cancer, seen in two or three hospitals, each hospital holding
its own record of the same person (its own Patient with its local IPP, and the shared INS), and
some exams repeated because the second hospital did not see the first one's results. Nothing is
downloaded: names, codes and value ranges are tables in this file.

Deterministic: everything comes from `random.Random` seeded with `(seed, patient number)`, and
dates from a fixed calendar, never the wall clock. Patient n is the same whatever the number of
patients generated. Identities are fictitious; the INS are valid test INS-NIR (OID
1.2.250.1.213.1.4.10) so that they can never be mistaken for real ones.

Codes: conditions in SNOMED CT and ICD-10, lab and vital signs in LOINC with UCUM units,
medications in ATC (with the RxNorm ingredient), imaging modalities in DICOM, procedures in
SNOMED CT.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medledger.interop.ins import (
    FR_CORE_IDENTIFIER_TYPE_SYSTEM,
    INS_NIR_TEST_SYSTEM,
    make_ins,
)

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
SYNTH_BUNDLE_SYSTEM = "urn:medledger:synth:patient"

#: The calendar the synthetic histories live in (no wall clock).
EPOCH = dt.date(2022, 1, 3)
DUPLICATE_WINDOW_DAYS = 42

# --------------------------------------------------------------------------- tables

_GIVEN = {
    "male": (
        "Jean", "Pierre", "Michel", "André", "Philippe", "Alain", "Bernard", "Jacques",
        "Daniel", "Patrick", "Christian", "Gérard", "François", "Marcel", "Louis", "Paul",
        "Henri", "Nicolas", "Olivier", "Thierry", "Dominique", "Ange", "Joseph", "Yves",
    ),
    "female": (
        "Marie", "Jeanne", "Françoise", "Monique", "Catherine", "Nathalie", "Isabelle",
        "Sylvie", "Martine", "Nicole", "Christine", "Anne", "Jacqueline", "Sophie", "Hélène",
        "Claire", "Chantal", "Brigitte", "Valérie", "Élise", "Dominique", "Josiane", "Odile",
    ),
}  # fmt: skip
_FAMILY = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau",
    "Laurent", "Simon", "Michel", "Lefebvre", "Leroy", "Roux", "David", "Bertrand", "Morel",
    "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent",
    "Muller", "Lefèvre", "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier",
    "Chevalier", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin", "Clément", "Morin",
    "Henry", "Roussel", "Mathieu", "Masson", "Le Gall", "Santoni", "Casanova", "Pietri",
)  # fmt: skip
_STREETS = (
    "rue de la République", "avenue Jean Jaurès", "rue Victor Hugo", "boulevard Pasteur",
    "rue des Écoles", "place de la Mairie", "chemin des Vignes", "allée des Tilleuls",
)  # fmt: skip
#: (department of birth, city of residence, postal code)
_PLACES = (
    ("75", "Paris", "75014"), ("69", "Lyon", "69003"), ("13", "Marseille", "13005"),
    ("33", "Bordeaux", "33000"), ("59", "Lille", "59000"), ("31", "Toulouse", "31400"),
    ("44", "Nantes", "44000"), ("67", "Strasbourg", "67000"), ("35", "Rennes", "35000"),
    ("2A", "Ajaccio", "20000"), ("2B", "Bastia", "20200"), ("06", "Nice", "06000"),
    ("99", "Paris", "75019"),
)  # fmt: skip
#: INSEE codes of countries of birth, used as "commune" for people born abroad (department 99).
_COUNTRIES = ("350", "351", "352", "134", "127", "139")


@dataclass(frozen=True)
class _Concept:
    code: str
    display: str
    system: str = SNOMED
    extra: tuple[tuple[str, str, str], ...] = ()  # (system, code, display)

    def codeable(self, text: str | None = None) -> dict[str, Any]:
        codings = [{"system": self.system, "code": self.code, "display": self.display}]
        codings += [{"system": s, "code": c, "display": d} for s, c, d in self.extra]
        return {"coding": codings, "text": text or self.display}


_CONDITIONS: dict[str, _Concept] = {
    "diabetes": _Concept(
        "44054006",
        "Diabetes mellitus type 2",
        extra=((ICD10, "E11.9", "Type 2 diabetes mellitus without complications"),),
    ),
    "heart_failure": _Concept(
        "84114007", "Heart failure", extra=((ICD10, "I50.9", "Heart failure, unspecified"),)
    ),
    "hypertension": _Concept(
        "38341003", "Hypertensive disorder", extra=((ICD10, "I10", "Essential hypertension"),)
    ),
    "breast_cancer": _Concept(
        "254837009",
        "Malignant neoplasm of breast",
        extra=((ICD10, "C50.9", "Malignant neoplasm of breast, unspecified"),),
    ),
    "colon_cancer": _Concept(
        "363406005",
        "Malignant neoplasm of colon",
        extra=((ICD10, "C18.9", "Malignant neoplasm of colon, unspecified"),),
    ),
    "lung_cancer": _Concept(
        "254637007",
        "Non-small cell lung cancer",
        extra=((ICD10, "C34.9", "Malignant neoplasm of bronchus or lung, unspecified"),),
    ),
    "prostate_cancer": _Concept(
        "399068003",
        "Malignant tumor of prostate",
        extra=((ICD10, "C61", "Malignant neoplasm of prostate"),),
    ),
}


@dataclass(frozen=True)
class _Lab:
    loinc: str
    display: str
    unit: str  # UCUM code
    low: float  # reference range
    high: float
    spread: tuple[float, float]  # values generated in this range for a patient with the condition
    decimals: int = 1
    category: str = "laboratory"


_LABS: dict[str, _Lab] = {
    "hba1c": _Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 6.0, (6.4, 9.8)),
    "glucose": _Lab(
        "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 100, (95, 240), 0
    ),
    "creatinine": _Lab(
        "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, (0.7, 2.1), 2
    ),
    "egfr": _Lab(
        "62238-1",
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or "
        "Blood by Creatinine-based formula (CKD-EPI)",
        "mL/min/{1.73_m2}",
        60,
        120,
        (28, 95),
        0,
    ),
    "ntprobnp": _Lab(
        "33762-6",
        "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
        "pg/mL",
        0,
        125,
        (280, 6500),
        0,
    ),
    "potassium": _Lab(
        "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.0, (3.4, 5.6)
    ),
    "sodium": _Lab(
        "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, (131, 144), 0
    ),
    "ldl": _Lab(
        "2089-1",
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma",
        "mg/dL",
        0,
        130,
        (60, 170),
        0,
    ),
    "hemoglobin": _Lab(
        "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.0, (9.2, 15.0)
    ),
    "leukocytes": _Lab(
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        4.0,
        10.0,
        (2.8, 11.5),
    ),
    "cea": _Lab(
        "2039-6",
        "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma",
        "ng/mL",
        0,
        5.0,
        (1.2, 28.0),
    ),
    "psa": _Lab(
        "2857-1",
        "Prostate specific Ag [Mass/volume] in Serum or Plasma",
        "ng/mL",
        0,
        4.0,
        (0.2, 35.0),
        2,
    ),
    "ca153": _Lab(
        "6875-9",
        "Cancer Ag 15-3 [Units/volume] in Serum or Plasma",
        "U/mL",
        0,
        30,
        (12, 70),
        0,
    ),
}

_LAB_SETS: dict[str, tuple[str, ...]] = {
    "diabetes": ("hba1c", "glucose", "creatinine", "egfr", "ldl"),
    "heart_failure": ("ntprobnp", "creatinine", "potassium", "sodium"),
    "hypertension": ("creatinine", "potassium"),
    "breast_cancer": ("hemoglobin", "leukocytes", "ca153"),
    "colon_cancer": ("hemoglobin", "leukocytes", "cea"),
    "lung_cancer": ("hemoglobin", "leukocytes", "cea"),
    "prostate_cancer": ("hemoglobin", "psa"),
}
#: The exam a second hospital repeats when it did not see the first one's result.
_DUPLICATED: dict[str, str] = {
    "diabetes": "hba1c",
    "heart_failure": "ntprobnp",
    "hypertension": "creatinine",
    "breast_cancer": "ca153",
    "colon_cancer": "cea",
    "lung_cancer": "cea",
    "prostate_cancer": "psa",
}


@dataclass(frozen=True)
class _Drug:
    atc: str
    rxnorm: str
    name: str
    dose: float
    unit: str  # UCUM
    per_day: int
    route: tuple[str, str] = ("26643006", "Oral route")
    form_text: str = "tablet"


_DRUGS: dict[str, _Drug] = {
    "metformin": _Drug("A10BA02", "6809", "metformin", 1000, "mg", 2),
    "empagliflozin": _Drug("A10BK03", "1545653", "empagliflozin", 10, "mg", 1),
    "insulin_glargine": _Drug(
        "A10AE04",
        "274783",
        "insulin glargine",
        20,
        "[IU]",
        1,
        ("34206005", "Subcutaneous route"),
        "injection",
    ),
    "atorvastatin": _Drug("C10AA05", "83367", "atorvastatin", 20, "mg", 1),
    "furosemide": _Drug("C03CA01", "4603", "furosemide", 40, "mg", 1),
    "bisoprolol": _Drug("C07AB07", "19484", "bisoprolol", 5, "mg", 1),
    "ramipril": _Drug("C09AA05", "35296", "ramipril", 5, "mg", 1),
    "spironolactone": _Drug("C03DA01", "9997", "spironolactone", 25, "mg", 1),
    "apixaban": _Drug("B01AF02", "1364430", "apixaban", 5, "mg", 2),
    "tamoxifen": _Drug("L02BA01", "10324", "tamoxifen", 20, "mg", 1),
    "letrozole": _Drug("L02BG04", "72965", "letrozole", 2.5, "mg", 1),
    "capecitabine": _Drug("L01BC06", "194000", "capecitabine", 1000, "mg", 2),
}
_TREATMENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    # alternatives; one is drawn per patient
    "diabetes": (("metformin", "atorvastatin"), ("metformin", "empagliflozin", "atorvastatin"),
                 ("metformin", "insulin_glargine")),
    "heart_failure": (("furosemide", "bisoprolol", "ramipril"),
                      ("furosemide", "bisoprolol", "spironolactone", "apixaban")),
    "hypertension": (("ramipril",),),
    "breast_cancer": (("tamoxifen",), ("letrozole",)),
    "colon_cancer": (("capecitabine",),),
    "lung_cancer": ((),),
    "prostate_cancer": ((),),
}  # fmt: skip


@dataclass(frozen=True)
class _Imaging:
    modality: str
    modality_display: str
    procedure: _Concept
    body_site: _Concept
    description: str
    instances: tuple[int, int]


_IMAGING: dict[str, _Imaging] = {
    "chest_ct": _Imaging(
        "CT",
        "Computed Tomography",
        _Concept("169069000", "Computed tomography of chest"),
        _Concept("51185008", "Thoracic structure"),
        "CT thorax with contrast",
        (180, 420),
    ),
    "echocardiography": _Imaging(
        "US",
        "Ultrasound",
        _Concept("40701008", "Echocardiography"),
        _Concept("80891009", "Heart structure"),
        "Transthoracic echocardiography",
        (40, 90),
    ),
    "mammography": _Imaging(
        "MG",
        "Mammography",
        _Concept("71651007", "Mammography"),
        _Concept("76752008", "Breast structure"),
        "Bilateral mammography",
        (4, 8),
    ),
}
_IMAGING_FOR: dict[str, tuple[str, ...]] = {
    "heart_failure": ("echocardiography",),
    "breast_cancer": ("mammography", "chest_ct"),
    "colon_cancer": ("chest_ct",),
    "lung_cancer": ("chest_ct",),
    "prostate_cancer": (),
    "diabetes": (),
    "hypertension": (),
}

_ALLERGIES: tuple[tuple[str, _Concept, _Concept, str], ...] = (
    ("medication", _Concept("764146007", "Penicillin"), _Concept("126485001", "Urticaria"), "high"),
    (
        "medication",
        _Concept("387458008", "Aspirin"),
        _Concept("271807003", "Eruption of skin"),
        "low",
    ),
    ("environment", _Concept("111088007", "Latex"), _Concept("126485001", "Urticaria"), "low"),
    ("food", _Concept("762952008", "Peanut"), _Concept("39579001", "Anaphylaxis"), "high"),
    (
        "environment",
        _Concept("256259004", "Pollen"),
        _Concept("61582004", "Allergic rhinitis"),
        "low",
    ),
)

_ENCOUNTER_TYPES = {
    "AMB": (_Concept("11429006", "Consultation"), "ambulatory"),
    "IMP": (_Concept("32485007", "Hospital admission"), "inpatient encounter"),
    "EMER": (_Concept("183452005", "Emergency hospital admission"), "emergency"),
}
_VITALS = {
    "heart_rate": ("8867-4", "Heart rate", "/min", (55, 98), 0),
    "weight": ("29463-7", "Body weight", "kg", (52, 112), 1),
}

# --------------------------------------------------------------------------- helpers


def _paris_offset(moment: dt.datetime) -> str:
    """UTC offset of Europe/Paris (EU rule: summer time from the last Sunday of March to the
    last Sunday of October), computed here so that output never depends on the host's tz data.
    """

    def last_sunday(year: int, month: int) -> dt.date:
        day = dt.date(year, month, 31)
        return day - dt.timedelta(days=(day.weekday() + 1) % 7)

    start, end = last_sunday(moment.year, 3), last_sunday(moment.year, 10)
    return "+02:00" if start <= moment.date() < end else "+01:00"


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + _paris_offset(moment)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "hospital"


def _finess(name: str) -> str:
    digits = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16)
    return f"{digits % 10**9:09d}"


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _round(value: float, decimals: int) -> float | int:
    return int(round(value)) if decimals == 0 else round(value, decimals)


def _ref(urn: str) -> dict[str, str]:
    return {"reference": urn}


@dataclass
class _Person:
    number: int
    sex: str
    given: str
    family: str
    birth: dt.date
    ins: str
    city: str
    postal_code: str
    street: str
    phone: str
    conditions: list[str]
    hospitals: list[str]
    allergy: int | None
    treatments: dict[str, tuple[str, ...]]
    baselines: dict[str, float] = field(default_factory=dict)


@dataclass
class _Visit:
    hospital: str
    day: dt.date
    kind: str  # AMB / IMP / EMER
    conditions: list[str]
    labs: list[str]
    imaging: list[str]
    first_in_hospital: bool


class _Builder:
    """Builds one hospital's Bundle for one patient (uuids from the patient's generator)."""

    def __init__(self, rng: random.Random, person: _Person, hospital: str) -> None:
        self.rng = rng
        self.person = person
        self.hospital = hospital
        self.slug = _slug(hospital)
        self.entries: list[dict[str, Any]] = []

    def urn(self) -> str:
        return f"urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def add(self, resource: dict[str, Any], urn: str | None = None) -> str:
        urn = urn or self.urn()
        self.entries.append(
            {
                "fullUrl": urn,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
        return urn

    def provider(self) -> dict[str, Any]:
        return {
            "identifier": {"system": FINESS_SYSTEM, "value": _finess(self.hospital)},
            "display": self.hospital,
        }

    # -- resources

    def patient(self) -> str:
        p = self.person
        ipp = f"{self.rng.randrange(10**7, 10**8)}"
        resource = {
            "resourceType": "Patient",
            "identifier": [
                {
                    "use": "official",
                    "type": {
                        "coding": [
                            {
                                "system": FR_CORE_IDENTIFIER_TYPE_SYSTEM,
                                "code": "INS-NIR-TEST",
                                "display": "NIR de test",
                            }
                        ]
                    },
                    "system": INS_NIR_TEST_SYSTEM,
                    "value": p.ins,
                },
                {
                    "use": "usual",
                    "type": {"coding": [{"system": V2_0203, "code": "PI"}]},
                    "system": f"urn:medledger:{self.slug}:ipp",
                    "value": ipp,
                },
            ],
            "active": True,
            "name": [{"use": "official", "family": p.family.upper(), "given": [p.given]}],
            "telecom": [{"system": "phone", "value": p.phone, "use": "mobile"}],
            "gender": p.sex,
            "birthDate": p.birth.isoformat(),
            "address": [
                {
                    "use": "home",
                    "line": [p.street],
                    "city": p.city,
                    "postalCode": p.postal_code,
                    "country": "FRA",
                }
            ],
            "managingOrganization": self.provider(),
        }
        return self.add(resource)

    def encounter(self, patient: str, visit: _Visit, start: dt.datetime) -> str:
        concept, class_display = _ENCOUNTER_TYPES[visit.kind]
        length = (
            dt.timedelta(minutes=self.rng.choice((20, 30, 45)))
            if visit.kind == "AMB"
            else dt.timedelta(days=self.rng.randint(1, 9), hours=self.rng.randint(1, 8))
        )
        resource = {
            "resourceType": "Encounter",
            "identifier": [
                {
                    "system": f"urn:medledger:{self.slug}:visit",
                    "value": f"{self.rng.randrange(10**8, 10**9)}",
                }
            ],
            "status": "finished",
            "class": {"system": ACT_CODE, "code": visit.kind, "display": class_display},
            "type": [concept.codeable()],
            "subject": _ref(patient),
            "participant": [{"individual": {"display": f"Dr {self.rng.choice(_FAMILY)}"}}],
            "period": {"start": _stamp(start), "end": _stamp(start + length)},
            "reasonCode": [_CONDITIONS[c].codeable() for c in visit.conditions],
            "serviceProvider": self.provider(),
        }
        return self.add(resource)

    def condition(self, patient: str, encounter: str, name: str, when: dt.datetime) -> str:
        onset = self.person.baselines.get(f"onset:{name}", 3.0)
        resource = {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed",
                    }
                ]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                        }
                    ]
                }
            ],
            "code": _CONDITIONS[name].codeable(),
            "subject": _ref(patient),
            "encounter": _ref(encounter),
            "onsetDateTime": (when.date() - dt.timedelta(days=int(onset * 365))).isoformat(),
            "recordedDate": _stamp(when),
        }
        return self.add(resource)

    def lab(
        self, patient: str, encounter: str, key: str, when: dt.datetime, trend: float
    ) -> tuple[str, str]:
        lab = _LABS[key]
        base = self.person.baselines.setdefault(key, self.rng.uniform(*lab.spread))
        width = lab.spread[1] - lab.spread[0]
        value = base + trend * width * 0.1 + self.rng.gauss(0, width * 0.04)
        value = _round(max(value, lab.spread[0] * 0.5), lab.decimals)
        flag = "H" if value > lab.high else "L" if value < lab.low else "N"
        resource = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": lab.category}]}],
            "code": {
                "coding": [{"system": LOINC, "code": lab.loinc, "display": lab.display}],
                "text": lab.display.split(" [")[0],
            },
            "subject": _ref(patient),
            "encounter": _ref(encounter),
            "effectiveDateTime": _stamp(when),
            "issued": _stamp(when + dt.timedelta(hours=3)),
            "valueQuantity": _quantity(value, lab.unit),
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag}]}],
            "referenceRange": [
                {
                    "low": _quantity(lab.low, lab.unit),
                    "high": _quantity(lab.high, lab.unit),
                }
                if lab.low > 0
                else {"high": _quantity(lab.high, lab.unit)}
            ],
        }
        return self.add(resource), lab.loinc

    def vital_signs(self, patient: str, encounter: str, when: dt.datetime) -> list[str]:
        p = self.person
        urns = []
        systolic = p.baselines.setdefault("systolic", self.rng.uniform(118, 158))
        diastolic = p.baselines.setdefault("diastolic", self.rng.uniform(66, 92))

        def vital(code: str, display: str) -> dict[str, Any]:
            return {
                "resourceType": "Observation",
                "status": "final",
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": _ref(patient),
                "encounter": _ref(encounter),
                "effectiveDateTime": _stamp(when),
            }

        bp = vital("85354-9", "Blood pressure panel with all children optional")
        bp["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "valueQuantity": _quantity(int(round(v + self.rng.gauss(0, 6))), "mm[Hg]"),
            }
            for code, display, v in (
                ("8480-6", "Systolic blood pressure", systolic),
                ("8462-4", "Diastolic blood pressure", diastolic),
            )
        ]
        urns.append(self.add(bp))
        for key, (code, display, unit, spread, decimals) in _VITALS.items():
            base = p.baselines.setdefault(key, self.rng.uniform(*spread))
            observation = vital(code, display)
            noise = self.rng.gauss(0, 4 if key == "heart_rate" else 0.8)
            observation["valueQuantity"] = _quantity(_round(base + noise, decimals), unit)
            urns.append(self.add(observation))
        return urns

    def lab_report(
        self, patient: str, encounter: str, when: dt.datetime, results: list[str]
    ) -> str:
        resource = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
            "code": {
                "coding": [{"system": LOINC, "code": "11502-2", "display": "Laboratory report"}]
            },
            "subject": _ref(patient),
            "encounter": _ref(encounter),
            "effectiveDateTime": _stamp(when),
            "issued": _stamp(when + dt.timedelta(hours=4)),
            "performer": [self.provider()],
            "result": [_ref(r) for r in results],
        }
        return self.add(resource)

    def medication(
        self, patient: str, encounter: str, drug_key: str, reason: str, when: dt.datetime
    ) -> str:
        drug = _DRUGS[drug_key]
        dose = f"{drug.dose:g} {drug.unit.strip('[]')}"
        resource = {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [
                    {"system": ATC, "code": drug.atc, "display": drug.name},
                    {"system": RXNORM, "code": drug.rxnorm, "display": drug.name},
                ],
                "text": drug.name,
            },
            "subject": _ref(patient),
            "encounter": _ref(encounter),
            "authoredOn": _stamp(when),
            "requester": {"display": f"Dr {self.rng.choice(_FAMILY)}"},
            "reasonReference": [_ref(reason)],
            "dosageInstruction": [
                {
                    "text": f"{drug.name} {dose} {drug.form_text}, {drug.per_day} time(s) a day",
                    "timing": {
                        "repeat": {"frequency": drug.per_day, "period": 1, "periodUnit": "d"}
                    },
                    "route": {
                        "coding": [
                            {"system": SNOMED, "code": drug.route[0], "display": drug.route[1]}
                        ]
                    },
                    "doseAndRate": [{"doseQuantity": _quantity(drug.dose, drug.unit)}],
                }
            ],
        }
        return self.add(resource)

    def imaging(self, patient: str, encounter: str, key: str, when: dt.datetime) -> str:
        spec = _IMAGING[key]
        modality = {"system": DICOM, "code": spec.modality, "display": spec.modality_display}
        instances = self.rng.randint(*spec.instances)
        study_uid = f"2.25.{uuid.UUID(int=self.rng.getrandbits(128), version=4).int}"
        series_uid = f"2.25.{uuid.UUID(int=self.rng.getrandbits(128), version=4).int}"
        resource = {
            "resourceType": "ImagingStudy",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "status": "available",
            "modality": [modality],
            "subject": _ref(patient),
            "encounter": _ref(encounter),
            "started": _stamp(when),
            "numberOfSeries": 1,
            "numberOfInstances": instances,
            "procedureCode": [spec.procedure.codeable()],
            "description": spec.description,
            "series": [
                {
                    "uid": series_uid,
                    "number": 1,
                    "modality": modality,
                    "description": spec.description,
                    "numberOfInstances": instances,
                    "bodySite": {
                        "system": SNOMED,
                        "code": spec.body_site.code,
                        "display": spec.body_site.display,
                    },
                    "started": _stamp(when),
                }
            ],
        }
        return self.add(resource)

    def imaging_report(
        self, patient: str, encounter: str, study: str, key: str, when: dt.datetime
    ) -> str:
        spec = _IMAGING[key]
        if key == "echocardiography":
            conclusion = f"Left ventricular ejection fraction {self.rng.randint(25, 55)} %."
        elif key == "mammography":
            conclusion = f"BI-RADS {self.rng.choice((2, 3, 4))}."
        else:
            conclusion = self.rng.choice(
                ("No suspicious pulmonary nodule.", "Stable lesions.", "Partial response.")
            )
        resource = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
            "code": {
                "coding": [
                    {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
                ],
                "text": spec.description,
            },
            "subject": _ref(patient),
            "encounter": _ref(encounter),
            "effectiveDateTime": _stamp(when),
            "issued": _stamp(when + dt.timedelta(days=1)),
            "imagingStudy": [_ref(study)],
            "conclusion": conclusion,
        }
        return self.add(resource)

    def allergy(self, patient: str, index: int, when: dt.datetime) -> str:
        category, substance, manifestation, criticality = _ALLERGIES[index]
        resource = {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "code": "active",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                        "code": "confirmed",
                    }
                ]
            },
            "type": "allergy",
            "category": [category],
            "criticality": criticality,
            "code": substance.codeable(),
            "patient": _ref(patient),
            "recordedDate": _stamp(when),
            "reaction": [
                {
                    "manifestation": [manifestation.codeable()],
                    "severity": "severe" if criticality == "high" else "mild",
                }
            ],
        }
        return self.add(resource)

    def bundle(self) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "identifier": {
                "system": SYNTH_BUNDLE_SYSTEM,
                "value": f"patient-{self.person.number:04d}",
            },
            "type": "transaction",
            "entry": self.entries,
        }


# --------------------------------------------------------------------------- people


def _person(rng: random.Random, number: int, hospitals: list[str]) -> _Person:
    sex = rng.choice(("male", "female"))
    birth = dt.date(rng.randint(1938, 1978), rng.randint(1, 12), rng.randint(1, 28))
    department, city, postal_code = rng.choice(_PLACES)
    commune = rng.choice(_COUNTRIES) if department == "99" else f"{rng.randint(1, 899):03d}"
    number13 = (
        ("1" if sex == "male" else "2")
        + f"{birth.year % 100:02d}{birth.month:02d}"
        + department
        + commune
        + f"{rng.randint(1, 999):03d}"
    )
    ins = make_ins(number13).value
    chronic = rng.choices(
        [("diabetes",), ("heart_failure",), ("cancer",), ("diabetes", "heart_failure"),
         ("diabetes", "cancer"), ("heart_failure", "cancer")],
        weights=[30, 20, 20, 18, 7, 5],
    )[0]  # fmt: skip
    conditions: list[str] = []
    for name in chronic:
        if name == "cancer":
            options = ["colon_cancer", "lung_cancer"]
            options.append("breast_cancer" if sex == "female" else "prostate_cancer")
            conditions.append(rng.choice(options))
        else:
            conditions.append(name)
    if rng.random() < 0.5 and "hypertension" not in conditions:
        conditions.append("hypertension")
    if len(hospitals) >= 2:
        followed = rng.sample(hospitals, min(len(hospitals), rng.choice((2, 2, 3))))
    else:
        followed = list(hospitals)
    allergy = rng.randrange(len(_ALLERGIES)) if rng.random() < 0.35 else None
    person = _Person(
        number=number,
        sex=sex,
        given=rng.choice(_GIVEN[sex]),
        family=rng.choice(_FAMILY),
        birth=birth,
        ins=ins,
        city=city,
        postal_code=postal_code,
        street=f"{rng.randint(1, 120)} {rng.choice(_STREETS)}",
        phone="06 " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(4)),
        conditions=conditions,
        hospitals=followed,
        allergy=allergy,
        treatments={c: rng.choice(_TREATMENTS[c]) for c in conditions},
    )
    for c in conditions:
        person.baselines[f"onset:{c}"] = rng.uniform(0.5, 12)
    return person


def _visits(rng: random.Random, person: _Person) -> list[_Visit]:
    """The patient's care path: follow-up visits in each hospital, with one hand-over to another
    hospital a few weeks after a visit, where the main exam is repeated."""
    main = person.hospitals[0]
    # Each condition is followed by one hospital; the others see the patient for the rest.
    owner = {
        c: person.hospitals[i % len(person.hospitals)] for i, c in enumerate(person.conditions)
    }
    day = EPOCH + dt.timedelta(days=rng.randint(0, 540))
    visits: list[_Visit] = []
    seen: set[str] = set()
    for step in range(rng.randint(4, 7)):
        if step < len(person.hospitals):
            hospital = person.hospitals[step]  # every hospital sees the patient at least once
        else:
            hospital = rng.choice(person.hospitals)
        gap = rng.randint(7, 30) if step == 1 else rng.randint(60, 150)
        if step:
            day += dt.timedelta(days=gap)
        conditions = [c for c in person.conditions if owner[c] == hospital] or person.conditions[:1]
        labs: list[str] = []
        for c in conditions:
            labs += [lab for lab in _LAB_SETS[c] if lab not in labs]
        if step == 1 and hospital != main:
            # The hand-over: the receiving hospital re-orders the main exam of the first one.
            for c in person.conditions:
                if owner[c] == main and _DUPLICATED[c] not in labs:
                    labs.append(_DUPLICATED[c])
        imaging = [i for c in conditions for i in _IMAGING_FOR[c]] if hospital not in seen else []
        kind = "AMB"
        if "heart_failure" in conditions and rng.random() < 0.25:
            kind = rng.choice(("IMP", "EMER"))
        visits.append(_Visit(hospital, day, kind, conditions, labs, imaging, hospital not in seen))
        seen.add(hospital)
    return visits


def _patient_bundles(seed: int, number: int, hospitals: list[str]) -> dict[str, dict[str, Any]]:
    rng = random.Random(f"medledger-synth:{seed}:{number}")
    person = _person(rng, number, hospitals)
    builders = {h: _Builder(rng, person, h) for h in person.hospitals}
    patients = {h: b.patient() for h, b in builders.items()}
    recorded: dict[str, dict[str, str]] = defaultdict(dict)  # hospital -> condition -> urn
    treated: set[tuple[str, str]] = set()
    visits = _visits(rng, person)
    for step, visit in enumerate(visits):
        b = builders[visit.hospital]
        patient = patients[visit.hospital]
        start = dt.datetime.combine(visit.day, dt.time(rng.randint(8, 16), rng.choice((0, 15, 30))))
        encounter = b.encounter(patient, visit, start)
        if visit.first_in_hospital:
            for c in person.conditions:
                recorded[visit.hospital][c] = b.condition(patient, encounter, c, start)
            if person.allergy is not None:
                b.allergy(patient, person.allergy, start)
        b.vital_signs(patient, encounter, start + dt.timedelta(minutes=5))
        drawn = start + dt.timedelta(minutes=20)
        trend = step / max(1, len(visits) - 1) * rng.choice((-1.0, 1.0))
        results = [b.lab(patient, encounter, key, drawn, trend)[0] for key in visit.labs]
        if results:
            b.lab_report(patient, encounter, drawn, results)
        for key in visit.imaging:
            when = start + dt.timedelta(days=rng.randint(0, 10), hours=1)
            study = b.imaging(patient, encounter, key, when)
            b.imaging_report(patient, encounter, study, key, when)
        for c in visit.conditions:
            if (visit.hospital, c) in treated:
                continue
            treated.add((visit.hospital, c))
            for drug in person.treatments[c]:
                b.medication(patient, encounter, drug, recorded[visit.hospital][c], start)
    return {h: b.bundle() for h, b in builders.items()}


def generate(patients: int, hospitals: list[str], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Synthetic FHIR R4 transaction Bundles: `{hospital: [bundle per patient it follows]}`.

    Each patient is followed in 2 or 3 of `hospitals` (all of them if fewer), and each of those
    hospitals gets one Bundle for the patient, whose Patient carries the same test INS, so
    that all of them pseudonymise to the same pid. Same arguments, same output.
    """
    if patients < 0:
        raise ValueError("the number of patients cannot be negative")
    names = [h.strip() for h in hospitals if h.strip()]
    if not names:
        raise ValueError("at least one hospital is needed")
    if len(set(names)) != len(names):
        raise ValueError("hospital names must be distinct")
    out: dict[str, list[dict[str, Any]]] = {h: [] for h in names}
    for number in range(1, patients + 1):
        for hospital, bundle in _patient_bundles(seed, number, names).items():
            out[hospital].append(bundle)
    return out


def bundle_label(bundle: Mapping[str, Any]) -> str:
    """`patient-0003`: the patient number a synthetic bundle was generated for."""
    identifier = bundle.get("identifier")
    if isinstance(identifier, Mapping) and isinstance(identifier.get("value"), str):
        return str(identifier["value"])
    raise ValueError("not a synthetic bundle")


def summarise(result: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts for the CLI: per hospital, per resource type, and duplicated exams.

    A duplicated exam is the same LOINC code for the same patient (same INS) in two hospitals
    within `DUPLICATE_WINDOW_DAYS` days: the waste medledger is meant to avoid.
    """
    per_hospital: dict[str, dict[str, Any]] = {}
    by_type: Counter[str] = Counter()
    labs: dict[tuple[str, str], list[tuple[dt.date, str]]] = defaultdict(list)
    patients: set[str] = set()
    for hospital, bundles in result.items():
        counts: Counter[str] = Counter()
        for bundle in bundles:
            entries = [e["resource"] for e in bundle["entry"]]
            ins = next(
                i["value"]
                for i in entries[0]["identifier"]
                if i.get("system") == INS_NIR_TEST_SYSTEM
            )
            patients.add(ins)
            for r in entries:
                counts[r["resourceType"]] += 1
                if r["resourceType"] != "Observation":
                    continue
                codes = {c.get("code") for c in r["category"][0].get("coding", [])}
                if "laboratory" in codes:
                    day = dt.date.fromisoformat(r["effectiveDateTime"][:10])
                    labs[(ins, r["code"]["coding"][0]["code"])].append((day, hospital))
        by_type.update(counts)
        per_hospital[hospital] = {
            "bundles": len(bundles),
            "resources": sum(counts.values()),
            "by_type": dict(sorted(counts.items())),
        }
    duplicated = 0
    for results in labs.values():
        results.sort()
        for (d1, h1), (d2, h2) in zip(results, results[1:], strict=False):
            if h1 != h2 and (d2 - d1).days <= DUPLICATE_WINDOW_DAYS:
                duplicated += 1
    return {
        "patients": len(patients),
        "hospitals": per_hospital,
        "resources": sum(by_type.values()),
        "by_type": dict(sorted(by_type.items())),
        "duplicated_exams": duplicated,
    }


# --------------------------------------------------------------------------- study cohorts

#: LOINC of the HbA1c in % (`_LABS["hba1c"]`): what the demo's and the benches' study asks.
HBA1C_LOINC = "4548-4"


def hba1c_observation(subject: str, when: str, value: float) -> dict[str, Any]:
    """A bare HbA1c result in % (LOINC, UCUM), the resource alone: `subject` its Patient
    reference, `when` its effectiveDateTime. No encounter, range or flag (`generate` writes
    those): the light record a study cohort, a bench or a test needs."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": HBA1C_LOINC}], "text": "HbA1c"},
        "subject": _ref(subject),
        "effectiveDateTime": when,
        "valueQuantity": _quantity(value, "%"),
    }


def hba1c_patient(
    n: int,
    sex: str,
    birth: dt.date,
    results: Sequence[tuple[str, float]],
    *,
    url: str,
    family: str,
    department: str,
    hospital: str | None = None,
) -> list[dict[str, Any]]:
    """Bundle entries (POST) of light study patient n: the Patient, then one HbA1c result
    (`hba1c_observation`) per `(effectiveDateTime, value in %)` of `results`.

    The Patient's fullUrl is `url` (the results': `url` and their index), its one identifier
    a valid test INS made of `sex`, the `birth` year and month, the `department` of birth
    and n (under 10^6) as order number; `hospital` adds its IPP there (n on 8 digits). The
    caller draws sex, birth and results (the demo's cohort and `bench study` each with their
    own generator, as before this builder); `generate` makes the fuller histories."""
    number13 = ("2" if sex == "female" else "1") + birth.strftime("%y%m") + department + f"{n:06d}"
    identifiers = [
        {"use": "official", "system": INS_NIR_TEST_SYSTEM, "value": make_ins(number13).value}
    ]
    if hospital is not None:
        identifiers.append(
            {"use": "usual", "system": f"urn:medledger:{hospital}:ipp", "value": f"{n:08d}"}
        )
    patient = {
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"family": family, "given": ["Test"]}],
        "gender": sex,
        "birthDate": birth.isoformat(),
    }
    resources = [(url, patient)] + [
        (f"{url}{i}", hba1c_observation(url, when, value))
        for i, (when, value) in enumerate(results)
    ]
    return [
        {"fullUrl": u, "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
        for u, r in resources
    ]


# --------------------------------------------------------------------------- documents

RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"  # French national practitioner identifiers
_IPS_SECTIONS = (  # (LOINC, title, resource types)
    ("11450-4", "Active Problems", ("Condition",)),
    ("48765-2", "Allergies and Intolerances", ("AllergyIntolerance",)),
    ("10160-0", "Medication Summary", ("MedicationRequest",)),
    ("30954-2", "Results", ("Observation", "DiagnosticReport")),
)


def as_document(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """One hospital's transaction Bundle for a patient, sent as an IPS-shaped `document`.

    What other systems send: a Composition first (LOINC 60591-5, its sections referencing the
    entries), the author Practitioner and the custodian Organization as entries, each
    medication as a Medication entry the MedicationRequest references, observations naming
    their performer; no `request` on the entries. Deterministic: new ids are uuid5 of the
    bundle's own, the document's time is its latest clinical time.
    """
    entries = [{"fullUrl": e["fullUrl"], "resource": dict(e["resource"])} for e in bundle["entry"]]
    seed = str(bundle.get("identifier", {}).get("value", "")) + entries[0]["fullUrl"]

    def urn(name: str) -> str:
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}/{name}')}"

    patient = entries[0]
    provider = patient["resource"].get("managingOrganization", {})
    finess = provider.get("identifier", {}).get("value", "000000000")
    organization = {
        "resourceType": "Organization",
        "identifier": [{"system": FINESS_SYSTEM, "value": finess}],
        "name": provider.get("display", "hospital"),
    }
    digest = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    practitioner = {
        "resourceType": "Practitioner",
        "identifier": [{"system": RPPS_SYSTEM, "value": f"10{digest % 10**9:09d}"}],
        "name": [{"family": _FAMILY[digest % len(_FAMILY)].upper(), "prefix": ["Dr"]}],
    }
    org_urn, practitioner_urn = urn("organization"), urn("practitioner")
    extra = [
        {"fullUrl": practitioner_urn, "resource": practitioner},
        {"fullUrl": org_urn, "resource": organization},
    ]
    times: list[str] = []
    for entry in entries:
        resource = entry["resource"]
        kind = resource["resourceType"]
        for name in ("effectiveDateTime", "authoredOn", "recordedDate"):
            if isinstance(resource.get(name), str):
                times.append(resource[name])
        if kind == "MedicationRequest" and "medicationCodeableConcept" in resource:
            medication_urn = urn(f"medication/{entry['fullUrl']}")
            concept = resource.pop("medicationCodeableConcept")
            extra.append(
                {
                    "fullUrl": medication_urn,
                    "resource": {"resourceType": "Medication", "code": concept},
                }
            )
            resource["medicationReference"] = {"reference": medication_urn}
            resource["requester"] = {"reference": practitioner_urn}
        elif kind == "Observation":
            resource["performer"] = [{"reference": practitioner_urn}, {"reference": org_urn}]
    when = max(times) if times else "2026-01-01T00:00:00+01:00"
    sections = []
    for code, title, kinds in _IPS_SECTIONS:
        refs = [e["fullUrl"] for e in entries if e["resource"]["resourceType"] in kinds]
        section: dict[str, Any] = {
            "title": title,
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "text": {
                "status": "generated",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{len(refs)} entries</div>',
            },
        }
        if refs:
            section["entry"] = [{"reference": r} for r in refs]
        else:
            section["emptyReason"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                        "code": "nilknown",
                    }
                ]
            }
        sections.append(section)
    composition = {
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5"}]},
        "subject": {"reference": patient["fullUrl"]},
        "date": when,
        "author": [{"reference": practitioner_urn}],
        "custodian": {"reference": org_urn},
        "title": "Patient Summary",
        "section": sections,
    }
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": urn("document")},
        "type": "document",
        "timestamp": when,
        "entry": [{"fullUrl": urn("composition"), "resource": composition}, *entries, *extra],
    }
