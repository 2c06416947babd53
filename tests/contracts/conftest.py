"""Fixtures of the contract tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medledger.contracts import default_registry
from tests.support.ledger import ACCESS_VERSION


@pytest.fixture(params=default_registry().versions("access"), ids=lambda v: f"access-v{v}")
def access_version(request: pytest.FixtureRequest) -> Iterator[int]:
    """Test nets made meanwhile start with this version of `access` (every one known)."""
    before = ACCESS_VERSION[0]
    ACCESS_VERSION[0] = request.param
    try:
        yield request.param
    finally:
        ACCESS_VERSION[0] = before
