"""Setting a consortium up: its keys, genesis and hospital homes, and a hospital joining it.

`keygen` makes one hospital's keys in its own home. The only package that wires the exchange's
TLS identities, the CometBFT testnet files and the vault's
key together (`consortium`). It sits beside `web`, below `cli`: it may import every layer
below, and nothing imports it but the CLI and the tests.
"""

from medledger.provisioning.consortium import (
    Joining,
    add_hospital,
    create_consortium,
    hospital_ids,
    member_addresses,
    ports_in_use,
)
from medledger.provisioning.keygen import JoinRequest, keygen, parse_addresses

__all__ = [
    "JoinRequest",
    "Joining",
    "add_hospital",
    "create_consortium",
    "hospital_ids",
    "keygen",
    "member_addresses",
    "parse_addresses",
    "ports_in_use",
]
