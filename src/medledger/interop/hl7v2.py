"""HL7 v2 admissions, results and problems, mapped to FHIR R4 and validated like any FHIR input.

Most hospital flows still arrive as HL7 v2: ADT messages from the admission system and ORU
results from the laboratory. Rather than storing a second format, each message becomes a FHIR
R4 transaction Bundle, which then goes through `parse_fhir_object` (the same validation,
reference rewriting and patient linking as FHIR files), so everything downstream sees FHIR.

Supported messages and what they become:

- ADT^A01 (admission), ADT^A04 (registration): Patient (conditional create on its identifier,
  `ifNoneExist`) and Encounter (PV1); ADT^A02 (transfer), ADT^A03 (discharge): the same, the
  Encounter only when PV1-19 names the visit; ADT^A08 (update): Patient as a conditional update
  (PUT `Patient?identifier=...`) and the visit's Encounter when PV1-19 names it; ADT^A28 (add
  person), ADT^A31 (update person): the Patient alone. In every ADT message, each DG1 becomes a
  Condition (linked to the Encounter) and each AL1 an AllergyIntolerance.
- ORU^R01 (unsolicited results): Patient (conditional create), one Observation per OBX and one
  DiagnosticReport per OBR.
- PPR^PC1/PC2/PC3 (problem add/update/delete): Patient and one problem-list Condition per PRB.

Re-sending is safe: each resource carries `source_system` (`urn:hl7v2:<MSH-3>^<MSH-4>`) and a
`source_id` derived from stable keys of the message (PV1-19 for the Encounter, OBR-3 + OBX-3 +
OBX-1 for an Observation, DG1-20 or visit + DG1-1 for a diagnosis, patient + AL1-3 for an
allergy, PRB-4 for a problem), falling back to MSH-10 and the segment's position. The same
message gives the same bytes (no clock, no random id in the content), so the store can apply it
once; an A08 of a visit updates the same Encounter.

Local codes: a hospital's `CodeMaps` (config.json `hl7`) map its senders' local codes to
standard ones (PID-8, PV1-2, DG1-6, AL1-2, AL1-4, OBX-11, OBR-25, and coded fields such as
OBX-3). A coded value with no mapping is kept as sent, in the sender's local code system, with a
warning; a value of a field FHIR fixes to a closed value set (gender, allergy category and
severity, result status) is refused unless mapped. Z segments are ignored with a warning.
An OBX-5 FHIR R4 has no value[x] for (ED, a PDF report; RP, a pointer) leaves the Observation
without value, `dataAbsentReason` unsupported, with a warning; a repeated coded, numeric or
date value keeps its first, with a warning (text repetitions are its lines).

The patient's identifier is the INS when PID-3 carries one (IHE PAM France: assigning authority
`ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO`, identifier type `INS`), validated with its key;
else the first PID-3 identifier. Segment separators may be `\\r` (the standard), `\\n` or
`\\r\\n`; MLLP framing characters are ignored; a file may hold several messages, loose or in
batches (FHS/BHS...BTS/FTS, checked to nest and to count right). The character set is MSH-18's.
Times without a UTC offset are read in the hospital's time zone (Europe/Paris by default), since
FHIR requires an offset on any time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import re
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hl7
import orjson

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

SUPPORTED_MESSAGES = (
    "ADT^A01",
    "ADT^A02",
    "ADT^A03",
    "ADT^A04",
    "ADT^A08",
    "ADT^A28",
    "ADT^A31",
    "ORU^R01",
    "PPR^PC1",
    "PPR^PC2",
    "PPR^PC3",
)
_NEW_VISIT = frozenset({"ADT^A01", "ADT^A04"})  # the message opens the visit
_VISIT_EVENT = frozenset({"ADT^A02", "ADT^A03", "ADT^A08"})  # about a visit opened before
_PATIENT_UPDATE = frozenset({"ADT^A08", "ADT^A31"})  # the Patient is a conditional update
DEFAULT_TIMEZONE = "Europe/Paris"
#: The retired calculated INS (INS-C): not validated as an INS.
INS_C_SYSTEM = "urn:oid:1.2.250.1.213.1.4.2"
#: Identifier system for PID-3 identifiers whose assigning authority has no OID.
LOCAL_SYSTEM_PREFIX = "urn:medledger:hl7v2:assigning-authority:"
#: `source_system` of a v2 sender: this prefix, then MSH-3 ^ MSH-4 (application ^ facility).
SOURCE_SYSTEM_PREFIX = "urn:hl7v2:"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"

_CODING_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": SNOMED,
    "SNM": SNOMED,
    "SNOMED": SNOMED,
    "SNOMED-CT": SNOMED,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "UCUM": UCUM,
    "ATC": "http://www.whocc.no/atc",
}
_SEX = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "S": "anonymous"}
#: v3 ActCode encounter classes (Encounter.class) and their display.
_ENCOUNTER_CLASSES = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "FLD": "field",
    "HH": "home health",
    "IMP": "inpatient encounter",
    "ACUTE": "inpatient acute",
    "NONAC": "inpatient non-acute",
    "OBSENC": "observation encounter",
    "PRENC": "pre-admission",
    "SS": "short stay",
    "VR": "virtual",
}
_PATIENT_CLASS = {"E": "EMER", "I": "IMP", "O": "AMB", "R": "AMB", "B": "AMB", "P": "PRENC"}
_DIAGNOSIS_TYPE = dict.fromkeys(("A", "W", "F"), "encounter-diagnosis")  # HL7 table 0052
_DIAGNOSIS_VERIFICATION = {"A": "provisional", "W": "provisional", "F": "confirmed"}
_ALLERGEN_TYPE = {"DA": "medication", "FA": "food", "EA": "environment"}  # HL7 table 0127
_ALLERGEN_TYPE |= {"AA": "environment", "PA": "environment", "LA": "environment"}
_ALLERGEN_WITHOUT_CATEGORY = frozenset({"MA", "MC"})  # miscellaneous allergy, contraindication
_ALLERGY_SEVERITY = {"SV": "severe", "MO": "moderate", "MI": "mild"}  # HL7 table 0128
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
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_ID_NAMESPACE = uuid.UUID("9a1d6f0e-4c1b-5d8e-9a63-6d65646c6467")


# --------------------------------------------------------------------------- local code tables

#: Tables whose codes FHIR fixes to a value set: HL7's codes (the defaults) and the FHIR codes
#: a hospital's own code may map to. PV1-2 and DG1-6 are extensible in FHIR: an unmapped code
#: is kept with a warning; the others (gender, allergy category and severity) are refused.
_FIXED_TABLES: dict[str, tuple[Mapping[str, str], frozenset[str]]] = {
    "PID-8": (_SEX, frozenset(_SEX.values())),
    "PV1-2": (_PATIENT_CLASS, frozenset(_ENCOUNTER_CLASSES)),
    "DG1-6": (_DIAGNOSIS_TYPE, frozenset({"encounter-diagnosis", "problem-list-item"})),
    "AL1-2": (_ALLERGEN_TYPE, frozenset({"food", "medication", "environment", "biologic"})),
    "AL1-4": (_ALLERGY_SEVERITY, frozenset(_ALLERGY_SEVERITY.values())),
    "OBX-11": (_RESULT_STATUS, frozenset({*_RESULT_STATUS.values(), "amended", "unknown"})),
    "OBR-25": (_REPORT_STATUS, frozenset({*_REPORT_STATUS.values(), "amended", "unknown"})),
}
#: Coded (CE/CWE) fields whose local codes a hospital may map to a standard `system|code`.
CODED_FIELDS = ("OBR-4", "OBX-3", "OBX-5", "DG1-3", "AL1-3", "AL1-5", "PRB-3")


@dataclass(frozen=True)
class CodeMaps:
    """A hospital's tables from its senders' local codes to standard ones (config.json `hl7`).

    `coding_systems`: a coding-system name as senders write it in CE/CWE component 3 (`99LAB`,
    `CIM10`) -> its URI, in addition to HL7's names (`LN`, `SCT`, `I10`...).
    `tables`: a field (`PID-8`, `PV1-2`, `DG1-6`, `AL1-2`, `AL1-4`, `OBX-11`, `OBR-25`, or a
    coded field of `CODED_FIELDS` such as `OBX-3`) -> local code -> its FHIR code (coded fields:
    `system|code`), in addition to (and before) HL7's own table. Build it with `CodeMaps.build`,
    which checks it.
    """

    coding_systems: Mapping[str, str] = field(default_factory=dict)
    tables: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, coding_systems: Mapping[str, str], tables: Mapping[str, Mapping[str, str]]
    ) -> CodeMaps:
        """Checked tables; `ValueError` naming the table and the code when one entry is wrong."""
        systems: dict[str, str] = {}
        for name, uri in coding_systems.items():
            if not name.strip() or not _URI.match(uri):
                raise ValueError(f"coding_systems.{name}: must be a URI (http://... or urn:...)")
            systems[name.strip().upper()] = uri
        for table, codes in tables.items():
            if table not in _FIXED_TABLES and table not in CODED_FIELDS:
                known = ", ".join([*_FIXED_TABLES, *CODED_FIELDS])
                raise ValueError(f"code_maps.{table}: unknown table (known: {known})")
            for code, target in codes.items():
                where = f"code_maps.{table}.{code}"
                if not code.strip():
                    raise ValueError(f"code_maps.{table}: an empty code cannot be mapped")
                if table in _FIXED_TABLES:
                    allowed = _FIXED_TABLES[table][1]
                    if target not in allowed:
                        raise ValueError(f"{where}: must be one of {', '.join(sorted(allowed))}")
                else:
                    system, bar, value = target.rpartition("|")
                    if not bar or not _URI.match(system) or not value.strip():
                        raise ValueError(
                            f"{where}: must be 'system|code' (e.g. http://loinc.org|2345-7)"
                        )
        return cls(systems, {table: dict(codes) for table, codes in tables.items()})

    def system(self, name: str) -> str | None:
        """The URI of a coding-system name (the hospital's, HL7's, or an OID); None if unknown."""
        key = name.strip().upper()
        if key in self.coding_systems:
            return self.coding_systems[key]
        if key in _CODING_SYSTEMS:
            return _CODING_SYSTEMS[key]
        if re.match(r"^[0-2](\.\d+)+$", name.strip()):
            return f"urn:oid:{name.strip()}"
        return None

    def fixed(self, table: str, code: str) -> str | None:
        """The FHIR code of a fixed-table field's value: the hospital's table, then HL7's."""
        own = self.tables.get(table, {})
        if code in own:
            return own[code]
        return _FIXED_TABLES[table][0].get(code.upper())

    def coded(self, field_name: str, code: str) -> tuple[str, str] | None:
        """(system, code) the hospital maps a local code of a coded field to, if any."""
        target = self.tables.get(field_name, {}).get(code)
        if target is None:
            return None
        system, _, value = target.rpartition("|")
        return system, value


