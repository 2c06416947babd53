"""The Patient compartment tables: every type and path they name exists in the models."""

from __future__ import annotations

import pytest

from medledger.interop.compartment import COMPARTMENT, is_supporting, patient_links
from medledger.interop.validate import FhirVersion, model_class, reference_path


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_compartment_link_is_a_reference_of_its_type(version: FhirVersion) -> None:
    wrong = []
    for resource_type, paths in COMPARTMENT[version].items():
        model = model_class(version, resource_type)
        assert model is not None, f"{version} has no {resource_type}"
        wrong += [f"{resource_type}.{p}" for p in paths if not reference_path(model, p)]
    assert wrong == []


def test_a_type_in_one_version_only_borrows_the_paths_that_exist() -> None:
    # R4 does not list Task; R5 links it by `for` (and `focus`), which R4's Task has too.
    assert patient_links("R4", "Task") == ("for", "focus")
    assert patient_links("R4", "Provenance") == ("target",)
    assert patient_links("R5", "Provenance") == ("patient",)
    assert patient_links("R5", "Practitioner") == ()
    assert not is_supporting("Task") and is_supporting("Practitioner")
