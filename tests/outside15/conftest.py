"""The API fixtures of tests/api, for the outside probes."""

from tests.api.conftest import api  # noqa: F401