HL7_TABLES = CodeMaps()  # HL7's own tables only: what a hospital without `hl7` settings uses


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

_CHARSETS = {"UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "ASCII": "ascii", "ISO IR6": "ascii"}
_CHARSETS |= {"ISO IR100": "latin-1", "8859/1": "latin-1", "8859/15": "iso8859-15"}


def _decode(data: bytes | str) -> str:
    """Decode a file with the character set its first MSH-18 declares (UTF-8 by default).

    `8859/n` (ISO IR 1xx) is ISO 8859-n; UTF-8 and ASCII files that are not valid UTF-8 (a
    sender that says UTF-8 and writes Latin-1, as some do) are read as Latin-1.
    """
    if isinstance(data, str):
        return data
    head = data[:2048].decode("latin-1")
    charset = ""
    match = re.search(r"MSH(.)", head)
    if match:
        separator = match.group(1)
        fields = head[match.start() :].split("\r")[0].split("\n")[0].split(separator)
        repetition = fields[1][1:2] if len(fields) > 1 else "~"
        charset = fields[17].split(repetition or "~")[0].strip().upper() if len(fields) > 17 else ""
    codec = _CHARSETS.get(charset)
    numbered = re.match(r"^8859/(\d{1,2})$", charset)
    if codec is None and numbered:
        codec = f"iso8859-{numbered.group(1)}"
    if codec not in (None, "utf-8", "ascii"):
        try:
            return data.decode(codec, errors="replace")
        except LookupError:
            pass  # an unknown part number: the default below
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_ENVELOPE = ("FHS", "BHS", "BTS", "FTS")


@dataclass
class _Envelopes:
    """Where the reader stands in a file's FHS/BHS...BTS/FTS structure."""

    source: str
    file_line: int | None = None  # line of the open FHS
    batch_line: int | None = None  # line of the open BHS
    batch_messages: int = 0
    batches: int = 0
    closed_at: int | None = None  # line of the FTS
    previous: str = ""  # the name of the previous segment

    def refuse(self, number: int, message: str) -> InputError:
        return InputError(self.source, None, None, f"line {number}: {message}")

    def count(self, number: int, value: str, name: str, actual: int, what: str) -> None:
        """BTS-1 / FTS-1, when given, must be the number of messages / batches seen."""
        if not value:
            return
        if not value.isdigit() or int(value) != actual:
            raise self.refuse(number, f"{name} says {value!r} {what}, there are {actual}")


def split_messages(data: bytes | str, source: str) -> list[list[str]]:
    """The messages of a file, each a list of segments (separators normalised to `\\r`).

    Batch envelopes must nest (`FHS` first, `BHS` at the start or after `FHS`/`BTS`, messages,
    `BTS`, then `FTS` last, each trailer closing its header); BTS-1 and FTS-1, when given, must
    count the messages of the batch and the batches of the file. Anything else is refused
    naming the line: an FHS or BHS in the middle of a message would otherwise end it silently.
    """
    text = _decode(data).replace("\x0b", "").replace("\x1c", "")
    lines = [s.strip() for s in re.split(r"\r\n|\r|\n", text)]
    messages: list[list[str]] = []
    separator = "|"
    at = _Envelopes(source)
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        name = line[:3]
        if at.closed_at is not None:
            raise at.refuse(number, f"{name} after the file trailer (FTS, line {at.closed_at})")
        if name in _ENVELOPE:
            _envelope(name, line, number, at, len(messages))
            at.previous = name
            continue
        if name == "MSH":
            if at.file_line is not None and at.batch_line is None:
                raise at.refuse(number, "a message in a file (FHS) must be inside a batch (BHS)")
            separator = line[3:4] or "|"  # MSH-1 defines the field separator
            messages.append([line])
            at.batch_messages += 1
            at.previous = name
            continue
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != separator):
            raise InputError(source, None, None, f"line {number} is not an HL7 v2 segment")
        if not messages or at.previous in _ENVELOPE:
            raise InputError(
                source,
                f"message {len(messages) + 1}",
                "MSH",
                "the message does not start with an MSH segment",
            )
        messages[-1].append(line)
        at.previous = name
    if at.batch_line is not None:
        raise at.refuse(at.batch_line, "the batch (BHS) has no trailer (BTS)")
    if at.file_line is not None and at.closed_at is None:
        raise at.refuse(at.file_line, "the file header (FHS) has no trailer (FTS)")
    if not messages:
        raise InputError(source, None, None, "not an HL7 v2 message: no MSH segment")
    return messages


