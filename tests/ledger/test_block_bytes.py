"""What a block writes and hashes is fixed: the stored bytes and the app hashes of a chain
stay the same whatever the code that computes them (a replayed chain must hash the same).

The fast paths of Commit and FinalizeBlock (`_outcome_bytes`, `writes_digest`, `merkle.root`)
are compared with the plain definitions they replace, and a small chain's bytes with the
digests the code of session 11 (main at 17b9738) gave for it.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from medledger.contracts import default_registry
from medledger.ledger import codec, merkle
from medledger.ledger.app import Application
from medledger.ledger.genesis import Genesis, GenesisMember
from medledger.ledger.keys import SigningKey
from medledger.ledger.results import Event, TxResult
from medledger.ledger.store import Store, _outcome_bytes, writes_digest
from medledger.ledger.tx import sign_tx
from tests.support.ledger import CHAIN, PINNED_VERSIONS, T0, run_block


def _reference_outcome(results: list[TxResult], events: tuple[Event, ...]) -> bytes:
    """The stored outcome by its definition: canonical CBOR of the results' and events' objs."""
    return codec.encode([[r.to_obj() for r in results], [e.to_obj() for e in events]])


def _text(rnd: random.Random) -> str:
    return rnd.choice(["", "a", "x" * 23, "y" * 24, "z" * 300, "é", "ünï" * 9, "p-0001"])


def _event(rnd: random.Random) -> Event:
    count = rnd.choice([0, 1, 2, 23, 24, 30])
    return Event(_text(rnd), tuple((_text(rnd), _text(rnd)) for _ in range(count)))


def test_the_stored_outcome_is_the_canonical_cbor_of_results_and_events() -> None:
    rnd = random.Random(13)
    for n in (0, 1, 23, 24, 255, 256, 300):
        results = [
            TxResult(
                rnd.choice([0, 1, 5, 23, 24, 255, 256, 70_000]),
                _text(rnd),
                tuple(_event(rnd) for _ in range(rnd.choice([0, 1, 3, 25]))),
            )
            for _ in range(n)
        ]
        events = tuple(_event(rnd) for _ in range(rnd.choice([0, 2, 24])))
        assert _outcome_bytes(results, events) == _reference_outcome(results, events)


def _reference_digest(log: list[tuple[bytes, bytes | None]]) -> bytes:
    h = hashlib.sha256()
    for k, v in log:
        h.update(len(k).to_bytes(4, "big") + k)
        h.update(b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
    return h.digest()


def test_the_writes_digest_hashes_each_write_length_prefixed_in_order() -> None:
    rnd = random.Random(7)
    for sizes in ((20, 60), (4095, 4096), (5000, 70_000), (0, 0)):
        log = [
            (rnd.randbytes(sizes[0]), None if i % 7 == 0 else rnd.randbytes(sizes[1]))
            for i in range(40)
        ]
        assert writes_digest(log) == _reference_digest(log)
    assert writes_digest([]) == hashlib.sha256(b"").digest()


def _rfc6962_root(hashes: list[bytes]) -> bytes:
    """RFC 6962's definition: split at the largest power of two below n."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return merkle.inner_hash(_rfc6962_root(hashes[:k]), _rfc6962_root(hashes[k:]))


def test_the_tx_root_is_rfc_6962s_tree() -> None:
    rnd = random.Random(3)
    assert merkle.root([]) == merkle.EMPTY_ROOT
    for n in [*range(1, 40), 255, 256, 257, 400, 1025]:
        items = [rnd.randbytes(32) for _ in range(n)]
        assert merkle.root(items) == _rfc6962_root([merkle.leaf_hash(i) for i in items])
        index = rnd.randrange(n)
        assert merkle.verify_proof(items[index], merkle.proof(items, index), merkle.root(items))


def _pinned_chain(path: Path) -> Application:
    """Three blocks: registrations, a refused duplicate, a refused replayed nonce."""
    orgs = {f"h{i}": SigningKey(bytes([13, i]) * 16) for i in range(3)}
    solo = SigningKey(bytes([13, 99]) * 16)
    genesis = Genesis(
        chain_id=CHAIN,
        time_ms=T0,
        members=[GenesisMember(o, o.upper(), k.public_key) for o, k in orgs.items()],
        solo_key=solo.public_key,
        contracts=PINNED_VERSIONS,
    )
    app = Application.open(path, genesis, default_registry())
    app.init_chain()

    def register(org: str, name: str, nonce: int) -> bytes:
        body = {
            "practitioner": name,
            "key": hashlib.sha256(name.encode()).digest(),
            "roles": ["nurse"],
        }
        return sign_tx(orgs[org], CHAIN, "identity.register", body, nonce)

    run_block(app, [register("h0", "p-1", 1), register("h1", "p-2", 1)], solo)
    run_block(app, [register("h0", "p-1", 2), register("h2", "p-3", 1)], solo)
    run_block(app, [register("h1", "p-4", 1), register("h1", "p-5", 2)], solo)
    return app


def test_a_chain_stores_and_hashes_the_same_bytes_as_before(tmp_path: Path) -> None:
    app = _pinned_chain(tmp_path / "l.db")
    codes = [r.code for h in (1, 2, 3) for r in app.block(h).results]  # type: ignore[union-attr]
    app.close()
    assert codes == [0, 0, 9, 0, 5, 0]  # a duplicate and a spent nonce: refusals are stored too
    store = Store(tmp_path / "l.db")
    rows = hashlib.sha256()
    for height in (1, 2, 3):
        for column in store.raw_block(height) or ():
            rows.update(hashlib.sha256(column).digest())
    assert store.app_hash.hex() == PINNED_APP_HASH
    assert rows.hexdigest() == PINNED_BLOCK_ROWS
    assert store.locate_tx(codec.tx_id(store.block(3).txs[1])) == (3, 1)  # type: ignore[union-attr]
    store.close()


#: As computed by main at 17b9738 (session 11) for `_pinned_chain`.
PINNED_APP_HASH = "30072fc5d945235ac0b3f0bc699a7248627d00aa065fb17722cd97f5cdf9f34f"
PINNED_BLOCK_ROWS = "eee2c47e9dcb0cfefeb2d5e1361af2c4f90201f42a2e98e48dab6d4c40d3ac47"
