"""HL7 v2 admissions and lab results, mapped to FHIR R4 and validated like any FHIR input.

Most hospital flows still arrive as HL7 v2: ADT messages from the admission system and ORU
results from the laboratory. Rather than storing a second format, each message becomes a FHIR
R4 transaction Bundle, which then goes through `parse_fhir_object` (the same validation,
reference rewriting and patient linking as FHIR files), so everything downstream sees FHIR.

Supported messages and what they become:

- ADT^A01 (admission), ADT^A04 (outpatient registration): Patient (conditional create on its
  identifier, `ifNoneExist`) and Encounter (from PV1).
- ADT^A08 (update patient information): Patient as a conditional update (PUT
  `Patient?identifier=...`).
- ORU^R01 (unsolicited results): Patient (conditional create: the message refers to a patient
  the hospital usually knows already), one Observation per OBX (LOINC when the coding system is
  `LN`) and one DiagnosticReport per OBR.

The patient's identifier is the INS when PID-3 carries one (IHE PAM France: assigning authority
`ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO`, identifier type `INS`), validated with its key;
else the first PID-3 identifier. Segment separators may be `\\r` (the standard), `\\n` or
`\\r\\n`; MLLP framing characters are ignored; several messages may follow each other in a file
(batch headers FHS/BHS are skipped). Times without a UTC offset are read in the hospital's time
zone (Europe/Paris by default), since FHIR requires an offset on any time.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hl7

from medledger.interop.errors import InputError, raise_all
from medledger.interop.fhir import (
    IdFactory,
    ParsedResource,
    Resolver,
    parse_fhir_object,
    uuid_ids,
)
from medledger.interop.ins import (
    FR_CORE_IDENTIFIER_TYPE_SYSTEM,
    INS_NIA_SYSTEM,
    INS_NIR_SYSTEM,
    INS_SYSTEMS,
    InvalidINS,
    is_ins_system,
    parse_ins,
)
from medledger.interop.metadata import VITAL_SIGN_LOINC
from medledger.interop.validate import DECIMAL_DIGITS

SUPPORTED_MESSAGES = ("ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01")
DEFAULT_TIMEZONE = "Europe/Paris"
#: The retired calculated INS (INS-C): not validated as an INS.
INS_C_SYSTEM = "urn:oid:1.2.250.1.213.1.4.2"
#: Identifier system for PID-3 identifiers whose assigning authority has no OID.
LOCAL_SYSTEM_PREFIX = "urn:medledger:hl7v2:assigning-authority:"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

_CODING_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": SNOMED,
    "SNM": SNOMED,
    "SNOMED": SNOMED,
    "SNOMED-CT": SNOMED,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "UCUM": UCUM,
    "ATC": "http://www.whocc.no/atc",
}
_SEX = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "S": "anonymous"}
_PATIENT_CLASS = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
}
_RESULT_STATUS = {
    "F": "final",
    "C": "corrected",
    "A": "amended",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "X": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
}
_REPORT_STATUS = {"F": "final", "C": "corrected", "A": "partial", "P": "preliminary"}
_REPORT_STATUS |= {"I": "registered", "O": "registered", "R": "partial", "S": "partial"}
_REPORT_STATUS |= {"X": "cancelled"}
_INTERPRETATIONS = frozenset(
    {"H", "L", "HH", "LL", "N", "A", "AA", "S", "R", "I", "POS", "NEG", "HU", "LU", "<", ">"}
)
_COMPARATORS = frozenset({"<", "<=", ">", ">="})
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_ID_NAMESPACE = uuid.UUID("9a1d6f0e-4c1b-5d8e-9a63-6d65646c6467")


# --------------------------------------------------------------------------- the library's logs


class _WithoutValues(logging.Filter):
    """Keep python-hl7's log events, drop the values they quote.

    The library logs whole fields when it meets an escape it cannot decode (`Error decoding
    value [Q], field [PAT-TROIS\\Q\\]`): a patient's name or identifier would end up in the
    node's log. Its messages are fixed texts followed by the values in brackets; only the text
    before the first bracket is kept, without arguments or traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        what = str(record.msg).split("[", 1)[0].strip().rstrip(",") or "event"
        record.msg = f"python-hl7: {what} (values withheld)"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def quiet_hl7_loggers() -> None:
    """Put the filter on every python-hl7 logger (they are named after the library's files)."""
    for name, module in list(sys.modules.items()):
        if name != "hl7" and not name.startswith("hl7."):
            continue
        logger = getattr(module, "logger", None)
        if isinstance(logger, logging.Logger) and not any(
            isinstance(f, _WithoutValues) for f in logger.filters
        ):
            logger.addFilter(_WithoutValues())


