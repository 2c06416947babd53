"""A fixed chain replays to the same bytes and app hashes, whatever the code's speed-ups.

The state machine's fast paths (records encoded without reordering when their keys already
come in canonical order, the message parser's inline checks, the decoder's one-step check of
a tx's fields, the kind lookup remembered per contract version) must not change one byte a
block writes, nor one refusal's wording (results are part of the block record). The figures
pinned here were computed by the code before those fast paths (main at 17b9738).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from medledger.contracts import default_registry
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey
from medledger.ledger.tx import sign_tx
from tests.support.ledger import PINNED_VERSIONS

CHAIN = "medledger-pinned"
T0 = 1_790_000_000_000


def _blocks(h0: SigningKey, h1: SigningKey) -> list[list[bytes]]:
    nurse, doctor = SigningKey(b"\x07" * 32).public_key, SigningKey(b"\x08" * 32).public_key

    def tx(key: SigningKey, nonce: int, kind: str, body: dict[str, object]) -> bytes:
        return sign_tx(key, CHAIN, kind, body, nonce)

    return [
        [
            tx(
                h0,
                1,
                "identity.register",
                {"practitioner": "n-1", "key": nurse, "roles": ["nurse"]},
            ),
            tx(
                h1,
                1,
                "identity.register",
                {"practitioner": "d-1", "key": doctor, "roles": ["physician", "emergency"]},
            ),
            # refused: the key is taken (the nonce is spent all the same)
            tx(h1, 2, "identity.register", {"practitioner": "d-2", "key": nurse, "roles": ["dpo"]}),
            # refused by the parser: an item of the wrong type, a missing and an unknown field
            tx(h0, 2, "identity.register", {"practitioner": "x", "key": doctor, "roles": [1]}),
            tx(h0, 3, "identity.register", {"practitioner": "x", "roles": ["nurse"]}),
            tx(h0, 4, "identity.revoke", {"practitioner": "n-1", "why": "gone"}),
            tx(h0, 5, "nosuch.kind", {}),
        ],
        [
            # a record read back and written again (canonical order kept), then one gaining a key
            tx(
                h0, 6, "identity.update_roles", {"practitioner": "n-1", "roles": ["nurse", "admin"]}
            ),
            tx(h1, 3, "identity.revoke", {"practitioner": "d-1", "reason": "left"}),
            tx(h1, 4, "identity.update_roles", {"practitioner": "d-1", "roles": ["nurse"]}),
        ],
    ]


def _replay(path: Path) -> list[tuple[str, str]]:
    """Each height's app hash and the SHA-256 of its stored block record (header, txs, results)."""
    h0, h1 = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
    genesis = Genesis(
        chain_id=CHAIN,
        time_ms=T0,
        members=[
            GenesisMember("h0", "H0", h0.public_key),
            GenesisMember("h1", "H1", h1.public_key),
        ],
        solo_key=SigningKey(b"\x09" * 32).public_key,
        contracts=PINNED_VERSIONS,
    )
    app = Application.open(path, genesis, default_registry())
    try:
        app.init_chain()
        out = []
        for height, txs in enumerate(_blocks(h0, h1), start=1):
            for raw in txs:
                app.check_tx(raw)  # CheckTx first, as a node does: its caches then serve the block
            time_ms = T0 + height * 1000
            app.simulate_block(txs, height, time_ms)
            outcome = app.finalize_block(txs, height, time_ms)
            app.commit()
            stored = app.store.raw_block(height)
            assert stored is not None
            out.append((outcome.app_hash.hex(), hashlib.sha256(b"".join(stored)).hexdigest()[:16]))
        return out
    finally:
        app.close()


def test_a_fixed_chain_writes_the_same_bytes_and_app_hashes_as_before(tmp_path: Path) -> None:
    assert _replay(tmp_path / "a.db") == PINNED


# (app hash, SHA-256 of the stored block record, first 8 bytes) at heights 1 and 2
PINNED = [
    ("457d67ea203e0bf21d32d1969823f8ef2bcdc7a3a1d781d3e41abd8b19aa1ccd", "739ef0ed212e4c9f"),
    ("4ffb006da186bcd723bba42c5fb6a4f6b1e8692055e9bb7e3cde6035da50bdbb", "aacae7d006f2be05"),
]