def _envelope(name: str, line: str, number: int, at: _Envelopes, messages: int) -> None:
    """Check one FHS/BHS/BTS/FTS against what came before; `messages`: messages so far."""
    inside = f"in the middle of message {messages}" if at.previous not in ("", *_ENVELOPE) else ""
    fields = line.split(line[3:4] or "|")
    first = fields[1].strip() if len(fields) > 1 else ""  # BTS-1 / FTS-1 (not for headers)
    if name == "FHS":
        if at.previous:
            raise at.refuse(number, f"FHS {inside or 'after the start of the file'}")
        at.file_line = number
    elif name == "BHS":
        if at.previous not in ("", "FHS", "BTS"):
            where = inside or f"inside the batch of line {at.batch_line} (no BTS before it)"
            raise at.refuse(number, f"BHS {where}")
        at.batch_line, at.batch_messages = number, 0
    elif name == "BTS":
        if at.batch_line is None:
            raise at.refuse(number, "BTS without a batch header (BHS)")
        at.count(number, first, "BTS-1", at.batch_messages, "messages")
        at.batch_line = None
        at.batches += 1
    else:  # FTS
        if at.file_line is None:
            raise at.refuse(number, "FTS without a file header (FHS)")
        if at.batch_line is not None:
            raise at.refuse(number, f"FTS while the batch of line {at.batch_line} has no BTS")
        at.count(number, first, "FTS-1", at.batches, "batches")
        at.closed_at = number


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


def _number(text: str) -> int | float:
    """An NM value; ValueError when it is not a number or beyond what FHIR decimals carry here."""
    if not _NUMBER.match(text):
        raise ValueError("value is not a valid number")
    whole = text.lstrip("+-").split(".")[0].lstrip("0")
    if len(whole) > DECIMAL_DIGITS or len(text) > 4 * DECIMAL_DIGITS:
        raise ValueError(f"number out of range (at most {DECIMAL_DIGITS} digits before the point)")
    return float(text) if "." in text else int(text)


def _source_system(msh: Any) -> str:
    """`urn:hl7v2:<MSH-3>^<MSH-4>`: whose id space the message's ids are in (interfaces rule 1)."""
    application = _get(msh, 3) or _get(msh, 3, 1, 2)
    facility = _get(msh, 4) or _get(msh, 4, 1, 2)
    return f"{SOURCE_SYSTEM_PREFIX}{application}^{facility}"


def _uri_part(text: str) -> str:
    return urllib.parse.quote(text, safe="^._-~")


@dataclass
class _Mapped:
    """One resource of a message's Bundle and what the Bundle cannot carry."""

    entry: dict[str, Any]
    source_id: str
    warnings: tuple[str, ...]


