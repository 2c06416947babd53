"""medledger: a permissioned ledger network for hospitals to share patient records."""

__version__ = "0.1.0"
