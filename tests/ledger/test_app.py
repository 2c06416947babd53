"""The state machine: check_tx verdicts, determinism, app hash chaining, blocks and proofs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.ledger import codec
from medledger.ledger.app import Application
from medledger.ledger.contract import Context, Contract, Message, Registry, active_key
from medledger.ledger.errors import Code, TxError
from medledger.ledger.keys import SigningKey
from medledger.ledger.proofs import check_tx_proof, prove_tx
from medledger.ledger.results import Event
from medledger.ledger.store import StateView
from medledger.ledger.tx import sign_tx
from tests.support.ledger import CHAIN, T0, Net, make_net, register_body, run_block


def test_a_registration_commits_and_is_queryable() -> None:
    net = make_net()
    app = net.app()
    tx = net.tx(net.orgs["h0"], "identity.register", register_body("dr-a"))
    assert app.check_tx(tx).ok
    outcome = run_block(app, [tx], net.solo)
    assert outcome.results[0].ok
    assert [p["id"] for p in app.query_obj("identity/practitioners", {"org": "h0"})] == ["dr-a"]
    assert app.height == 1


def _rejections(net):
    h0, h1 = net.orgs["h0"], net.orgs["h1"]
    outsider = SigningKey.generate()
    good = net.tx(h0, "identity.register", register_body("dr-a"))
    forged = codec.decode(good)
    forged[1] = bytes(64)
    return [
        ("malformed", b"\x9f\x00", Code.MALFORMED),
        ("unknown kind", net.tx(h0, "nosuch.thing", {}), Code.UNKNOWN_KIND),
        ("wrong chain", sign_tx(h0, "other-chain", "identity.register", {}, 99), Code.WRONG_CHAIN),
        ("bad signature", codec.encode(forged), Code.BAD_SIGNATURE),
        ("replayed nonce", good, Code.BAD_NONCE),
        (
            "lower nonce",
            net.tx(h0, "identity.register", register_body("dr-b"), nonce=1),
            Code.BAD_NONCE,
        ),
        ("oversized", net.tx(h1, "identity.register", {"x": "a" * 600_000}), Code.TOO_LARGE),
        (
            "non-member proposes",
            sign_tx(
                outsider,
                CHAIN,
                "governance.propose",
                {"action": "remove_member", "args": {"org": "h1"}},
                1,
            ),
            Code.UNAUTHORIZED,
        ),
        (
            "unknown field",
            net.tx(h1, "identity.register", {**register_body("dr-c"), "x": 1}),
            Code.INVALID_BODY,
        ),
        (
            "wrong type",
            net.tx(h1, "identity.register", {**register_body("dr-d"), "roles": "physician"}),
            Code.INVALID_BODY,
        ),
    ], good


def test_bad_txs_are_refused_at_check_tx_with_a_stable_code_and_change_nothing() -> None:
    net = make_net()
    app = net.app()
    cases, good = _rejections(net)
    run_block(app, [good], net.solo)
    before = (app.info(), app.store.state_digest())
    for name, raw, code in cases:
        result = app.check_tx(raw)
        assert result.code == code, (name, result)
        assert result.log, name
    assert (app.info(), app.store.state_digest()) == before


def test_a_member_voting_twice_is_refused() -> None:
    net = make_net(4)
    app = net.app()
    new = SigningKey.generate()
    propose = net.tx(
        net.orgs["h0"],
        "governance.propose",
        {"action": "admit_member", "args": {"org": "h9", "name": "H9", "key": new.public_key}},
    )
    run_block(app, [propose], net.solo)
    vote = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    run_block(app, [vote], net.solo)
    again = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    result = app.check_tx(again)
    assert result.code == Code.CONFLICT
    assert "already voted" in result.log


def test_two_replicas_fed_the_same_blocks_agree_at_every_height(tmp_path) -> None:
    net = make_net()
    a, b = net.app(tmp_path / "a.db"), net.app(tmp_path / "b.db")
    assert a.info() == b.info()
    for i in range(5):
        txs = [
            net.tx(net.orgs[f"h{j}"], "identity.register", register_body(f"p{i}-{j}"))
            for j in range(3)
        ]
        ra = run_block(a, txs, net.solo)
        rb = run_block(b, txs, net.solo)
        assert ra.app_hash == rb.app_hash
        assert a.info() == b.info()
    assert a.store.state_digest() == b.store.state_digest()


def test_app_hash_chains_previous_hash_and_block_writes() -> None:
    net = make_net()
    app = net.app()
    first = run_block(
        app, [net.tx(net.orgs["h0"], "identity.register", register_body("x"))], net.solo
    )
    second = run_block(app, [], net.solo)
    # An empty block writes nothing, so its app hash is H(previous || H(no writes)).
    assert second.app_hash == codec.sha256(first.app_hash + codec.sha256(b""))


def test_a_failed_tx_spends_its_nonce_so_it_cannot_be_replayed_later() -> None:
    net = make_net()
    app = net.app()
    vote = net.tx(net.orgs["h1"], "governance.vote", {"proposal": 1, "approve": True})
    outcome = run_block(app, [vote], net.solo)  # no proposal 1 yet: refused in the block
    assert outcome.results[0].code == Code.NOT_FOUND
    assert app.check_tx(vote).code == Code.BAD_NONCE


def test_every_committed_tx_has_an_offline_checkable_inclusion_proof() -> None:
    net = make_net()
    app = net.app()
    txs = [net.tx(net.orgs["h0"], "identity.register", register_body(f"p{i}")) for i in range(7)]
    run_block(app, txs, net.solo)
    for raw in txs:
        proof = prove_tx(app.store, codec.sha256(raw))
        assert proof is not None
        assert check_tx_proof(proof, CHAIN, net.genesis.solo_key) is None
    proof = prove_tx(app.store, codec.sha256(txs[3]))
    assert proof is not None
    tampered = type(proof)(
        txs[4], proof.height, proof.index, proof.path, proof.header, proof.signature
    )
    assert "Merkle" in (check_tx_proof(tampered, CHAIN, net.genesis.solo_key) or "")
    assert "signature" in (check_tx_proof(proof, CHAIN, SigningKey.generate().public_key) or "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_check_tx(data: bytes) -> None:
    app = _fuzz_app()
    result = app.check_tx(data)
    assert result.code != 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=5))
def test_arbitrary_blocks_never_crash_finalize_block(txs: list[bytes]) -> None:
    app = _fuzz_app()
    outcome = app.simulate_block(txs, app.height + 1, 1_790_000_001_000)
    assert all(r.code != 0 for r in outcome)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(
        ["identity.register", "governance.propose", "governance.vote", "identity.revoke"]
    ),
    body=st.dictionaries(
        st.sampled_from(
            ["practitioner", "key", "roles", "action", "args", "proposal", "approve", "zz"]
        ),
        st.one_of(
            st.integers(-5, 5),
            st.text(max_size=5),
            st.binary(max_size=33),
            st.booleans(),
            st.lists(st.text(max_size=3), max_size=2),
            st.none(),
        ),
        max_size=4,
    ),
)
def test_signed_txs_with_arbitrary_bodies_never_crash(kind: str, body: dict) -> None:  # type: ignore[type-arg]
    app = _fuzz_app()
    tx = sign_tx(_FUZZ_NET.orgs["h0"], CHAIN, kind, body, 10_000 + len(_seen))
    _seen.append(1)
    result = app.check_tx(tx)
    Code(result.code)  # a known, stable code: anything else raises
    outcome = app.simulate_block([tx], app.height + 1, 1_790_000_001_000)
    assert outcome[0].code == result.code or outcome[0].code != 0


_FUZZ_NET = make_net(seed=7)
_FUZZ_APP = None
_seen: list[int] = []


def _fuzz_app():
    global _FUZZ_APP
    if _FUZZ_APP is None:
        _FUZZ_APP = _FUZZ_NET.app()
    return _FUZZ_APP


def test_a_simulated_block_is_reused_by_finalize_and_gives_the_same_outcome() -> None:
    net = make_net()
    a, b = net.app(), net.app()
    txs = [net.tx(net.orgs["h0"], "identity.register", register_body(f"s{i}")) for i in range(3)]
    simulated = a.simulate_block(txs, 1, 1_790_000_001_000)
    assert a._simulated is not None  # kept for the FinalizeBlock that follows
    out_a = a.finalize_block(txs, 1, 1_790_000_001_000)
    out_b = b.finalize_block(txs, 1, 1_790_000_001_000)  # executed from scratch
    assert [r.code for r in simulated] == [r.code for r in out_a.results] == [0, 0, 0]
    assert out_a.app_hash == out_b.app_hash
    # A different time is a different block: nothing is reused.
    c = net.app()
    c.simulate_block(txs, 1, 1_790_000_001_000)
    assert c.finalize_block(txs, 1, 1_790_000_002_000).app_hash != out_a.app_hash


# -- the mempool's view after a block (no recheck): carried over, not executed again ------

_KEYS = [SigningKey(bytes([70, i]) * 16) for i in range(3)]  # shared: registrations conflict


def _identity_tx(net: Net, org: str, kind: int, name: str, key: int, nonce: int) -> bytes:
    signer = net.orgs[org]
    if kind == 0:
        body = register_body(name, _KEYS[key])
        return net.tx(signer, "identity.register", body, nonce=nonce)
    if kind == 1:
        body = {"practitioner": name, "roles": ["nurse"]}
        return net.tx(signer, "identity.update_roles", body, nonce=nonce)
    return net.tx(signer, "identity.revoke", {"practitioner": name}, nonce=nonce)


def _executed_again(app: Application, accepted: list[bytes], included: list[bytes]) -> Any:
    """The mempool's view as a full re-execution of the waiting txs gives it."""
    saved, app._check = app._check, app._fresh_check()
    try:
        for tx in accepted:
            if tx not in included:
                app.check_tx(tx)
        return app._check
    finally:
        app._check = saved