@dataclass
class _MessageContext:
    source: str
    number: int
    clock: _Clock
    codes: CodeMaps = HL7_TABLES
    source_system: str = ""
    control_id: str = ""
    message_type: str = ""
    problems: list[InputError] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # warnings about the resource being built
    mapped: list[_Mapped] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"message {self.number}"

    def fail(self, field_name: str, message: str, entry: str | None = None) -> None:
        self.problems.append(InputError(self.source, entry or self.label, field_name, message))

    def warn(self, what: str, message: str, entry: str | None = None) -> None:
        """A warning for the resource being built (`what`: `field OBX-3`, `segment ZBE`)."""
        self.pending.append(f"{what} ({entry or self.label}): {message}")

    def add(
        self,
        resource: dict[str, Any],
        key: tuple[str, ...] | None,
        position: str,
        request: dict[str, str] | None = None,
    ) -> str:
        """Add a resource to the message's Bundle; its fullUrl (`urn:uuid:<source id>`).

        The source id is a UUID derived from the sender, the type and `key` (stable keys of
        the message, e.g. the visit number), or, without a key, from MSH-10 and `position`
        (the segment's place in the message). The pending warnings go with the resource.
        """
        kind = str(resource["resourceType"])
        source_id = self._source_id(kind, key) if key else None
        if source_id is not None and source_id in self.claimed:
            self.warn(
                f"segment {position}",
                "its keys are the same as an earlier segment's: told apart by its position",
            )
            source_id = None
        if source_id is None:
            source_id = self._source_id(kind, ("MSH-10", self.control_id, position))
        self.claimed.add(source_id)
        urn = f"urn:uuid:{source_id}"
        request = request or {"method": "POST", "url": kind}
        entry = {"fullUrl": urn, "resource": resource, "request": request}
        self.mapped.append(_Mapped(entry, source_id, tuple(self.pending)))
        self.pending = []
        return urn

    def _source_id(self, kind: str, key: tuple[str, ...]) -> str:
        name = orjson.dumps([self.source_system, kind, *key]).decode()
        return str(uuid.uuid5(_ID_NAMESPACE, name))

    def time(
        self, segment: Any, field_name: str, position: int, instant: bool = False, entry: str = ""
    ) -> Any:
        try:
            return self.clock.convert(_get(segment, position), instant=instant)
        except ValueError as error:
            self.fail(field_name, str(error), entry or None)
            return None

    def local_system(self, name: str) -> str:
        """The URI of a sender's own code system (`name`: as sent in CE-3, or the field)."""
        application, _, facility = self.source_system[len(SOURCE_SYSTEM_PREFIX) :].partition("^")
        return f"{SOURCE_SYSTEM_PREFIX}{_uri_part(application)}^{_uri_part(facility)}:" + (
            _uri_part(name)
        )

    def concept(
        self, segment: Any, name: str, position: int, rep: int = 1, entry: str = ""
    ) -> dict[str, Any] | None:
        """CE/CWE `code^text^system[^alt code^alt text^alt system]` -> CodeableConcept.

        A code of a standard system keeps it; a local one (unknown system name, or none) gets
        the hospital's mapping (`CodeMaps.coded`) first, and is kept as sent in the sender's
        local system; a concept with no standard coding at all is reported as a warning.
        """
        standard: list[dict[str, Any]] = []
        local: list[dict[str, Any]] = []
        text = ""
        for base in (1, 4):
            code = _get(segment, position, rep, base)
            display = _get(segment, position, rep, base + 1)
            system_name = _get(segment, position, rep, base + 2)
            text = text or display
            if not code:
                continue
            system = self.codes.system(system_name) if system_name else None
            if system is None:
                mapped = self.codes.coded(name, code)
                if mapped is not None:
                    standard.append({"system": mapped[0], "code": mapped[1]})
                system = self.local_system(system_name or name)
            coding = {"system": system, "code": code}
            if display:
                coding["display"] = display
            (local if system.startswith(SOURCE_SYSTEM_PREFIX) else standard).append(coding)
        if local and not standard:
            systems = ", ".join(sorted({c["system"].rsplit(":", 1)[-1] for c in local}))
            self.warn(
                f"field {name}",
                f"a code of the sender's local system ({urllib.parse.unquote(systems)}) has no "
                f"mapping (config hl7.code_maps.{name}); kept as sent",
                entry or None,
            )
        if not standard and not local and not text:
            return None
        concept: dict[str, Any] = {}
        if standard or local:
            concept["coding"] = standard + local
        if text:
            concept["text"] = text
        return concept


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


@dataclass
class _PatientOut:
    resource: dict[str, Any]
    search: str | None  # `identifier=system|value` on its identifying identifier (INS first)
    key: tuple[str, ...] | None  # the sender's own identifier (else the INS), for its source id


def _patient(pid: Any, msh: Any, ctx: _MessageContext) -> _PatientOut:
    """The Patient of PID; a PID-3 without an assigning authority is the sending facility's."""
    identifiers: list[dict[str, Any]] = []
    key: str | None = None
    ins_key: str | None = None
    own: tuple[str, ...] | None = None
    for rep in range(1, _repetitions(pid, 3) + 1):
        value = _get(pid, 3, rep, 1)
        if not value:
            continue
        system = _identifier_system(pid, rep)
        if not system:
            facility = _get(msh, 4) or _get(msh, 3) or "unknown"
            system = LOCAL_SYSTEM_PREFIX + re.sub(r"[^A-Za-z0-9._-]+", "-", facility)
            ctx.warn(
                "field PID-3",
                f"identifier {rep} has no assigning authority: taken as the sending facility's",
            )
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
            own = own or ("PID-3", system, ins.value)
            continue
        type_code = _get(pid, 3, rep, 5) or "PI"
        identifier: dict[str, Any] = {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": type_code}]},
            "value": value,
        }
        identifier["system"] = system
        key = key or f"identifier={system}|{value}"
        if own is None or own[1] in INS_SYSTEMS:
            own = ("PID-3", system, value)
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
    sex = _get(pid, 8)
    if sex:
        gender = ctx.codes.fixed("PID-8", sex)
        if gender is None:
            ctx.fail(
                "PID-8",
                "administrative sex is not one of M, F, O, A, U, N, "
                "nor mapped by the hospital's table (config hl7.code_maps.PID-8)",
            )
        else:
            patient["gender"] = gender
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
    return _PatientOut(patient, ins_key or key, own)


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


