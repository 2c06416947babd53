"""The review's tests run on the exchange tests' sandboxes (three hospitals; four for the
recovery; replicas at the peers)."""

from tests.exchange.conftest import net_dir, sandbox  # noqa: F401
from tests.exchange.test_recovery import four  # noqa: F401
from tests.exchange.test_replicas import ingested  # noqa: F401