_pool_tx = st.tuples(
    st.sampled_from(["h0", "h1"]),
    st.integers(0, 2),  # register, update_roles, revoke
    st.sampled_from(["a", "b"]),
    st.integers(0, 1),  # which shared key a registration uses
    st.integers(1, 3),  # nonce: duplicates and gaps happen
)
_picks = st.lists(st.integers(0, 11), max_size=6)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    pool=st.lists(_pool_tx, min_size=2, max_size=12),
    steps=st.lists(st.tuples(_picks, _picks), min_size=1, max_size=4),
)
def test_the_waiting_txs_carried_over_give_the_state_a_full_re_execution_gives(
    pool: list[tuple[str, int, str, int, int]], steps: list[tuple[list[int], list[int]]]
) -> None:
    """After each block the waiting txs are carried over (a handler runs again only if the
    block, or a waiting tx before it, changed what it read): the mempool's view, and the
    verdicts it gives, are those of executing every waiting tx again."""
    net = make_net(seed=7)
    app = net.app()
    txs = [_identity_tx(net, *spec) for spec in pool]
    # The blocks share a time, so the two executions can be compared byte for byte.
    same_time = T0 + 1000
    run_block(app, [], net.solo, same_time)
    for checked, included in steps:
        for i in checked:
            app.check_tx(txs[i % len(txs)])
        accepted = list(app._check.accepted)
        block = list(dict.fromkeys(txs[i % len(txs)] for i in included))
        run_block(app, block, net.solo, same_time)
        reference = _executed_again(app, accepted, block)
        assert app._check.accepted == reference.accepted
        assert app._check.view.writes == reference.view.writes
        for tx in txs:  # the same verdict for any tx checked next
            assert _verdict(app, tx) == _verdict_on(app, reference, tx)