def _visit_key(pv1: Any) -> tuple[str, ...] | None:
    """PV1-19 (visit number, with its assigning authority): the visit's stable key."""
    visit = _get(pv1, 19)
    if not visit:
        return None
    return ("PV1-19", visit, _get(pv1, 19, 1, 4, 1), _get(pv1, 19, 1, 4, 2))


def _encounter(
    pv1: Any, msh: Any, evn: Any | None, patient_urn: str, kind: str, ctx: _MessageContext
) -> dict[str, Any]:
    patient_class = _get(pv1, 2)
    coding: dict[str, Any]
    if not patient_class:
        ctx.warn("field PV1-2", "the patient class is empty: taken as ambulatory")
        patient_class = "O"
    code = ctx.codes.fixed("PV1-2", patient_class)
    if code is not None:
        coding = {"system": ACT_CODE, "code": code, "display": _ENCOUNTER_CLASSES[code]}
    else:
        coding = {"system": ctx.local_system("PV1-2"), "code": patient_class}
        ctx.warn(
            "field PV1-2",
            "the patient class is not one of HL7's (table 0004) nor mapped by the hospital's "
            "table (config hl7.code_maps.PV1-2); kept as sent",
        )
    start = ctx.time(pv1, "PV1-44", 44)
    if start is None and kind in _NEW_VISIT:  # the event is the admission itself
        if evn is not None:
            start = ctx.time(evn, "EVN-6", 6) or ctx.time(evn, "EVN-2", 2)
        if start is None:
            start = ctx.time(msh, "MSH-7", 7)
    end = ctx.time(pv1, "PV1-45", 45)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "finished" if end or kind == "ADT^A03" else "in-progress",
        "class": coding,
        "subject": {"reference": patient_urn},
    }
    visit = _get(pv1, 19)
    if visit:
        identifier: dict[str, Any] = {"value": visit}
        authority = _get(pv1, 19, 1, 4, 2)
        if authority:
            identifier["system"] = authority if ":" in authority else f"urn:oid:{authority}"
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
    code = ctx.concept(obx, "OBX-3", 3, entry=entry)
    if code is None:
        ctx.fail("OBX-3", "the observation identifier is missing", entry)
        return None
    observation: dict[str, Any] = {"resourceType": "Observation"}
    status = _status_code(obx, "OBX-11", 11, "F, C, A, P, R, S, I, X, D, W", ctx, entry)
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
    value_type, absent = _get(obx, 2).upper(), "unknown"
    if value_type in _UNMAPPED_VALUE_TYPES:
        # Sent, but not a value[x] FHIR R4 has (a document, a pointer): said so, not "unknown".
        ctx.warn(
            "field OBX-5",
            f"value type {value_type} ({_UNMAPPED_VALUE_TYPES[value_type]}) is not mapped: "
            "the result is stored without its value (dataAbsentReason unsupported)",
            entry,
        )
        value, absent = None, "unsupported"
    else:
        try:
            value = _value(obx, ctx, entry)
        except ValueError as error:
            ctx.fail("OBX-5", f"{error} (value type {value_type or 'missing'})", entry)
            return None
        repeats = _repetitions(obx, 5)
        if repeats > 1 and not (value and "valueString" in value):
            # An empty first repetition keeps nothing: said too, not stored as "unknown".
            kept = "only the first is kept" if value else "the first is empty: none is kept"
            ctx.warn(
                "field OBX-5",
                f"{repeats} values repeat (value type {value_type}); an Observation holds "
                f"one: {kept}",
                entry,
            )
    if value:
        observation.update(value)
    elif absent == "unsupported" or status not in ("cancelled", "entered-in-error", "registered"):
        observation["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": absent}]}
    flag = _get(obx, 8).upper()
    if flag in _INTERPRETATIONS:
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": flag}]}]
    elif flag:
        ctx.warn(
            "field OBX-8", "the abnormal flag is not one of HL7's (table 0078): left out", entry
        )
    reference_range = _reference_range(_get(obx, 7), observation.get("valueQuantity"))
    if reference_range:
        observation["referenceRange"] = [reference_range]
    return observation


#: OBX-2 value types with no value[x] in FHIR R4's Observation (and what they are).
_UNMAPPED_VALUE_TYPES = {
    "ED": "encapsulated data, such as a PDF report",
    "RP": "a reference pointer to data held elsewhere",
}


def _status_code(
    segment: Any, name: str, position: int, codes: str, ctx: _MessageContext, entry: str
) -> str:
    """A result status (FHIR requires one of its own): final when empty, refused when unknown."""
    code = _get(segment, position)
    if not code:
        return "final"
    status = ctx.codes.fixed(name, code)
    if status is None:
        ctx.fail(
            name,
            f"the result status is not one of {codes}, "
            f"nor mapped by the hospital's table (config hl7.code_maps.{name})",
            entry,
        )
    return status or "final"


def _unit(obx: Any) -> dict[str, Any]:
    code, text, system = _get(obx, 6, 1, 1), _get(obx, 6, 1, 2), _get(obx, 6, 1, 3)
    if not code and not text:
        return {}
    quantity: dict[str, Any] = {"unit": text or code}
    if system.upper() == "UCUM" and code:
        quantity |= {"system": UCUM, "code": code}
    return quantity


def _value(obx: Any, ctx: _MessageContext, entry: str) -> dict[str, Any] | None:
    """OBX-5 as the Observation's value[x], by OBX-2 value type (text for unknown types)."""
    value_type = _get(obx, 2).upper()
    raw = _get(obx, 5) or (_get(obx, 5, 1, 2) if value_type == "SN" else "")  # SN: `^182`
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
        concept = ctx.concept(obx, "OBX-5", 5, entry=entry)
        return {"valueCodeableConcept": concept} if concept else None
    if value_type in ("DT", "TS", "DTM"):
        converted = ctx.clock.convert(raw)
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
        "status": _status_code(obr, "OBR-25", 25, "F, C, A, P, I, O, R, S, X", ctx, entry),
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
    code = ctx.concept(obr, "OBR-4", 4, entry=entry)
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


