"""The CLI as a user runs it: init, practitioners, membership votes, verify, ledger show."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from medledger.cli import app
from medledger.ledger.keys import SigningKey
from medledger.ledger.store import Store

runner = CliRunner()


def run(*args: str, ok: bool = True):
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_a_consortium_from_init_to_verify(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon, paris = net / "hospitals" / "chu-lyon", net / "hospitals" / "aphp-paris"
    key_mode = stat.S_IMODE(os.stat(lyon / "keys" / "org.key").st_mode)
    assert key_mode == 0o600

    out = run(
        "practitioner",
        "add",
        "-H",
        str(lyon),
        "--id",
        "dr-martin",
        "--roles",
        "physician,emergency",
    )
    assert "registered dr-martin" in out.output
    assert (lyon / "keys" / "practitioners" / "dr-martin.key").exists()

    bad = run("practitioner", "add", "-H", str(lyon), "--id", "dr-x", "--roles", "wizard", ok=False)
    assert bad.exit_code == 1 and "unknown role 'wizard'" in bad.output
    assert not (lyon / "keys" / "practitioners" / "dr-x.key").exists()

    new_key = SigningKey.generate().public_key.hex()
    out = run(
        "member",
        "propose",
        "admit",
        "-H",
        str(lyon),
        "--org",
        "chu-nice",
        "--name",
        "CHU Nice",
        "--key",
        new_key,
    )
    assert "proposal 1 created" in out.output
    out = run("member", "vote", "-H", str(paris), "1")
    assert "chu-nice is now a member" in out.output
    twice = run("member", "vote", "-H", str(paris), "1", ok=False)
    assert "already executed" in twice.output
    assert "chu-nice" in run("member", "list", "-H", str(lyon)).output

    run("practitioner", "revoke", "-H", str(lyon), "--id", "dr-martin", "--reason", "left")
    assert "revoked" in run("practitioner", "list", "-H", str(lyon)).output

    out = run("verify", "-H", str(paris))
    assert out.output.strip().startswith("ok: height 4, 4 txs")
    assert "identity.register" in run("ledger", "show", "-H", str(paris)).output


def test_verify_fails_naming_the_height_after_tampering(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "2")
    home = net / "hospitals" / "chu-lyon"
    for name in ("a", "b", "c"):
        run("practitioner", "add", "-H", str(home), "--id", name, "--roles", "nurse")
    store = Store(net / "ledger" / "ledger.db")
    (header,) = store.execute("SELECT header FROM blocks WHERE height = 2")[0]
    store.execute(
        "UPDATE blocks SET header = ? WHERE height = 2", (header[:-1] + bytes([header[-1] ^ 1]),)
    )
    store.close()
    out = run("verify", "-H", str(home), ok=False)
    assert out.exit_code == 2
    assert "height 2" in out.output


def test_errors_name_the_file(tmp_path: Path) -> None:
    out = run("practitioner", "list", "-H", str(tmp_path / "nowhere"), ok=False)
    assert out.exit_code == 1 and "config.json: not found" in out.output
    run("init", str(tmp_path / "n"), "--hospitals", "1")
    again = run("init", str(tmp_path / "n"), ok=False)
    assert "already exists" in again.output
    bad = run("init", str(tmp_path / "m"), "--engine", "paxos", ok=False)
    assert "unknown engine" in bad.output


def test_a_hospital_joins_by_vote(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    out = run("hospital", "add", str(net), "--org", "chu-nantes", "--name", "CHU de Nantes")
    line = next(x for x in out.output.splitlines() if "member propose admit" in x)
    args = line.split("medledger ", 1)[1].replace(
        "<a member's home>", str(net / "hospitals" / "chu-lyon")
    )
    import shlex

    run(*shlex.split(args))
    assert (
        "chu-nantes is now a member"
        in run("member", "vote", "-H", str(net / "hospitals" / "aphp-paris"), "1").output
    )
    nantes = net / "hospitals" / "chu-nantes"
    run("practitioner", "add", "-H", str(nantes), "--id", "dr-n", "--roles", "nurse")
    members = run("member", "list", "-H", str(nantes)).output
    assert "CHU de Nantes" in members
    again = run("hospital", "add", str(net), "--org", "chu-nantes", "--name", "x", ok=False)
    assert "already has a home" in again.output


def test_a_contract_version_is_voted_in_and_an_unknown_one_refused(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon, paris = net / "hospitals" / "chu-lyon", net / "hospitals" / "aphp-paris"
    unknown = run(
        "member", "propose", "activate", "-H", str(lyon), "--contract", "consent",
        "--version", "99", ok=False,
    )  # fmt: skip
    assert unknown.exit_code == 1 and "no contract 'consent' version 99 is known" in unknown.output
    out = run(
        "member", "propose", "activate", "-H", str(lyon), "--contract", "consent",
        "--version", "1", "--note", "re-activate v1 (a drill)",
    )  # fmt: skip
    assert "proposal 1 created (activate_contract)" in out.output
    out = run("member", "vote", "-H", str(paris), "1")
    assert "contract consent version 1 active" in out.output
