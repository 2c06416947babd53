"""The vault tests' throw-away PostgreSQL server, for the review's PostgreSQL test."""

from tests.vault.conftest import pg_server

__all__ = ["pg_server"]