# --------------------------------------------------------------------------- DG1, AL1, PRB


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _ei_key(segment: Any, position: int) -> tuple[str, ...] | None:
    """An EI (entity identifier: id^namespace^universal id) as a key; None when empty."""
    value = _get(segment, position)
    if not value:
        return None
    parts = (_get(segment, position, 1, 2), _get(segment, position, 1, 3))
    return (f"{segment[0]}-{position}", value, *parts)


def _diagnosis(
    dg1: Any, patient_urn: str, encounter_urn: str | None, ctx: _MessageContext, entry: str
) -> dict[str, Any] | None:
    """DG1 -> Condition (HL7's v2-to-FHIR mapping: DG1-3 code, DG1-5 onset, DG1-6 category)."""
    code = ctx.concept(dg1, "DG1-3", 3, entry=entry)
    if code is None and _get(dg1, 4):  # v2.3 senders may give only the description
        code = {"text": _get(dg1, 4)}
    if code is None:
        ctx.fail("DG1-3", "the diagnosis code is missing", entry)
        return None
    condition: dict[str, Any] = {"resourceType": "Condition"}
    identifier = _get(dg1, 20)
    if identifier:
        condition["identifier"] = [{"value": identifier}]
    diagnosis_type = _get(dg1, 6)
    if _get(dg1, 21).upper() == "D":  # diagnosis action code: delete
        condition["verificationStatus"] = _status(CONDITION_VERIFICATION, "entered-in-error")
    else:
        condition["clinicalStatus"] = _status(CONDITION_CLINICAL, "active")
        verification = _DIAGNOSIS_VERIFICATION.get(diagnosis_type.upper())
        if verification:
            condition["verificationStatus"] = _status(CONDITION_VERIFICATION, verification)
    if diagnosis_type:
        category = ctx.codes.fixed("DG1-6", diagnosis_type)
        if category is None:
            ctx.warn(
                "field DG1-6",
                "the diagnosis type is not one of A, W, F nor mapped by the hospital's table "
                "(config hl7.code_maps.DG1-6); kept as sent",
                entry,
            )
            coding = {"system": ctx.local_system("DG1-6"), "code": diagnosis_type}
            condition["category"] = [{"coding": [coding]}]
    else:
        category = "encounter-diagnosis" if encounter_urn else "problem-list-item"
    if category:
        condition["category"] = [_status(CONDITION_CATEGORY, category)]
    condition["code"] = code
    condition["subject"] = {"reference": patient_urn}
    if encounter_urn:
        condition["encounter"] = {"reference": encounter_urn}
    onset = ctx.time(dg1, "DG1-5", 5, entry=entry)
    if onset:
        condition["onsetDateTime"] = onset
    recorded = ctx.time(dg1, "DG1-19", 19, entry=entry)
    if recorded:
        condition["recordedDate"] = recorded
    return condition


def _allergy(al1: Any, patient_urn: str, ctx: _MessageContext, entry: str) -> dict[str, Any] | None:
    """AL1 -> AllergyIntolerance (AL1-2 type, AL1-3 allergen, AL1-4 severity, AL1-5, AL1-6)."""
    code = ctx.concept(al1, "AL1-3", 3, entry=entry)
    if code is None:
        ctx.fail("AL1-3", "the allergen is missing", entry)
        return None
    allergy: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": _status(ALLERGY_CLINICAL, "active"),
    }
    allergen_type = _get(al1, 2)
    if allergen_type:
        category = ctx.codes.fixed("AL1-2", allergen_type)
        if category is not None:
            allergy["category"] = [category]
        elif allergen_type.upper() not in _ALLERGEN_WITHOUT_CATEGORY:
            ctx.fail(
                "AL1-2",
                "the allergen type is not one of DA, FA, MA, MC, EA, AA, PA, LA, "
                "nor mapped by the hospital's table (config hl7.code_maps.AL1-2)",
                entry,
            )
        if allergen_type.upper() in (*_ALLERGEN_TYPE, "MA"):
            allergy["type"] = "allergy"
    allergy["code"] = code
    allergy["patient"] = {"reference": patient_urn}
    onset = ctx.time(al1, "AL1-6", 6, entry=entry)
    if onset:
        allergy["onsetDateTime"] = onset
    severity_code = _get(al1, 4)
    severity = None
    if severity_code and severity_code.upper() != "U":
        severity = ctx.codes.fixed("AL1-4", severity_code)
        if severity is None:
            ctx.fail(
                "AL1-4",
                "the allergy severity is not one of SV, MO, MI, U, "
                "nor mapped by the hospital's table (config hl7.code_maps.AL1-4)",
                entry,
            )
    if severity_code:
        criticality = {"severe": "high", "moderate": "low", "mild": "low"}
        allergy["criticality"] = criticality.get(severity or "", "unable-to-assess")
    manifestations = []
    for rep in range(1, _repetitions(al1, 5) + 1):
        if _get(al1, 5, rep, 2) or _get(al1, 5, rep, 3):  # coded (CWE, v2.6+)
            manifestation = ctx.concept(al1, "AL1-5", 5, rep, entry)
        else:  # free text (ST, up to v2.5)
            manifestation = {"text": _get(al1, 5, rep)} if _get(al1, 5, rep) else None
        if manifestation:
            manifestations.append(manifestation)
    if manifestations:
        reaction: dict[str, Any] = {"manifestation": manifestations}
        if severity:
            reaction["severity"] = severity
        allergy["reaction"] = [reaction]
    return allergy


