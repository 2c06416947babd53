"""The API fixtures of tests/api, for review15's probes."""

from tests.api.conftest import api  # noqa: F401
