"""`medledger recover propose` and `medledger backup escrow` on a solo consortium, as an IT
team types them (the full recovery runs in tests/exchange/test_recovery.py)."""

from __future__ import annotations

import time
from pathlib import Path

from typer.testing import CliRunner

from medledger.cli import app
from medledger.contracts import queries
from medledger.node import Node
from medledger.provisioning import create_consortium, keygen


def _cli(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(app, list(args))
    return out.exit_code, out.output


def test_members_rebind_a_wiped_hospital_to_its_new_machine_keys(tmp_path: Path) -> None:
    homes = create_consortium(tmp_path / "net", 4, genesis_time_ms=int(time.time() * 1000))
    lyon, paris, bordeaux, lille = (str(h) for h in homes)
    fresh = tmp_path / "new-machine"
    request = keygen(fresh, "chu-lyon", "CHU de Lyon", {"gateway": "127.0.0.1:7004"})
    (fresh / "join-request.json").write_text(request.to_json())

    code, out = _cli(
        "recover", "propose", "--home", paris, "--org", "chu-lyon",
        "--request", str(fresh / "join-request.json"), "--note", "ransomware; read by phone",
    )  # fmt: skip
    assert code == 0, out
    assert "proposal 1 created" in out and "medledger member vote 1" in out
    # the wiped hospital's old key does not vote on its own rebinding
    code, out = _cli("member", "vote", "1", "--home", lyon)
    assert code != 0 and "does not vote on its own rebinding" in out
    code, out = _cli("member", "vote", "1", "--home", bordeaux)
    assert code == 0 and "bound to its new keys" not in out, out  # two of four: not yet
    code, out = _cli("member", "vote", "1", "--home", lille)
    assert code == 0 and "chu-lyon is now bound to its new keys" in out, out
    with Node.open(Path(paris)) as node:
        member = next(m for m in queries.members(node.engine) if m["org"] == "chu-lyon")
        assert member["key"] == request.key and member["box_key"] == request.box_key
        assert queries.escrow_status(node.engine, "chu-lyon")["rebind"] is None  # no escrow yet


def test_a_request_for_another_org_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    homes = create_consortium(tmp_path / "net", 3, genesis_time_ms=int(time.time() * 1000))
    fresh = tmp_path / "new-machine"
    request = keygen(fresh, "chu-bordeaux", "CHU de Bordeaux", {"gateway": "127.0.0.1:7004"})
    (fresh / "join-request.json").write_text(request.to_json())
    code, out = _cli(
        "recover", "propose", "--home", str(homes[1]), "--org", "chu-lyon",
        "--request", str(fresh / "join-request.json"),
    )  # fmt: skip
    assert code == 1 and "made for 'chu-bordeaux', not 'chu-lyon'" in out
    with Node.open(homes[1]) as node:
        assert queries.proposals(node.engine) == []


def test_backup_escrow_changes_nothing_when_a_holder_cannot_take_its_share(tmp_path: Path) -> None:
    homes = create_consortium(tmp_path / "net", 4, genesis_time_ms=int(time.time() * 1000))
    code, out = _cli("backup", "escrow", "--home", str(homes[0]))  # no gateway runs
    assert code == 1 and "escrow not changed" in out and "unreachable" in out
    with Node.open(homes[0]) as node:
        assert queries.escrow_status(node.engine, "chu-lyon")["record"] is None


def test_after_a_rebinding_the_new_machine_registers_its_practitioners_again(
    tmp_path: Path,
) -> None:
    """dr-c's key lived in the lost home (keys/practitioners/): the vote retires it, and
    `practitioner add` on the new machine's key registers dr-c again with a key made there."""
    homes = create_consortium(tmp_path / "net", 4, genesis_time_ms=int(time.time() * 1000))
    lyon, paris, bordeaux, lille = (str(h) for h in homes)
    code, out = _cli("practitioner", "add", "--home", lyon, "--id", "dr-c", "--roles", "nurse")
    assert code == 0, out
    fresh = tmp_path / "new-machine"
    request = keygen(fresh, "chu-lyon", "CHU de Lyon", {"gateway": "127.0.0.1:7004"})
    (fresh / "join-request.json").write_text(request.to_json())
    _cli("recover", "propose", "--home", paris, "--org", "chu-lyon",
         "--request", str(fresh / "join-request.json"))  # fmt: skip
    for member in (bordeaux, lille):
        assert _cli("member", "vote", "1", "--home", member)[0] == 0
    # the sandbox home now signs with the new machine's organisation key
    (Path(lyon) / "keys" / "org.key").write_bytes((fresh / "keys" / "org.key").read_bytes())
    code, out = _cli("practitioner", "list", "--home", lyon)
    assert "retired" in out, out
    code, out = _cli("practitioner", "add", "--home", lyon, "--id", "dr-c", "--roles", "nurse")
    assert code != 0 and "retired with the lost machine" in out, out  # the stolen key's file
    (Path(lyon) / "keys" / "practitioners" / "dr-c.key").unlink()
    code, out = _cli("practitioner", "add", "--home", lyon, "--id", "dr-c", "--roles", "nurse")
    assert code == 0 and "registered dr-c" in out, out
    with Node.open(Path(paris)) as node:
        (dr_c,) = queries.practitioners(node.engine, "chu-lyon")
        assert dr_c["active"] and "retired" not in dr_c