quiet_hl7_loggers()


# --------------------------------------------------------------------------- reading


def _decode(data: bytes | str) -> str:
    """Decode a file with the character set its first MSH-18 declares (UTF-8 by default)."""
    if isinstance(data, str):
        return data
    head = data[:2048].decode("latin-1")
    charset = ""
    match = re.search(r"MSH(.)", head)
    if match:
        separator = match.group(1)
        fields = head[match.start() :].split("\r")[0].split("\n")[0].split(separator)
        charset = fields[17].strip().upper() if len(fields) > 17 else ""
    if charset.startswith("8859/15"):
        return data.decode("iso8859-15", errors="replace")
    if charset.startswith("8859"):
        return data.decode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_messages(data: bytes | str, source: str) -> list[list[str]]:
    """The messages of a file, each a list of segments (separators normalised to `\\r`)."""
    text = _decode(data).replace("\x0b", "").replace("\x1c", "")
    lines = [s.strip() for s in re.split(r"\r\n|\r|\n", text)]
    messages: list[list[str]] = []
    separator = "|"
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        name = line[:3]
        if name in ("FHS", "BHS", "BTS", "FTS"):
            continue
        if name == "MSH":
            separator = line[3:4] or "|"  # MSH-1 defines the field separator
            messages.append([line])
            continue
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != separator):
            raise InputError(source, None, None, f"line {number} is not an HL7 v2 segment")
        if not messages:
            raise InputError(
                source, "message 1", "MSH", "the message does not start with an MSH segment"
            )
        messages[-1].append(line)
    if not messages:
        raise InputError(source, None, None, "not an HL7 v2 message: no MSH segment")
    return messages


