"""What a command that signs tells its user when the answer is lost: "pending", never "error",
and running it again acts once (issue 13, part 3)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.cli._common import PENDING_EXIT
from medledger.contracts import queries
from medledger.contracts.identity import UpdateRoles
from medledger.contracts.records import META_CT_SIZES
from medledger.ledger.keys import SigningKey
from medledger.node import Node
from medledger.node.outbox import Outbox, TxPending
from medledger.node.wallet import TxRejected, Wallet
from tests.contracts.test_cli_care import bind_young_custody, run

runner = CliRunner()
PID = hashlib.sha256(b"outbox patient").hexdigest()


def lose_the_next_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next send reaches the network but its commit is never seen (a dropped RPC link, a
    slow block): `Wallet._await` times out once while the tx commits anyway."""
    lost = [1]
    real = Wallet._await

    def _await(self: Wallet, tx_id: bytes, nonce: int, deadline: float) -> Any:
        if lost[0] > 0:
            lost[0] -= 1
            self.engine.wait_for_commit(tx_id, 10.0)  # it does commit...
            raise TimeoutError(f"tx {tx_id.hex()[:16]} not committed in time")  # ...unseen
        return real(self, tx_id, nonce, deadline)

    monkeypatch.setattr(Wallet, "_await", _await)


def _practitioners(home: Path) -> list[dict[str, Any]]:
    with Node.open(home) as node:
        return list(queries.practitioners(node.engine, node.config.org))


def test_a_lost_answer_is_pending_and_the_key_is_kept(
    consortium: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = consortium[0]
    lose_the_next_answer(monkeypatch)
    first = runner.invoke(
        app, ["practitioner", "add", "--home", str(home), "--id", "dr-new", "--roles", "nurse"]
    )
    assert first.exit_code == PENDING_EXIT, first.output
    assert "pending" in first.output and "error" not in first.output
    assert "medledger tx status" in first.output
    with Node.open(home) as node:
        key_path = node.config.practitioner_key_path("dr-new")
    assert key_path.exists(), "the key must be on disk before its registration leaves"
    registered = [p for p in _practitioners(home) if p["id"] == "dr-new"]
    assert len(registered) == 1
    assert bytes(registered[0]["key"]) == SigningKey.from_file(key_path).public_key

    status = runner.invoke(app, ["tx", "status", "--home", str(home)])
    assert status.exit_code == 0, status.output
    assert "identity.register" in status.output and "committed" in status.output

    again = runner.invoke(
        app, ["practitioner", "add", "--home", str(home), "--id", "dr-new", "--roles", "nurse"]
    )
    assert again.exit_code == 0, again.output
    assert "already registered" in again.output
    assert [p["id"] for p in _practitioners(home)].count("dr-new") == 1


def test_a_consent_run_again_after_pending_is_granted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon = str(net / "hospitals" / "chu-lyon")
    paris = str(net / "hospitals" / "aphp-paris")
    with Node.open(Path(lyon)) as node:  # a record of the patient: Lyon is a custodian
        node.wallet.send(
            "records.register",
            {
                "entries": [
                    {
                        "rid": "r-1",
                        "pid": PID,
                        "commitment": hashlib.sha256(b"r-1").digest(),
                        "meta_ct": b"c" * META_CT_SIZES[0],
                    }
                ]
            },
        )
    run("practitioner", "add", "-H", lyon, "--id", "nurse-lyon", "--roles", "nurse")
    bind_young_custody(lyon, paris)
    form = tmp_path / "form.pdf"
    form.write_bytes(b"signed consent form")
    patient_key = tmp_path / "patient.key"
    key = SigningKey.generate()
    key.save(patient_key)
    run("consent", "bind-key", "-H", lyon, "--patient", PID, "--key", key.public_key.hex(),
        "--evidence-file", str(form))  # fmt: skip

    grant = ("consent", "grant", "-H", lyon, "--patient", PID, "--grantee", "org:aphp-paris",
             "--categories", "labs", "--purpose", "treatment",
             "--patient-key", str(patient_key))  # fmt: skip
    lose_the_next_answer(monkeypatch)
    first = runner.invoke(app, list(grant))
    assert first.exit_code == PENDING_EXIT, first.output
    assert "pending" in first.output
    # Run again, as a user would: its start is "now" again, yet it is the same act.
    again = run(*grant)
    assert "consent 1 granted to org:aphp-paris" in again.output
    with Node.open(Path(lyon)) as node:
        consents = queries.consent_list(node.engine, PID)
    assert [c["grantee"] for c in consents] == ["org:aphp-paris"]


def test_the_same_act_is_resent_not_signed_twice(consortium: list[Path]) -> None:
    """A tx whose fate is still open is submitted again as the same bytes."""
    home = consortium[0]
    run("practitioner", "add", "-H", str(home), "--id", "dr-a", "--roles", "nurse")
    with Node.open(home) as node:
        outbox = Outbox(node.config.home / "outbox")
        wallet = node.wallet
        msg = UpdateRoles("dr-a", ["physician"])
        signed: list[bytes] = []
        real_send = wallet.send

        def send_unseen(kind: str, body: dict[str, Any], **kw: Any) -> Any:
            # Signed and kept, then the link drops before it reaches the network.
            on_signed = kw["on_signed"]
            from medledger.ledger.tx import sign_tx

            tx = sign_tx(wallet.key, wallet.chain_id, kind, body, wallet._next_nonce())
            on_signed(tx)
            signed.append(tx)
            raise ConnectionError("connection reset")

        wallet.send = send_unseen  # type: ignore[method-assign]
        with pytest.raises(TxPending) as pending:
            outbox.send(wallet, msg)
        assert "pending" in str(pending.value)
        wallet.send = real_send  # type: ignore[method-assign]
        assert len(outbox.entries()) == 1

        committed = outbox.send(wallet, msg)  # the run again: the same tx, resubmitted
        from medledger.ledger.tx import tx_id

        assert committed.tx_id == tx_id(signed[0])
        assert outbox.entries() == []


def test_a_refusal_is_an_error_and_leaves_nothing_behind(consortium: list[Path]) -> None:
    with Node.open(consortium[0]) as node:
        outbox = Outbox(node.config.home / "outbox")
        with pytest.raises(TxRejected):
            outbox.send(node.wallet, UpdateRoles("nobody-here", ["physician"]))
        assert outbox.entries() == []


def test_nothing_signed_is_not_pending(consortium: list[Path]) -> None:
    """A node that cannot be reached before signing: an error (nothing can commit)."""
    with Node.open(consortium[0]) as node:
        outbox = Outbox(node.config.home / "outbox")

        def unreachable(*_: Any, **__: Any) -> Any:
            raise ConnectionError("refused")

        node.wallet.send = unreachable  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            outbox.send(node.wallet, UpdateRoles("dr-a", ["physician"]))
        assert outbox.entries() == []
