"""Shared fixtures for the interop tests: the sample files under tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def fhir_dir() -> Path:
    return DATA / "fhir"


@pytest.fixture
def hl7_dir() -> Path:
    return DATA / "hl7"