def _problem(prb: Any, patient_urn: str, ctx: _MessageContext, entry: str) -> dict[str, Any] | None:
    """PRB -> a problem-list Condition (PRB-1 action, PRB-3 problem, PRB-9 resolution, PRB-16)."""
    code = ctx.concept(prb, "PRB-3", 3, entry=entry)
    if code is None:
        ctx.fail("PRB-3", "the problem is missing", entry)
        return None
    condition: dict[str, Any] = {"resourceType": "Condition"}
    resolved = ctx.time(prb, "PRB-9", 9, entry=entry)
    if _get(prb, 1).upper() == "DE":  # action code: delete
        condition["verificationStatus"] = _status(CONDITION_VERIFICATION, "entered-in-error")
    else:
        clinical = "resolved" if resolved else "active"
        condition["clinicalStatus"] = _status(CONDITION_CLINICAL, clinical)
    condition["category"] = [_status(CONDITION_CATEGORY, "problem-list-item")]
    condition["code"] = code
    condition["subject"] = {"reference": patient_urn}
    onset = ctx.time(prb, "PRB-16", 16, entry=entry)
    if onset:
        condition["onsetDateTime"] = onset
    if resolved:
        condition["abatementDateTime"] = resolved
    recorded = ctx.time(prb, "PRB-7", 7, entry=entry)
    if recorded:
        condition["recordedDate"] = recorded
    return condition


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class MessageHeader:
    """Who sent a message and its control id (MSH-10): what makes a re-send recognisable."""

    source_system: str
    control_id: str
    message_type: str


def _control_id(msh: Any, segments: list[str], ctx: _MessageContext) -> str:
    control = _get(msh, 10)
    if control:
        return control
    ctx.warn("field MSH-10", "the message control id is empty: ids derived from its content")
    return "sha256:" + hashlib.sha256("\r".join(segments).encode()).hexdigest()[:32]


def message_to_bundle(segments: list[str], ctx: _MessageContext) -> dict[str, Any] | None:
    """One HL7 v2 message (segments) -> a FHIR R4 transaction Bundle; None if it is unusable.

    Problems go to `ctx.problems`; each entry's source id and warnings to `ctx.mapped`.
    """
    try:
        message = hl7.parse("\r".join(segments))
    except Exception:  # noqa: BLE001 - python-hl7 raises various errors on malformed input
        ctx.fail("MSH", "the message cannot be parsed (malformed MSH or separators)")
        return None
    msh = message.segment("MSH")
    ctx.source_system = _source_system(msh)
    ctx.control_id = _control_id(msh, segments, ctx)
    kind = ctx.message_type = f"{_get(msh, 9, 1, 1).upper()}^{_get(msh, 9, 1, 2).upper()}"
    if kind not in SUPPORTED_MESSAGES:
        ctx.fail(
            "MSH-9", f"unsupported message type {kind} (supported: {', '.join(SUPPORTED_MESSAGES)})"
        )
        return None
    groups = _patient_groups(message)
    if not groups:
        ctx.fail("PID", "the PID segment is missing: the message does not say which patient")
        return None
    if len(groups) > 1 and kind != "ORU^R01":  # only a result message may carry several
        ctx.fail("PID", f"{len(groups)} PID segments: {kind} is about one patient")
        return None
    for name in sorted({str(s[0]) for s in message if str(s[0]).startswith("Z")}):
        ctx.warn(f"segment {name}", "a local Z segment, ignored: its meaning is the sender's own")
    orders = 0
    for number, (pid, group) in enumerate(groups, start=1):
        patient = _patient(pid, msh, ctx)
        if kind in _PATIENT_UPDATE:
            if patient.search is None:
                ctx.fail("PID-3", "an update needs a patient identifier")
                return None
            request = {"method": "PUT", "url": f"Patient?{patient.search}"}
        else:
            request = {"method": "POST", "url": "Patient"}
            if patient.search:
                request["ifNoneExist"] = patient.search
        position = "PID" if number == 1 else f"PID{number}"
        patient_urn = ctx.add(patient.resource, patient.key, position, request)
        if kind.startswith("ADT^"):
            _admission(message, msh, kind, patient_urn, patient.key, ctx)
        elif kind == "ORU^R01":
            orders = _results(group, patient_urn, ctx, orders)
        else:
            for count, prb in enumerate(_segments(message, "PRB"), start=1):
                entry = f"{ctx.label}, PRB {count}"
                problem = _problem(prb, patient_urn, ctx, entry)
                if problem is not None:
                    ctx.add(problem, _ei_key(prb, 4), f"PRB{count}")
    if ctx.pending and ctx.mapped:  # about the message as a whole: told with its Patient
        ctx.mapped[0].warnings += tuple(ctx.pending)
        ctx.pending = []
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [m.entry for m in ctx.mapped],
    }


def _admission(
    message: Any,
    msh: Any,
    kind: str,
    patient_urn: str,
    patient_key: tuple[str, ...] | None,
    ctx: _MessageContext,
) -> None:
    """PV1 -> Encounter (A01-A04, A08), then DG1 -> Condition and AL1 -> AllergyIntolerance."""
    pv1s = _segments(message, "PV1")
    encounter_urn = None
    visit = _visit_key(pv1s[0]) if pv1s else None
    if kind in _NEW_VISIT and not pv1s:
        ctx.fail("PV1", "the PV1 segment is missing: an admission needs its visit")
        return
    if kind in _NEW_VISIT or (kind in _VISIT_EVENT and visit is not None):
        evns = _segments(message, "EVN")
        encounter = _encounter(pv1s[0], msh, evns[0] if evns else None, patient_urn, kind, ctx)
        encounter_urn = ctx.add(encounter, visit, "PV1")
    elif kind in _VISIT_EVENT and pv1s:
        ctx.warn(
            "field PV1-19",
            "the visit number is empty: which visit this is about is unknown, "
            "its Encounter is left as it was",
        )
    for number, dg1 in enumerate(_segments(message, "DG1"), start=1):
        entry = f"{ctx.label}, DG1 {_get(dg1, 1) or number}"
        condition = _diagnosis(dg1, patient_urn, encounter_urn, ctx, entry)
        if condition is None:
            continue
        key = _ei_key(dg1, 20)
        if key is None and visit is not None and _get(dg1, 1):
            key = (*visit, "DG1-1", _get(dg1, 1))
        ctx.add(condition, key, f"DG1{number}")
    for number, al1 in enumerate(_segments(message, "AL1"), start=1):
        entry = f"{ctx.label}, AL1 {_get(al1, 1) or number}"
        allergy = _allergy(al1, patient_urn, ctx, entry)
        if allergy is None:
            continue
        allergen = (_get(al1, 3), _get(al1, 3, 1, 3))
        key = (*patient_key, "AL1-3", *allergen) if patient_key else None
        ctx.add(allergy, key, f"AL1{number}")