def _verdict(app: Application, tx: bytes) -> int:
    saved = app._check
    app._check = _copy_check(saved)
    try:
        return app.check_tx(tx).code
    finally:
        app._check = saved


def _verdict_on(app: Application, check: Any, tx: bytes) -> int:
    saved, app._check = app._check, _copy_check(check)
    try:
        return app.check_tx(tx).code
    finally:
        app._check = saved


def _copy_check(check: Any) -> Any:
    from medledger.ledger.store import StateView

    view = StateView(check.view.parent)
    view.writes.update(check.view.writes)
    return type(check)(view, check.height, check.time_ms, list(check.accepted), [], [])


def test_after_a_block_only_the_waiting_txs_that_read_what_changed_run_again() -> None:
    net = make_net()
    app = net.app()
    h0, h1 = net.orgs["h0"], net.orgs["h1"]
    shared = SigningKey.generate()
    waiting = [
        net.tx(h0, "identity.register", register_body("dr-a"), nonce=1),
        net.tx(h0, "identity.register", register_body("dr-b", shared), nonce=2),
        net.tx(h0, "identity.update_roles", {"practitioner": "dr-b", "roles": ["nurse"]}, 3),
        net.tx(h0, "identity.register", register_body("dr-c"), nonce=4),
    ]
    assert all(app.check_tx(tx).ok for tx in waiting)
    ran: list[bytes] = []
    check_tx = app.check_tx

    def counting(tx: bytes, recheck: bool = False):
        ran.append(tx)
        return check_tx(tx, recheck)

    app.check_tx = counting  # type: ignore[method-assign]
    # Another hospital's block registers the key dr-b was to use.
    rival = net.tx(h1, "identity.register", register_body("dr-z", shared), nonce=1)
    assert run_block(app, [rival], net.solo).results[0].ok
    # dr-b's registration read that key: it runs again and is refused, and the role update
    # that read dr-b's record (written by it, no more) runs again and is refused too; dr-a and
    # dr-c read nothing that changed: carried over as they were.
    assert ran == [waiting[1], waiting[2]]
    assert app._check.accepted == [waiting[0], waiting[3]]
    assert app.check_tx(net.tx(h0, "identity.revoke", {"practitioner": "dr-a"}, 5)).ok
    assert app.check_tx(net.tx(h0, "identity.revoke", {"practitioner": "dr-b"}, 6)).code == int(
        Code.NOT_FOUND
    )


