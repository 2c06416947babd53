"""One hospital's node: what runs beside its ledger replica.

Owns: the typed configuration of a hospital home (`config`), the composition root
(`core.Node`), the wallet that signs and submits (`wallet`), ingestion and its registrations
(`ingest`, `registrations`, `indexing`), crypto-shredding (`shredding`), notes kept off chain
(`notes`), pid look-up (`patients`) and the process heap settings (`heap`). What serves a
node's exchange and API is assembled above, in `cli/_runtime.py`; setting a consortium up is
`medledger.provisioning`. `run_app` is the CometBFT app process's entry point (it reads the
config and chooses the contracts, which `consensus` must not).

May import: ledger, contracts, consensus, vault, interop, host; never exchange, api, web,
cli or provisioning.
"""

from medledger.node.core import LedgerBusy, Node

__all__ = ["LedgerBusy", "Node"]