def _get(segment: Any, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """One value of a segment ('' when absent; the HL7 null `""` counts as absent)."""
    try:
        value = segment.extract_field(1, field, rep, comp, sub)
    except (IndexError, KeyError, AttributeError):
        return ""
    value = str(value).strip()
    return "" if value == '""' else value


def _repetitions(segment: Any, field: int) -> int:
    if field >= len(segment):
        return 0
    value = segment(field)
    if not str(value):
        return 0
    return len(value) if isinstance(value, hl7.Field) else 1


def _segments(message: Any, name: str) -> list[Any]:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


# --------------------------------------------------------------------------- conversions


class _Clock:
    """HL7 TS -> FHIR date/dateTime/instant, in the hospital's time zone when no offset is given."""

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone
        try:
            from zoneinfo import ZoneInfo

            self.zone: dt.tzinfo | None = ZoneInfo(timezone)
        except Exception:  # noqa: BLE001 - no tz database on the host
            if timezone != DEFAULT_TIMEZONE:
                raise ValueError(f"unknown time zone {timezone!r}") from None
            self.zone = None

    def _offset(self, moment: dt.datetime) -> str:
        if self.zone is None:
            from medledger.interop.synth import _paris_offset

            return _paris_offset(moment)
        offset = moment.replace(tzinfo=self.zone).utcoffset() or dt.timedelta()
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

    def convert(self, value: str, *, instant: bool = False) -> str | None:
        """The FHIR form of an HL7 TS; None when empty; ValueError when malformed."""
        if not value:
            return None
        match = _TS.match(value)
        if not match:
            raise ValueError("not a valid HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])")
        year, month, day, hour, minute, second, offset = match.groups()
        try:
            moment = dt.datetime(
                int(year),
                int(month or 1),
                int(day or 1),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
            )
        except ValueError:
            raise ValueError("not a valid HL7 date/time (out of range)") from None
        if hour is None:
            if instant:
                return None
            if day:
                return moment.strftime("%Y-%m-%d")
            return moment.strftime("%Y-%m") if month else year
        zone = f"{offset[:3]}:{offset[3:]}" if offset else self._offset(moment)
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + zone

    def date(self, value: str) -> str | None:
        converted = self.convert(value)
        return converted[:10] if converted else None


def _coding_system(name: str) -> str | None:
    name = name.strip()
    if not name:
        return None
    if name.upper() in _CODING_SYSTEMS:
        return _CODING_SYSTEMS[name.upper()]
    if re.match(r"^[0-2](\.\d+)+$", name):
        return f"urn:oid:{name}"
    return None


def _concept(segment: Any, field: int, rep: int = 1) -> dict[str, Any] | None:
    """CE/CWE: code^text^system[^alt code^alt text^alt system] -> CodeableConcept."""
    codings = []
    text = ""
    for base in (1, 4):
        code = _get(segment, field, rep, base)
        display = _get(segment, field, rep, base + 1)
        system = _coding_system(_get(segment, field, rep, base + 2))
        text = text or display
        if code:
            coding: dict[str, Any] = {"code": code}
            if system:
                coding = {"system": system, "code": code}
            if display:
                coding["display"] = display
            codings.append(coding)
    if not codings and not text:
        return None
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


def _number(text: str) -> int | float:
    """An NM value; ValueError when it is not a number or beyond what FHIR decimals carry here."""
    if not _NUMBER.match(text):
        raise ValueError("value is not a valid number")
    whole = text.lstrip("+-").split(".")[0].lstrip("0")
    if len(whole) > DECIMAL_DIGITS or len(text) > 4 * DECIMAL_DIGITS:
        raise ValueError(f"number out of range (at most {DECIMAL_DIGITS} digits before the point)")
    return float(text) if "." in text else int(text)


@dataclass
class _MessageContext:
    source: str
    number: int
    clock: _Clock
    problems: list[InputError] = field(default_factory=list)
    counter: int = 0

    @property
    def label(self) -> str:
        return f"message {self.number}"

    def urn(self) -> str:
        self.counter += 1
        name = f"{self.source}|{self.number}|{self.counter}"
        return f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, name)}"

    def fail(self, field_name: str, message: str, entry: str | None = None) -> None:
        self.problems.append(InputError(self.source, entry or self.label, field_name, message))

    def time(self, segment: Any, field_name: str, position: int, instant: bool = False) -> Any:
        try:
            return self.clock.convert(_get(segment, position), instant=instant)
        except ValueError as error:
            self.fail(field_name, str(error))
            return None


# --------------------------------------------------------------------------- PID -> Patient


def _identifier_system(segment: Any, rep: int) -> str:
    namespace = _get(segment, 3, rep, 4, 1)
    universal = _get(segment, 3, rep, 4, 2)
    if universal:
        return universal if ":" in universal else f"urn:oid:{universal}"
    if namespace:
        return LOCAL_SYSTEM_PREFIX + re.sub(r"[^A-Za-z0-9._-]+", "-", namespace)
    return ""


def _is_ins(segment: Any, rep: int, system: str) -> bool:
    """Whether a PID-3 repetition is an INS (NIR/NIA, real, test or demonstration).

    The retired calculated INS (INS-C, OID ...1.4.2) is not: it is kept as a plain identifier.
    """
    type_code = _get(segment, 3, rep, 5).upper()
    namespace = _get(segment, 3, rep, 4, 1).upper()
    if type_code == "INS-C" or system == INS_C_SYSTEM or namespace.endswith("INS-C"):
        return False
    return (
        is_ins_system(system)
        or type_code.startswith("INS")
        or namespace.startswith("ASIP-SANTE-INS")
    )