def _order_key(obr: Any) -> tuple[str, ...] | None:
    """OBR-3 filler order number, else OBR-2 placer order number (with their namespaces)."""
    return _ei_key(obr, 3) or _ei_key(obr, 2)


def _patient_groups(message: Any) -> list[tuple[Any, list[Any]]]:
    """Each PID with the segments that follow it up to the next PID."""
    groups: list[tuple[Any, list[Any]]] = []
    for segment in message:
        if str(segment[0]) == "PID":
            groups.append((segment, []))
        elif groups:
            groups[-1][1].append(segment)
    return groups


def _results(segments: list[Any], patient_urn: str, ctx: _MessageContext, before: int) -> int:
    """A patient's OBR/OBX -> DiagnosticReports and Observations; `before`: OBRs seen so far.

    Returns the OBRs seen, this patient's included (orders are numbered across the message).
    """
    groups: list[tuple[Any, list[Any]]] = []
    for segment in segments:
        name = str(segment[0])
        if name == "OBR":
            groups.append((segment, []))
        elif name == "OBX":
            if not groups:
                ctx.fail("OBX", "an OBX segment comes before any OBR")
                return before
            groups[-1][1].append(segment)
    if not groups:
        ctx.fail("OBR", "the OBR segment is missing: a result message needs its order")
        return before
    for number, (obr, observations) in enumerate(groups, start=before + 1):
        entry = f"{ctx.label}, OBR {_get(obr, 1) or number}"
        category = "laboratory" if (_get(obr, 24).upper() or "LAB") != "RAD" else "imaging"
        order = _order_key(obr)
        results = []
        for position, obx in enumerate(observations, start=1):
            observation = _observation(obx, obr, patient_urn, category, ctx)
            if observation is None:
                continue
            key = None
            if order is not None:
                key = (*order, "OBX", _get(obx, 3), _get(obx, 1), _get(obx, 4))
            results.append(ctx.add(observation, key, f"OBR{number}.OBX{position}"))
        report = _report(obr, patient_urn, results, ctx, entry)
        ctx.add(report, order, f"OBR{number}")
    return before + len(groups)


@dataclass(frozen=True)
class _Message:
    number: int
    header: MessageHeader
    bundle: dict[str, Any]
    mapped: list[_Mapped]


def _map_file(
    data: bytes | str, source: str, codes: CodeMaps, timezone: str
) -> tuple[list[_Message], list[InputError]]:
    clock = _Clock(timezone)
    problems: list[InputError] = []
    messages: list[_Message] = []
    for number, segments in enumerate(split_messages(data, source), start=1):
        ctx = _MessageContext(source, number, clock, codes)
        bundle = message_to_bundle(segments, ctx)
        problems += ctx.problems
        if bundle is not None:
            header = MessageHeader(ctx.source_system, ctx.control_id, ctx.message_type)
            messages.append(_Message(number, header, bundle, ctx.mapped))
    return messages, problems


def hl7v2_to_fhir(
    data: bytes | str,
    source: str,
    *,
    timezone: str = DEFAULT_TIMEZONE,
    codes: CodeMaps = HL7_TABLES,
) -> list[dict[str, Any]]:
    """Map every message of an HL7 v2 file to a FHIR R4 transaction Bundle (not yet validated).

    Raises `InputError` (all problems of the file) if any message cannot be mapped.
    """
    messages, problems = _map_file(data, source, codes, timezone)
    raise_all(problems)
    return [m.bundle for m in messages]


def message_headers(data: bytes | str, source: str) -> list[MessageHeader]:
    """Sender, control id (MSH-10) and type of each message of a file, without mapping it."""
    headers = []
    for segments in split_messages(data, source):
        try:
            msh = hl7.parse("\r".join(segments[:1])).segment("MSH")
        except Exception:  # noqa: BLE001 - reported when the message is mapped
            continue
        ctx = _MessageContext(source, 0, _Clock(DEFAULT_TIMEZONE))
        kind = "^".join(x for x in (_get(msh, 9, 1, 1), _get(msh, 9, 1, 2)) if x)
        headers.append(MessageHeader(_source_system(msh), _control_id(msh, segments, ctx), kind))
    return headers


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
    codes: CodeMaps = HL7_TABLES,
) -> list[ParsedResource]:
    """Map, validate and prepare an HL7 v2 file's resources, like `parse_fhir` does for FHIR.

    All or nothing for the file. `ParsedResource.entry_index` is the index inside the message's
    Bundle; `request_method`/`request_url`/`if_none_exist` carry the conditional create (ADT^A01,
    A04, ORU^R01...) or update (ADT^A08, A31) of the Patient, for the caller to honour.
    `source_system`/`source_id` say which resource of the sender each one is (a re-send, or an
    update of the same visit, gives the same ones); `warnings`, what was kept as sent or left
    out (local codes without a mapping, Z segments). `codes`: the hospital's code tables.
    """
    messages, problems = _map_file(data, source, codes, timezone)
    raise_all(problems)
    parsed: list[ParsedResource] = []
    for message in messages:
        try:
            resources = parse_fhir_object(
                message.bundle,
                source,
                fhir_version="R4",
                id_factory=id_factory,
                resolve=resolve,
                labels=_message_label(message.number),
            )
        except InputError as error:
            problems += error.problems
            continue
        for resource in resources:
            mapped = message.mapped[resource.entry_index or 0]  # always a Bundle entry
            parsed.append(
                dataclasses.replace(
                    resource,
                    source_system=message.header.source_system,
                    source_id=mapped.source_id,
                    warnings=resource.warnings + mapped.warnings,
                )
            )
    raise_all(problems)
    return parsed
