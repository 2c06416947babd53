"""review15, on outside15's HL7 v2 OBX-5 warnings: a repeated value keeps its first, with a
warning. When the first repetition is empty (`~3092008^Staphylococcus aureus^SCT`, `~12`),
nothing was kept and nothing said: the result was stored as "unknown", the values sent
dropped without a word. Now the warning says the first is empty and none is kept."""

from __future__ import annotations

from medledger.interop.hl7v2 import parse_hl7v2
from tests.outside15.test_hl7v2_results import LAB_ORU


def test_a_repeated_value_whose_first_is_empty_is_reported() -> None:
    oru = LAB_ORU.replace("112283007^Escherichia coli^SCT~3092008", "~3092008")
    oru = oru.replace("||12|/[HPF]", "||~12|/[HPF]")
    observations = [
        p for p in parse_hl7v2(oru.encode(), "labo.hl7") if p.resource_type == "Observation"
    ]
    organisms, _, leukocytes = observations
    for observation, obx in ((organisms, "OBX 1"), (leukocytes, "OBX 3")):
        assert not any(k.startswith("value") for k in observation.resource)
        (warning,) = [w for w in observation.warnings if "OBX-5" in w]
        assert obx in warning and "2 values" in warning, warning
        assert "the first is empty: none is kept" in warning
        assert "3092008" not in warning and "12 " not in warning  # no value echoed