def _patient(pid: Any, msh: Any, ctx: _MessageContext) -> tuple[dict[str, Any], str | None]:
    """(Patient resource, `identifier=system|value` search on its identifying identifier)."""
    identifiers: list[dict[str, Any]] = []
    key: str | None = None
    ins_key: str | None = None
    for rep in range(1, _repetitions(pid, 3) + 1):
        value = _get(pid, 3, rep, 1)
        if not value:
            continue
        system = _identifier_system(pid, rep)
        if _is_ins(pid, rep, system):
            if not is_ins_system(system):
                system = INS_NIR_SYSTEM  # INS type without the OID: the NIR authority
            try:
                ins = parse_ins(value)
            except InvalidINS as error:
                ctx.fail("PID-3", f"invalid INS: {error}")
                continue
            code = INS_SYSTEMS[system]
            identifiers.append(
                {
                    "use": "temp" if system == INS_NIA_SYSTEM else "official",
                    "type": {"coding": [{"system": FR_CORE_IDENTIFIER_TYPE_SYSTEM, "code": code}]},
                    "system": system,
                    "value": ins.value,
                }
            )
            ins_key = ins_key or f"identifier={system}|{ins.value}"
            continue
        type_code = _get(pid, 3, rep, 5) or "PI"
        identifier: dict[str, Any] = {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": type_code}]},
            "value": value,
        }
        if system:
            identifier["system"] = system
            key = key or f"identifier={system}|{value}"
        identifiers.append(identifier)
    if not identifiers and not any(p.field == "PID-3" for p in ctx.problems):
        ctx.fail("PID-3", "the patient has no identifier (PID-3 is empty)")
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers}

    names = []
    for rep in range(1, _repetitions(pid, 5) + 1):
        family, given = _get(pid, 5, rep, 1), _get(pid, 5, rep, 2)
        if not family and not given:
            continue
        name: dict[str, Any] = {}
        use = _NAME_USE.get(_get(pid, 5, rep, 7))
        if use:
            name["use"] = use
        if family:
            name["family"] = family
        # PID-5.3 holds the further given names; IHE PAM France puts the whole list of birth
        # given names there, first one included.
        further = _get(pid, 5, rep, 3).replace(",", " ").split()
        if further and further[0] == given:
            givens = further
        else:
            givens = ([given] if given else []) + further
        if givens:
            name["given"] = givens
        if _get(pid, 5, rep, 5):
            name["prefix"] = [_get(pid, 5, rep, 5)]
        if _get(pid, 5, rep, 4):
            name["suffix"] = [_get(pid, 5, rep, 4)]
        names.append(name)
    if names:
        patient["name"] = names

    telecom = _telecom(pid, 13, "home") + _telecom(pid, 14, "work")
    if telecom:
        patient["telecom"] = telecom
    sex = _get(pid, 8).upper()
    if sex:
        if sex not in _SEX:
            ctx.fail("PID-8", "administrative sex is not one of M, F, O, A, U, N")
        else:
            patient["gender"] = _SEX[sex]
    try:
        birth = ctx.clock.date(_get(pid, 7))
    except ValueError as error:
        ctx.fail("PID-7", str(error))
        birth = None
    if birth:
        patient["birthDate"] = birth
    death = ctx.time(pid, "PID-29", 29)
    if death:
        patient["deceasedDateTime"] = death
    elif _get(pid, 30).upper() == "Y":
        patient["deceasedBoolean"] = True
    addresses = _addresses(pid)
    if addresses:
        patient["address"] = addresses
    facility = _get(msh, 4)
    if facility:
        patient["managingOrganization"] = {"display": facility}
    return patient, ins_key or key


