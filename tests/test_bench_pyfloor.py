"""`bench cometbft`'s Python floor (bench/pyfloor_app.py): the peer that does the least a signed
ledger must, behind medledger's ABCI server. The network run itself is not smoke tested (four
CometBFT nodes per app); these pin what the floor checks, what a block writes and what survives
a restart, through the same ABCI requests CometBFT sends, in process and on a loopback socket."""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import sqlite3
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import nacl.signing
import pytest

from medledger.consensus.cometbft.abci_proto import abci
from medledger.consensus.cometbft.abci_server import AbciServer, AbciServerThread
from medledger.consensus.cometbft.framing import frame, split_frames

BENCH = Path(__file__).resolve().parent.parent / "bench"
CHAIN = "medledger-bench"
SIZE = 273  # medledger's identity.register tx, as bench cometbft pads the floor's


@pytest.fixture(scope="module")
def floor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyfloor_app", BENCH / "pyfloor_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _key(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(name.encode()).digest())


NURSE, STRANGER = _key("signer-0"), _key("stranger")


def _server(floor: ModuleType, db: Path) -> AbciServer:
    app = floor.FloorApp(db, CHAIN, {bytes(NURSE.verify_key)})
    return AbciServer(app, proposal_hold_s=0)


def _check(server: AbciServer, tx: bytes) -> int:
    response = server.handle(abci.Request(check_tx=abci.RequestCheckTx(tx=tx)))
    return int(response.check_tx.code)


def _block(server: AbciServer, height: int, txs: list[bytes]) -> Any:
    request = abci.RequestFinalizeBlock(txs=txs, height=height, hash=b"\x01" * 32)
    outcome = server.handle(abci.Request(finalize_block=request)).finalize_block
    server.handle(abci.Request(commit=abci.RequestCommit()))
    return outcome


def test_checktx_verifies_signer_signature_and_nonce(floor: ModuleType, tmp_path: Path) -> None:
    server = _server(floor, tmp_path / "floor.sqlite")
    first = floor.encode_tx(NURSE, CHAIN, 1, b"p1", SIZE)
    assert len(first) == SIZE
    assert _check(server, first) == 0
    assert _check(server, first) == floor.BAD_NONCE  # a retry of an accepted tx
    assert _check(server, floor.encode_tx(NURSE, CHAIN, 3, b"p3", SIZE)) == floor.BAD_NONCE
    assert _check(server, floor.encode_tx(STRANGER, CHAIN, 1, b"x", SIZE)) == floor.UNKNOWN_SIGNER
    forged = bytearray(floor.encode_tx(NURSE, CHAIN, 2, b"p2", SIZE))
    forged[50] ^= 1  # one byte of the value changed after signing
    assert _check(server, bytes(forged)) == floor.BAD_SIGNATURE
    other_chain = floor.encode_tx(NURSE, "another-chain", 2, b"p2", SIZE)
    assert _check(server, other_chain) == floor.BAD_SIGNATURE
    assert _check(server, b"F1" + b"\x00" * 40) == floor.BAD_FORMAT
    assert _check(server, floor.encode_tx(NURSE, CHAIN, 2, b"p2", SIZE)) == 0


def test_a_block_is_written_in_one_commit_and_survives_a_restart(
    floor: ModuleType, tmp_path: Path
) -> None:
    db = tmp_path / "floor.sqlite"
    server = _server(floor, db)
    txs = [floor.encode_tx(NURSE, CHAIN, n, f"p{n}".encode(), SIZE) for n in (1, 2)]
    gapped = floor.encode_tx(NURSE, CHAIN, 4, b"p4", SIZE)  # never checked here: verified now
    assert _check(server, txs[0]) == 0
    outcome = _block(server, 1, [*txs, gapped])
    assert [r.code for r in outcome.tx_results] == [0, 0, floor.BAD_NONCE]
    rows = dict(sqlite3.connect(db).execute("SELECT k, v FROM kv"))
    assert sorted(rows) == [bytes(NURSE.verify_key) + b"p1", bytes(NURSE.verify_key) + b"p2"]
    assert set(rows[bytes(NURSE.verify_key) + b"p1"]) == {ord("v")}

    restarted = _server(floor, db)  # a crash after Commit loses nothing
    info = restarted.handle(abci.Request(info=abci.RequestInfo())).info
    assert (info.last_block_height, info.last_block_app_hash) == (1, outcome.app_hash)
    assert _check(restarted, txs[1]) == floor.BAD_NONCE  # its nonce was spent on the chain
    assert _check(restarted, floor.encode_tx(NURSE, CHAIN, 3, b"p3", SIZE)) == 0


def test_every_node_computes_the_same_app_hash(floor: ModuleType, tmp_path: Path) -> None:
    txs = [floor.encode_tx(NURSE, CHAIN, n, f"p{n}".encode(), SIZE) for n in (1, 2, 3)]
    checked, gossiped = _server(floor, tmp_path / "a.sqlite"), _server(floor, tmp_path / "b.sqlite")
    for tx in txs:  # one node checked every tx, the other none: the hash must not tell
        assert _check(checked, tx) == 0
    first, second = _block(checked, 1, txs), _block(gossiped, 1, txs)
    assert first.app_hash == second.app_hash and len(first.app_hash) == 32
    assert _block(checked, 2, []).app_hash != first.app_hash  # each height chains the last


