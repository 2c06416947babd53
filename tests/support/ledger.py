"""Building blocks for ledger tests: a genesis with known keys and an app over a temp store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medledger.contracts import default_registry, default_versions
from medledger.contracts.records import META_CT_SIZES
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import sign_tx

CHAIN = "medledger-test"
T0 = 1_790_000_000_000

#: The contract versions active at `17b9738` (session 11): chains pinned byte for byte
#: (tests/ledger/test_block_bytes.py, test_replay_pinned.py) run these, so that a later
#: default does not move their bytes.
PINNED_VERSIONS = {
    "governance": 5,
    "identity": 1,
    "records": 2,
    "access": 5,
    "patients": 1,
    "policies": 1,
    "consent": 1,
    "emergency": 1,
    "referral": 1,
    "research": 3,
    "erasure": 1,
    "authorize": 1,
    "escrow": 2,
}
#: A sealed-metadata stand-in of a size the records contract accepts (padded metadata).
META_CT = b"\x01" * META_CT_SIZES[0]


@dataclass
class Net:
    genesis: Genesis
    orgs: dict[str, SigningKey]
    solo: SigningKey
    nonces: dict[bytes, int]

    def tx(
        self, key: SigningKey, kind: str, body: dict[str, Any], nonce: int | None = None
    ) -> bytes:
        n = nonce if nonce is not None else self.nonces.get(key.public_key, 0) + 1
        self.nonces[key.public_key] = max(n, self.nonces.get(key.public_key, 0))
        return sign_tx(key, CHAIN, kind, body, n)

    def app(self, path: Path | str = ":memory:") -> Application:
        app = Application.open(path, self.genesis, default_registry())
        app.init_chain()
        return app


#: The `access` version new test nets start with; the `access_version` fixture
#: (tests/contracts/conftest.py) runs a module under each version the code knows.
ACCESS_VERSION = [default_versions()["access"]]


def make_net(n: int = 3, seed: int = 1) -> Net:
    orgs = {f"h{i}": SigningKey(bytes([seed, i]) * 16) for i in range(n)}
    solo = SigningKey(bytes([seed, 99]) * 16)
    genesis = Genesis(
        chain_id=CHAIN,
        time_ms=T0,
        members=[GenesisMember(org, org.upper(), k.public_key) for org, k in orgs.items()],
        solo_key=solo.public_key,
        contracts={**default_versions(), "access": ACCESS_VERSION[0]},
    )
    return Net(genesis, orgs, solo, {})


def run_block(app: Application, txs: list[bytes], solo: SigningKey, time_ms: int | None = None):
    height = app.height + 1
    outcome = app.finalize_block(
        txs, height, time_ms or T0 + height * 1000, proposer=solo.public_key
    )
    app.commit(solo.sign(app.pending_header_bytes))
    return outcome


def register_body(name: str, key: SigningKey | None = None, roles: list[str] | None = None):
    key = key or SigningKey.generate()
    return {"practitioner": name, "key": key.public_key, "roles": roles or ["physician"]}
