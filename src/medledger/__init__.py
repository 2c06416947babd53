"""medledger: a permissioned ledger network for hospitals to share patient records."""

__version__ = "0.1.0"

from medledger import _native

# Before any compiled module is imported: never run a build older than its sources (_native).
_native.guard()
