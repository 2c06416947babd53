"""medledger.interop: what hospitals send, turned into what medledger stores and indexes.

Pure functions, no I/O, no knowledge of the ledger or the vault:

- `ins`, `pseudonym`: validate the French INS and derive the patient's pseudonym `pid`;
- `fhir`: validate FHIR R4/R5 JSON (resources, Bundles, NDJSON), assign ids, rewrite references;
- `hl7v2`: map HL7 v2 ADT and ORU messages to FHIR R4, then validate them the same way;
- `metadata`: the small, encrypted-on-chain description of a record, and the mapping of a
  resource to a consent category (the vocabulary itself is `contracts.categories`);
- `synth`: deterministic synthetic patients for demos and benchmarks.

Every bad input raises `InputError`, which names the file, the entry and the field.

May import: contracts (the category vocabulary), ledger, host; never its siblings vault and
consensus.
"""

from medledger.interop.errors import InputError
from medledger.interop.fhir import (
    SUPPORTED_BUNDLE_TYPES,
    IdFactory,
    ParsedResource,
    Resolver,
    keep_ids,
    namespaced_ids,
    parse_fhir,
    parse_fhir_object,
    sequential_ids,
    uuid_ids,
)
from medledger.interop.hl7v2 import SUPPORTED_MESSAGES, hl7v2_to_fhir, parse_hl7v2
from medledger.interop.ins import (
    INS,
    INS_NIA_SYSTEM,
    INS_NIR_DEMO_SYSTEM,
    INS_NIR_SYSTEM,
    INS_NIR_TEST_SYSTEM,
    InvalidINS,
    compute_key,
    is_ins_system,
    is_valid_ins,
    parse_ins,
)
from medledger.interop.metadata import CATEGORIES, category_of, extract_metadata
from medledger.interop.pseudonym import (
    NoPatientIdentifier,
    canonical_identifier,
    patient_identifier,
    patient_pid,
    pseudonymise,
)
from medledger.interop.validate import FhirVersion

__all__ = [
    "CATEGORIES",
    "INS",
    "INS_NIA_SYSTEM",
    "INS_NIR_DEMO_SYSTEM",
    "INS_NIR_SYSTEM",
    "INS_NIR_TEST_SYSTEM",
    "SUPPORTED_BUNDLE_TYPES",
    "SUPPORTED_MESSAGES",
    "FhirVersion",
    "IdFactory",
    "InputError",
    "InvalidINS",
    "NoPatientIdentifier",
    "ParsedResource",
    "Resolver",
    "canonical_identifier",
    "category_of",
    "compute_key",
    "extract_metadata",
    "hl7v2_to_fhir",
    "is_ins_system",
    "is_valid_ins",
    "keep_ids",
    "namespaced_ids",
    "parse_fhir",
    "parse_fhir_object",
    "parse_hl7v2",
    "parse_ins",
    "patient_identifier",
    "patient_pid",
    "pseudonymise",
    "sequential_ids",
    "uuid_ids",
]
