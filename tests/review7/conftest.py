"""Session 7's attack review runs on the exchange tests' sandboxes (three hospitals; four for
the recovery; replicas at the peers) and on in-process ledgers."""

from tests.exchange.conftest import net_dir, sandbox  # noqa: F401
from tests.exchange.test_recovery import four  # noqa: F401
from tests.exchange.test_replicas import ingested  # noqa: F401
