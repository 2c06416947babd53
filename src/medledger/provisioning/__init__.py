"""Setting a consortium up: its keys, genesis and hospital homes, and a hospital joining it.

The only package that wires the exchange's PKI, the CometBFT testnet files and the vault's
key together (`consortium`). It sits beside `web`, below `cli`: it may import every layer
below, and nothing imports it but the CLI and the tests.
"""

from medledger.provisioning.consortium import (
    Joining,
    add_hospital,
    create_consortium,
    hospital_ids,
    ports_in_use,
)

__all__ = ["Joining", "add_hospital", "create_consortium", "hospital_ids", "ports_in_use"]