def test_the_floor_answers_cometbft_on_a_loopback_socket(floor: ModuleType, tmp_path: Path) -> None:
    """The requests as CometBFT's socket client writes them: a burst of CheckTx, then a Flush."""
    server = AbciServerThread(_server(floor, tmp_path / "floor.sqlite"), "tcp://127.0.0.1:0")
    server.start()
    try:
        host, port = server.bound_address.removeprefix("tcp://").rsplit(":", 1)
        txs = [floor.encode_tx(NURSE, CHAIN, n, f"p{n}".encode(), SIZE) for n in (1, 2, 2)]
        requests = [abci.Request(check_tx=abci.RequestCheckTx(tx=tx)) for tx in txs]
        requests.append(abci.Request(flush=abci.RequestFlush()))
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"".join(frame(r.SerializeToString()) for r in requests))
            buf, answers = bytearray(), list[Any]()
            while len(answers) < len(requests):
                buf += conn.recv(65536)
                answers += [abci.Response.FromString(bytes(m)) for m in split_frames(buf)]
    finally:
        server.stop()
    assert [a.WhichOneof("value") for a in answers] == ["check_tx"] * 3 + ["flush"]
    assert [a.check_tx.code for a in answers[:3]] == [0, 0, floor.BAD_NONCE]


def test_the_bench_runs_the_floor_beside_the_others_and_compares(floor: ModuleType) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_cometbft_floor", BENCH / "bench_cometbft.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    assert "pyfloor" in bench.APPS and "pyfloor_bare" in bench.APPS
    assert ("medledger", "pyfloor") in bench.RATIOS and (
        "pyfloor",
        "socket_kvstore",
    ) in bench.RATIOS
    assert bench.PYFLOOR_APP == BENCH / "pyfloor_app.py"


def test_the_bare_server_gives_the_same_verdicts_and_hash(
    floor: ModuleType, tmp_path: Path
) -> None:
    """`--bare` (plain protobuf server) changes how requests are parsed, not what the floor does."""
    txs = [floor.encode_tx(NURSE, CHAIN, n, f"p{n}".encode(), SIZE) for n in (1, 2, 2)]
    bare = floor.BareServer(floor.FloorApp(tmp_path / "b.sqlite", CHAIN, {bytes(NURSE.verify_key)}))

    def ask(**request: Any) -> Any:
        raw = bare.answer(abci.Request(**request))
        return getattr(abci.Response.FromString(raw), next(iter(request)))

    codes = [ask(check_tx=abci.RequestCheckTx(tx=tx)).code for tx in txs]
    assert codes == [0, 0, floor.BAD_NONCE]
    proposal = ask(prepare_proposal=abci.RequestPrepareProposal(txs=txs, max_tx_bytes=10_000))
    assert list(proposal.txs) == txs[:2]  # the spent nonce's tx left out
    block = abci.RequestFinalizeBlock(txs=txs[:2], height=1, hash=b"\x01" * 32)
    bare_hash = ask(finalize_block=block).app_hash
    ask(commit=abci.RequestCommit())
    assert ask(info=abci.RequestInfo()).last_block_height == 1
    assert _block(_server(floor, tmp_path / "a.sqlite"), 1, txs[:2]).app_hash == bare_hash


APP = "medledger/ledger/app.py"
LOOP = (
    "BaseEventLoop._run_once (asyncio/base_events.py:1922);"
    "_AbciProtocol.data_received (medledger/consensus/cometbft/abci_server.py:773);"
    "AbciServer.handle_bytes (medledger/consensus/cometbft/abci_server.py:428)"
)


def test_the_profile_table_puts_each_sample_on_its_line(tmp_path: Path) -> None:
    """`app_steps` sorts py-spy's collapsed stacks (lines shaped like its `raw` output) into the
    table's lines by the same rules for medledger and the floor; waits are counted apart."""
    path = BENCH / "bench_cometbft.py"
    spec = importlib.util.spec_from_file_location("bench_cometbft_steps", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    check = (
        f"{LOOP};AbciServer._check_tx_outcome (x/abci_server.py:507);"
        f"Application.check_tx ({APP}:363)"
    )
    nacl = (
        "verify (medledger/ledger/keys.py:53);crypto_sign_open (nacl/bindings/crypto_sign.py:103)"
    )
    commit = (
        "AbciServer._commit (x/abci_server.py:604);Store.commit (medledger/ledger/store.py:244)"
    )
    floor = "BareServer.data_received (bench/pyfloor_app.py:230);FloorApp.finalize_block (f.py:150)"
    stacks = {
        f"{check};{nacl}": 6,
        f"{check};decode_tx (medledger/ledger/tx.py:92)": 2,
        f"{check};register (medledger/contracts/identity.py:120)": 4,
        f"{check};_ReadSet.get_raw ({APP}:103)": 3,
        f"{LOOP};{commit}": 3,
        f"{LOOP};parse_check_tx_request (x/abci_server.py:180)": 2,
        "Thread.run (threading.py:982);EpollSelector.select (selectors.py:468)": 20,
        floor: 1,
    }
    (tmp_path / "app.txt").write_text("".join(f"{k} {n}\n" for k, n in stacks.items()))
    steps = bench._collapsed_steps(tmp_path / "app.txt")
    assert steps == {
        "CheckTx: Ed25519 verify": 28.6,
        "CheckTx: the handler": 19.0,
        "CheckTx: the app's own (tx id, nonce, bookkeeping)": 14.3,
        "Commit": 14.3,
        "CheckTx: strict decoding": 9.5,
        "the server: framing, CheckTx parse and answer, dispatch, event loop": 9.5,
        "FinalizeBlock": 4.8,
        "waiting": 48.8,  # of all 41 samples; the other lines share the 21 busy ones
    }