def test_a_waiting_tx_whose_nonce_a_block_spent_drops_out_without_running() -> None:
    net = make_net()
    app = net.app()
    h0 = net.orgs["h0"]
    ours = net.tx(h0, "identity.register", register_body("dr-ours"), nonce=1)
    assert app.check_tx(ours).ok
    theirs = net.tx(h0, "identity.register", register_body("dr-theirs"), nonce=1)
    run_block(app, [theirs], net.solo)
    assert app._check.accepted == []
    assert app.check_tx(
        net.tx(h0, "identity.update_roles", {"practitioner": "dr-ours", "roles": ["nurse"]}, 2)
    ).code == int(Code.NOT_FOUND)


def test_a_block_that_spends_a_higher_nonce_drops_the_waiting_txs_below_it_only() -> None:
    """Another node's block carries h0's nonce 3 while this mempool holds h0's 2 and 4 and
    h1's 1: 2 is spent (below the block's 3) and drops out; 4, and h1's tx, whose signer the
    block did not touch, are carried over as they were."""
    net = make_net()
    app = net.app()
    h0, h1 = net.orgs["h0"], net.orgs["h1"]
    two = net.tx(h0, "identity.register", register_body("dr-two"), nonce=2)
    four = net.tx(h0, "identity.register", register_body("dr-four"), nonce=4)
    other = net.tx(h1, "identity.register", register_body("dr-other"), nonce=1)
    assert all(app.check_tx(tx).ok for tx in (two, four, other))
    three = net.tx(h0, "identity.register", register_body("dr-three"), nonce=3)
    assert run_block(app, [three], net.solo).results[0].ok
    assert app._check.accepted == [four, other] and app._check.carried
    assert app.check_tx(net.tx(h0, "identity.revoke", {"practitioner": "dr-four"}, 5)).ok
    refused = app.check_tx(net.tx(h0, "identity.revoke", {"practitioner": "dr-two"}, 6))
    assert refused.code == int(Code.NOT_FOUND)
    assert app.check_tx(net.tx(h0, "identity.revoke", {"practitioner": "dr-x"}, 4)).code == int(
        Code.BAD_NONCE
    )


def test_a_carried_over_view_is_never_reused_as_a_block() -> None:
    """Carried-over effects ran at an earlier height and time: a block of exactly those txs
    at the view's height and time is executed, and gives what a fresh replica gives."""
    net = make_net()
    app, fresh = net.app(), net.app()
    h0, h1 = net.orgs["h0"], net.orgs["h1"]
    waiting = net.tx(h0, "identity.register", register_body("dr-w"), nonce=1)
    first = net.tx(h1, "identity.register", register_body("dr-f"), nonce=1)
    assert app.check_tx(waiting).ok
    run_block(app, [first], net.solo)
    run_block(fresh, [first], net.solo)
    assert app._check.carried and app._check.accepted == [waiting]
    height, time_ms = app._check.height, app._check.time_ms
    outcome = app.finalize_block([waiting], height, time_ms)
    assert outcome.app_hash == fresh.finalize_block([waiting], height, time_ms).app_hash