def _telecom(pid: Any, position: int, default_use: str) -> list[dict[str, Any]]:
    out = []
    for rep in range(1, _repetitions(pid, position) + 1):
        use_code = _get(pid, position, rep, 2).upper()
        equipment = _get(pid, position, rep, 3).upper()
        email = _get(pid, position, rep, 4)
        if equipment in ("INTERNET", "X.400") or use_code == "NET" or email:
            value, system = email or _get(pid, position, rep, 1), "email"
        else:
            value = (
                _get(pid, position, rep, 12)
                or _get(pid, position, rep, 1)
                or (_get(pid, position, rep, 6) + _get(pid, position, rep, 7))
            )
            system = {"FX": "fax", "BP": "pager"}.get(equipment, "phone")
        if not value:
            continue
        contact = {"system": system, "value": value}
        if equipment == "CP":
            contact["use"] = "mobile"
        elif use_code == "WPN":
            contact["use"] = "work"
        elif use_code in ("PRN", "ORN", "VHN"):
            contact["use"] = "home"
        else:
            contact["use"] = default_use
        out.append(contact)
    return out


def _addresses(pid: Any) -> list[dict[str, Any]]:
    out = []
    for rep in range(1, _repetitions(pid, 11) + 1):
        kind = _get(pid, 11, rep, 7).upper()
        if kind in ("BDL", "BR", "N"):  # birth place, not where the patient lives
            continue
        lines = [x for x in (_get(pid, 11, rep, 1), _get(pid, 11, rep, 2)) if x]
        address: dict[str, Any] = {}
        use = {"H": "home", "B": "work", "O": "work", "C": "temp"}.get(kind)
        if use:
            address["use"] = use
        if lines:
            address["line"] = lines
        for key, comp in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6)):
            value = _get(pid, 11, rep, comp)
            if value:
                address[key] = value
        if len(address) > (1 if use else 0):
            out.append(address)
    return out


# --------------------------------------------------------------------------- PV1 -> Encounter


