"""One place that imports the generated ABCI classes, with a helpful error when they are missing.

The classes are generated at set-up time by `scripts/gen-proto.sh` (never committed), so a fresh
checkout has none until `make proto` (or `make setup`) has run: say so instead of a bare
ModuleNotFoundError deep inside the server.
"""

from __future__ import annotations

try:
    from medledger.consensus.proto.tendermint.abci import types_pb2 as abci
    from medledger.consensus.proto.tendermint.crypto import keys_pb2 as crypto_keys
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the set-up step
    raise ModuleNotFoundError(
        "the ABCI protobuf classes are not generated: run `make proto` "
        "(scripts/gen-proto.sh v0.38.25 .venv/bin/python)"
    ) from exc

__all__ = ["abci", "crypto_keys"]