def test_a_waiting_tx_runs_again_when_an_included_tx_did_not_do_in_the_block_what_it_did_here() -> (
    None
):
    """The mempool's view had dr-a registered (by a tx this node accepted); the block carried
    that tx after a rival that took its key, so it failed there: the role update that read
    dr-a's record runs again and drops out."""
    net = make_net()
    app = net.app()
    h0, h1 = net.orgs["h0"], net.orgs["h1"]
    shared = SigningKey.generate()
    register = net.tx(h0, "identity.register", register_body("dr-a", shared), nonce=1)
    update = net.tx(h0, "identity.update_roles", {"practitioner": "dr-a", "roles": ["nurse"]}, 2)
    assert app.check_tx(register).ok and app.check_tx(update).ok
    rival = net.tx(h1, "identity.register", register_body("dr-z", shared), nonce=1)
    results = run_block(app, [rival, register], net.solo).results
    assert [r.code for r in results] == [0, int(Code.CONFLICT)]
    assert app._check.accepted == []


@dataclass
class _Ping:
    pass


class _Empty:
    """A state with nothing committed."""

    def get_raw(self, key: bytes) -> bytes | None:
        return None

    def scan_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(())


def test_a_tx_kind_is_dispatched_to_the_version_the_state_names_each_time() -> None:
    """The registry remembers where a kind's active version is kept, never the version: a
    vote that activates another version is followed by the very next tx."""

    def contract(version: int) -> Contract:
        def ping(ctx: Context, msg: _Ping) -> None:
            ctx.emit("ran", version=version)

        return Contract("demo", version, {"demo.ping": Message("demo.ping", _Ping, ping)})

    registry = Registry([contract(1), contract(2)])
    state = StateView(_Empty())
    with pytest.raises(TxError) as refused:
        registry.message(state, "demo.ping")  # no version active yet
    assert refused.value.code == Code.UNKNOWN_KIND
    for version in (1, 2, 1):
        state.put(active_key("demo"), version)
        ctx = Context(state, CHAIN, 1, T0, b"", b"")
        registry.message(state, "demo.ping").handler(ctx, _Ping())
        assert ctx.events == [Event("ran", (("version", str(version)),))]
    for kind in ("demo.pong", "nothing.at_all", "demo"):
        with pytest.raises(TxError) as refused:
            registry.message(state, kind)
        assert refused.value.code == Code.UNKNOWN_KIND


def test_the_write_listeners_hear_each_blocks_keys_before_the_commit_listeners() -> None:
    net = make_net()
    app = net.app()
    heard: list[tuple[str, int, set[bytes]]] = []
    app.add_write_listener(lambda height, keys: heard.append(("writes", height, set(keys))))
    app.add_commit_listener(lambda record: heard.append(("commit", record.height, set())))
    tx = net.tx(net.orgs["h0"], "identity.register", register_body("dr-a"))
    run_block(app, [tx], net.solo)
    (what, height, keys), after = heard
    assert (what, height, after[:2]) == ("writes", 1, ("commit", 1))
    # the keys the block wrote: the practitioner's record among them, as committed
    assert any(b"dr-a" in key for key in keys)
    with app.read_view() as state:
        assert all(state.get_raw(key) is not None for key in keys if b"dr-a" in key)
    run_block(app, [], net.solo)
    assert heard[2][:2] == ("writes", 2)


def test_a_committed_block_leaves_the_verified_tx_cache_to_the_waiting_txs() -> None:
    """The cache of verified txs holds what may still come in a block: a committed block's txs
    leave it (kept, they filled it to its bound, which the collector traversed; grow13)."""
    net = make_net()
    app = net.app()
    h0 = net.orgs["h0"]
    first = net.tx(h0, "identity.register", register_body("dr-first"), nonce=1)
    second = net.tx(h0, "identity.register", register_body("dr-second"), nonce=2)
    assert app.check_tx(first).ok and app.check_tx(second).ok
    assert {codec.tx_id(first), codec.tx_id(second)} <= set(app._verified)
    run_block(app, [first], net.solo)
    assert codec.tx_id(first) not in app._verified
    assert codec.tx_id(second) in app._verified  # still waiting: its block reuses the check
    assert app.check_tx(first).code == Code.BAD_NONCE  # sent again: verified anew, refused
    run_block(app, [second], net.solo)
    assert codec.tx_id(second) not in app._verified
