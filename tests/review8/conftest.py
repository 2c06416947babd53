"""Session 8's attack review runs on in-process ledgers and on the API tests' hospital."""

from tests.api.conftest import api  # noqa: F401