def _encounter(
    pv1: Any, msh: Any, evn: Any | None, patient_urn: str, ctx: _MessageContext
) -> dict[str, Any]:
    code, display = _PATIENT_CLASS.get(_get(pv1, 2).upper(), ("AMB", "ambulatory"))
    start = ctx.time(pv1, "PV1-44", 44)
    if start is None and evn is not None:
        start = ctx.time(evn, "EVN-6", 6) or ctx.time(evn, "EVN-2", 2)
    if start is None:
        start = ctx.time(msh, "MSH-7", 7)
    end = ctx.time(pv1, "PV1-45", 45)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "finished" if end else "in-progress",
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "subject": {"reference": patient_urn},
    }
    visit = _get(pv1, 19)
    if visit:
        identifier: dict[str, Any] = {"value": visit}
        authority = _get(pv1, 19, 1, 4, 2)
        if authority:
            identifier["system"] = f"urn:oid:{authority}"
        encounter["identifier"] = [identifier]
    if start or end:
        encounter["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    doctor = " ".join(x for x in (_get(pv1, 7, 1, 6), _get(pv1, 7, 1, 3), _get(pv1, 7, 1, 2)) if x)
    if doctor:
        encounter["participant"] = [{"individual": {"display": doctor}}]
    location = " / ".join(x for x in (_get(pv1, 3, 1, c) for c in (4, 1, 2, 3)) if x)
    if location:
        encounter["location"] = [{"location": {"display": location}}]
    facility = _get(msh, 4)
    if facility:
        encounter["serviceProvider"] = {"display": facility}
    return encounter


# --------------------------------------------------------------------------- OBR/OBX


def _observation(
    obx: Any, obr: Any, patient_urn: str, category: str, ctx: _MessageContext
) -> dict[str, Any] | None:
    set_id = _get(obx, 1) or "?"
    entry = f"{ctx.label}, OBX {set_id}"
    code = _concept(obx, 3)
    if code is None:
        ctx.fail("OBX-3", "the observation identifier is missing", entry)
        return None
    observation: dict[str, Any] = {"resourceType": "Observation"}
    status = _RESULT_STATUS.get(_get(obx, 11).upper(), "final")
    observation["status"] = status
    loinc = {c["code"] for c in code.get("coding", []) if c.get("system") == LOINC}
    obs_category = "vital-signs" if loinc & VITAL_SIGN_LOINC else category
    observation["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": obs_category}]}]
    observation["code"] = code
    observation["subject"] = {"reference": patient_urn}
    try:
        when = ctx.clock.convert(_get(obx, 14)) or ctx.clock.convert(_get(obr, 7))
    except ValueError as error:
        ctx.fail("OBX-14", str(error), entry)
        when = None
    if when:
        observation["effectiveDateTime"] = when
    try:
        issued = ctx.clock.convert(_get(obr, 22), instant=True)
    except ValueError:
        issued = None  # reported with the OBR
    if issued:
        observation["issued"] = issued
    try:
        value = _value(obx, ctx.clock)
    except ValueError as error:
        ctx.fail("OBX-5", f"{error} (value type {_get(obx, 2) or 'missing'})", entry)
        return None
    if value:
        observation.update(value)
    elif status not in ("cancelled", "entered-in-error", "registered"):
        observation["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "unknown"}]}
    flag = _get(obx, 8).upper()
    if flag in _INTERPRETATIONS:
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": flag}]}]
    reference_range = _reference_range(_get(obx, 7), observation.get("valueQuantity"))
    if reference_range:
        observation["referenceRange"] = [reference_range]
    return observation


def _unit(obx: Any) -> dict[str, Any]:
    code, text, system = _get(obx, 6, 1, 1), _get(obx, 6, 1, 2), _get(obx, 6, 1, 3)
    if not code and not text:
        return {}
    quantity: dict[str, Any] = {"unit": text or code}
    if system.upper() == "UCUM" and code:
        quantity |= {"system": UCUM, "code": code}
    return quantity


def _value(obx: Any, clock: _Clock) -> dict[str, Any] | None:
    """OBX-5 as the Observation's value[x], by OBX-2 value type (text for unknown types)."""
    value_type = _get(obx, 2).upper()
    raw = _get(obx, 5)
    if not raw:
        return None
    if value_type == "NM":
        return {"valueQuantity": {"value": _number(raw), **_unit(obx)}}
    if value_type == "SN":
        comparator, first = _get(obx, 5, 1, 1), _get(obx, 5, 1, 2)
        separator, second = _get(obx, 5, 1, 3), _get(obx, 5, 1, 4)
        if separator in (":", "/") and second:
            return {
                "valueRatio": {
                    "numerator": {"value": _number(first)},
                    "denominator": {"value": _number(second)},
                }
            }
        if separator in ("-", "+") and second:
            return {
                "valueRange": {
                    "low": {"value": _number(first), **_unit(obx)},
                    "high": {"value": _number(second), **_unit(obx)},
                }
            }
        quantity: dict[str, Any] = {"value": _number(first), **_unit(obx)}
        if comparator:
            if comparator not in _COMPARATORS:
                raise ValueError("comparator is not one of <, <=, >, >=")
            quantity["comparator"] = comparator
        return {"valueQuantity": quantity}
    if value_type in ("CE", "CWE", "CNE", "CF"):
        concept = _concept(obx, 5)
        return {"valueCodeableConcept": concept} if concept else None
    if value_type in ("DT", "TS", "DTM"):
        converted = clock.convert(raw)
        return {"valueDateTime": converted} if converted else None
    # ST, TX, FT and anything else: text (repetitions are lines)
    repetitions = [_get(obx, 5, r) for r in range(1, _repetitions(obx, 5) + 1)]
    return {"valueString": "\n".join(r for r in repetitions if r) or raw}


def _reference_range(text: str, quantity: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text:
        return None
    unit = {k: v for k, v in (quantity or {}).items() if k in ("unit", "system", "code")}
    match = re.match(r"^\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*$", text)
    try:
        if match:
            return {
                "low": {"value": _number(match.group(1)), **unit},
                "high": {"value": _number(match.group(2)), **unit},
            }
        match = re.match(r"^\s*(<=?|>=?)\s*([+-]?[\d.]+)\s*$", text)
        if match:
            side = "high" if match.group(1).startswith("<") else "low"
            return {side: {"value": _number(match.group(2)), **unit}}
    except ValueError:
        pass
    return {"text": text}


def _report(
    obr: Any, patient_urn: str, results: list[str], ctx: _MessageContext, entry: str
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": _REPORT_STATUS.get(_get(obr, 25).upper(), "final"),
    }
    identifiers = []
    for position in (3, 2):  # filler then placer order number
        value = _get(obr, position)
        if value:
            identifier: dict[str, Any] = {"value": value}
            authority = _get(obr, position, 1, 3)
            if authority:
                identifier["system"] = f"urn:oid:{authority}"
            identifiers.append(identifier)
    if identifiers:
        report["identifier"] = identifiers
    section = _get(obr, 24).upper() or "LAB"
    report["category"] = [{"coding": [{"system": V2_0074, "code": section}]}]
    code = _concept(obr, 4)
    if code is None:
        ctx.fail("OBR-4", "the universal service identifier is missing", entry)
        code = {"text": "Laboratory report"}
    report["code"] = code
    report["subject"] = {"reference": patient_urn}
    try:
        effective = ctx.clock.convert(_get(obr, 7))
    except ValueError as error:
        ctx.fail("OBR-7", str(error), entry)
        effective = None
    if effective:
        report["effectiveDateTime"] = effective
    try:
        issued = ctx.clock.convert(_get(obr, 22), instant=True)
    except ValueError as error:
        ctx.fail("OBR-22", str(error), entry)
        issued = None
    if issued:
        report["issued"] = issued
    if results:
        report["result"] = [{"reference": urn} for urn in results]
    return report


# --------------------------------------------------------------------------- messages


def _entry(resource: dict[str, Any], urn: str, request: dict[str, str]) -> dict[str, Any]:
    return {"fullUrl": urn, "resource": resource, "request": request}


def message_to_bundle(segments: list[str], ctx: _MessageContext) -> dict[str, Any] | None:
    """One HL7 v2 message (segments) -> a FHIR R4 transaction Bundle; None if it is unusable.

    Problems go to `ctx.problems`.
    """
    try:
        message = hl7.parse("\r".join(segments))
    except Exception:  # noqa: BLE001 - python-hl7 raises various errors on malformed input
        ctx.fail("MSH", "the message cannot be parsed (malformed MSH or separators)")
        return None
    msh = message.segment("MSH")
    kind = f"{_get(msh, 9, 1, 1).upper()}^{_get(msh, 9, 1, 2).upper()}"
    if kind not in SUPPORTED_MESSAGES:
        ctx.fail(
            "MSH-9", f"unsupported message type {kind} (supported: {', '.join(SUPPORTED_MESSAGES)})"
        )
        return None
    pids = _segments(message, "PID")
    if not pids:
        ctx.fail("PID", "the PID segment is missing: the message does not say which patient")
        return None
    patient, search = _patient(pids[0], msh, ctx)
    patient_urn = ctx.urn()
    entries: list[dict[str, Any]] = []
    if kind == "ADT^A08":
        if search is None:
            ctx.fail("PID-3", "an update needs a patient identifier with an assigning authority")
            return None
        entries.append(_entry(patient, patient_urn, {"method": "PUT", "url": f"Patient?{search}"}))
    else:
        request = {"method": "POST", "url": "Patient"}
        if search:
            request["ifNoneExist"] = search
        entries.append(_entry(patient, patient_urn, request))
    if kind in ("ADT^A01", "ADT^A04"):
        pv1s = _segments(message, "PV1")
        if not pv1s:
            ctx.fail("PV1", "the PV1 segment is missing: an admission needs its visit")
            return None
        evns = _segments(message, "EVN")
        encounter = _encounter(pv1s[0], msh, evns[0] if evns else None, patient_urn, ctx)
        entries.append(_entry(encounter, ctx.urn(), {"method": "POST", "url": "Encounter"}))
    if kind == "ORU^R01":
        entries += _results(message, patient_urn, ctx)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _results(message: Any, patient_urn: str, ctx: _MessageContext) -> list[dict[str, Any]]:
    groups: list[tuple[Any, list[Any]]] = []
    for segment in message:
        name = str(segment[0])
        if name == "OBR":
            groups.append((segment, []))
        elif name == "OBX":
            if not groups:
                ctx.fail("OBX", "an OBX segment comes before any OBR")
                return []
            groups[-1][1].append(segment)
    if not groups:
        ctx.fail("OBR", "the OBR segment is missing: a result message needs its order")
        return []
    entries: list[dict[str, Any]] = []
    for number, (obr, observations) in enumerate(groups, start=1):
        entry = f"{ctx.label}, OBR {_get(obr, 1) or number}"
        category = "laboratory" if (_get(obr, 24).upper() or "LAB") != "RAD" else "imaging"
        results = []
        for obx in observations:
            observation = _observation(obx, obr, patient_urn, category, ctx)
            if observation is not None:
                urn = ctx.urn()
                results.append(urn)
                entries.append(_entry(observation, urn, {"method": "POST", "url": "Observation"}))
        report = _report(obr, patient_urn, results, ctx, entry)
        entries.append(_entry(report, ctx.urn(), {"method": "POST", "url": "DiagnosticReport"}))
    return entries


def hl7v2_to_fhir(
    data: bytes | str, source: str, *, timezone: str = DEFAULT_TIMEZONE
) -> list[dict[str, Any]]:
    """Map every message of an HL7 v2 file to a FHIR R4 transaction Bundle (not yet validated).

    Raises `InputError` (all problems of the file) if any message cannot be mapped.
    """
    clock = _Clock(timezone)
    problems: list[InputError] = []
    bundles: list[dict[str, Any]] = []
    for number, segments in enumerate(split_messages(data, source), start=1):
        ctx = _MessageContext(source, number, clock)
        bundle = message_to_bundle(segments, ctx)
        problems += ctx.problems
        if bundle is not None:
            bundles.append(bundle)
    raise_all(problems)
    return bundles


def _message_label(number: int) -> Callable[[int], str]:
    """Errors in a mapped message point at the message, not at an entry of our own Bundle."""

    def label(_index: int) -> str:
        return f"message {number}"

    return label


def parse_hl7v2(
    data: bytes | str,
    source: str,
    *,
    id_factory: IdFactory = uuid_ids,
    resolve: Resolver | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> list[ParsedResource]:
    """Map, validate and prepare an HL7 v2 file's resources, like `parse_fhir` does for FHIR.

    All or nothing for the file. `ParsedResource.entry_index` is the index inside the message's
    Bundle; `request_method`/`request_url`/`if_none_exist` carry the conditional create (ADT^A01,
    A04, ORU^R01) or update (ADT^A08) of the Patient, for the caller to honour.
    """
    bundles = hl7v2_to_fhir(data, source, timezone=timezone)
    problems: list[InputError] = []
    parsed: list[ParsedResource] = []
    for number, bundle in enumerate(bundles, start=1):
        labels = _message_label(number)
        try:
            parsed += parse_fhir_object(
                bundle,
                source,
                fhir_version="R4",
                id_factory=id_factory,
                resolve=resolve,
                labels=labels,
            )
        except InputError as error:
            problems += error.problems
    raise_all(problems)
    return parsed
