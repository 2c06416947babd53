"""A hospital makes its keys at home and hands over only the public part, which members admit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import cast

import pytest
from typer.testing import CliRunner

from medledger.cli import app
from medledger.exchange import pki
from medledger.node.config import ConfigError
from medledger.provisioning import JoinRequest, keygen

runner = CliRunner()

ADDRESSES = {"gateway": "10.20.0.15:7443", "api": "ehr.chu-nantes.example:8443"}


def run(*args: str, ok: bool = True):
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_every_private_key_in_the_home_only_and_readable_by_its_owner(
    tmp_path: Path,
) -> None:
    home = tmp_path / "nantes"
    request = keygen(home, "chu-nantes", "CHU de Nantes", {**ADDRESSES, "p2p": "10.20.0.15:26656"})
    secrets = [
        home / "keys" / "org.key",
        home / "keys" / "box.key",
        home / "keys" / "vault.kek",
        home / "keys" / "backup.key",
        home / "keys" / "tls" / "key.pem",
        home / "cometbft" / "config" / "priv_validator_key.json",
        home / "cometbft" / "config" / "node_key.json",
    ]
    for path in secrets:
        assert _mode(path) == 0o600, path
    assert _mode(home / "keys") == 0o700 and _mode(home / "keys" / "tls") == 0o700
    assert len(bytes.fromhex((home / "keys" / "backup.key").read_text().strip())) == 32
    # Nothing was written outside the home.
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")} == {"nantes"}
    # The request carries public keys only: no private key's bytes appear in it.
    text = (home / "join-request.json").read_text()
    assert JoinRequest.from_json(text) == request
    for path in secrets[:4]:
        assert path.read_text().strip() not in text
    assert request.tls_key == pki.identity_key(pki.TlsFiles(home / "keys" / "tls"))
    node_id = request.addresses["p2p"].split("@")[0]
    assert len(node_id) == 40 and request.addresses["gateway"] == ADDRESSES["gateway"]


def test_keygen_refuses_an_existing_home_and_names_a_bad_address(tmp_path: Path) -> None:
    keygen(tmp_path / "h", "chu-nantes", "CHU de Nantes", {})
    with pytest.raises(ConfigError, match="already a hospital's home"):
        keygen(tmp_path / "h", "chu-nantes", "CHU de Nantes", {})
    with pytest.raises(ConfigError, match="gateway"):
        keygen(tmp_path / "g", "chu-nantes", "CHU de Nantes", {"gateway": "no-port"})
    assert not (tmp_path / "g" / "keys").exists()  # refused before any key was made
    bad = run("hospital", "keygen", "--home", str(tmp_path / "x"), "--org", "o", "--name", "O",
              "--address", "smtp=mail:25", ok=False)  # fmt: skip
    assert bad.exit_code == 1 and "smtp" in bad.output


def test_a_join_request_with_a_wrong_field_is_refused_by_name(tmp_path: Path) -> None:
    request = keygen(tmp_path / "h", "chu-nantes", "CHU de Nantes", ADDRESSES)
    raw = json.loads(request.to_json())
    with pytest.raises(ConfigError, match="req.json: field tls_key"):
        JoinRequest.from_json(json.dumps({**raw, "tls_key": "00" * 91}), "req.json")
    with pytest.raises(ConfigError, match="req.json: field 'box_key'"):
        JoinRequest.from_json(json.dumps({**raw, "box_key": "zz"}), "req.json")
    with pytest.raises(ConfigError, match="unknown field 'private_key'"):
        JoinRequest.from_json(json.dumps({**raw, "private_key": "00"}), "req.json")


def test_a_hospital_made_apart_is_admitted_from_its_request(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    home = tmp_path / "elsewhere" / "nantes"
    out = run(
        "hospital", "keygen", "--home", str(home), "--org", "chu-nantes", "--name",
        "CHU de Nantes", "--address", "gateway=10.20.0.15:7443",
    )  # fmt: skip
    assert '"org": "chu-nantes"' in out.output
    lyon, paris = net / "hospitals" / "chu-lyon", net / "hospitals" / "aphp-paris"
    request = home / "join-request.json"
    run("member", "propose", "admit", "-H", str(lyon), "--request", str(request))
    assert "chu-nantes is now a member" in run("member", "vote", "-H", str(paris), "1").output
    from medledger.contracts import queries
    from medledger.node import Node

    with Node.open(lyon) as node:
        nantes = next(m for m in queries.members(node.engine) if m["org"] == "chu-nantes")
        founders = {m["org"]: m for m in queries.members(node.engine)}
    wanted = JoinRequest.from_json(request.read_text())
    assert (nantes["key"], nantes["tls_key"]) == (wanted.key, wanted.tls_key)
    assert nantes["addresses"] == {"gateway": "10.20.0.15:7443"}
    # init put every founder's own TLS key and addresses into the genesis
    lyon_tls = pki.identity_key(pki.TlsFiles(lyon / "keys" / "tls"))
    assert founders["chu-lyon"]["tls_key"] == lyon_tls
    assert set(founders["chu-lyon"]["addresses"]) == {"gateway", "api"}
    assert not (net / "ca").exists()
    again = run("member", "propose", "admit", "-H", str(lyon), "--request", str(request), ok=False)
    assert again.exit_code == 1 and "already a member" in again.output


def test_keys_are_never_group_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keygen(tmp_path / "h", "chu-nantes", "CHU de Nantes", {})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "h" / "keys" / "tls" / "key.pem") == 0o600
    assert _mode(tmp_path / "h" / "keys" / "backup.key") == 0o600


def _chain_record(home: Path, org: str) -> dict[str, object]:
    from medledger.contracts import queries
    from medledger.node import Node

    with Node.open(home) as node:
        return next(m for m in queries.members(node.engine) if m["org"] == org)


def test_a_member_rotates_its_signing_and_tls_keys_switched_only_once_committed(
    tmp_path: Path,
) -> None:
    from medledger.ledger.keys import SigningKey

    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon = net / "hospitals" / "chu-lyon"
    old_key = SigningKey.from_file(lyon / "keys" / "org.key").public_key
    old_tls = pki.identity_key(pki.TlsFiles(lyon / "keys" / "tls"))
    out = run(
        "member", "update", "-H", str(lyon), "--rotate", "signing", "--rotate", "tls",
        "--address", "gateway=10.0.0.9:7443",
    )  # fmt: skip
    assert "chu-lyon updated its key,tls_key,addresses" in out.output
    record = _chain_record(lyon, "chu-lyon")
    new_key = SigningKey.from_file(lyon / "keys" / "org.key").public_key
    assert record["key"] == new_key != old_key
    assert record["tls_key"] == pki.identity_key(pki.TlsFiles(lyon / "keys" / "tls")) != old_tls
    assert record["addresses"] == {"gateway": "10.0.0.9:7443", "api": record["addresses"]["api"]}  # type: ignore[index]
    assert not (lyon / "keys" / "next").exists()
    retired = sorted(p.name.split(".")[0] for p in (lyon / "keys" / "retired").iterdir())
    assert retired == ["org", "tls"]  # the old keys are kept, out of the way
    # The hospital acts with its new key.
    run("practitioner", "add", "-H", str(lyon), "--id", "dr-r", "--roles", "nurse")


def test_a_rotation_interrupted_after_its_commit_is_finished_by_the_next_run(
    tmp_path: Path,
) -> None:
    from medledger.node import Node
    from medledger.provisioning import rotation

    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    paris = net / "hospitals" / "aphp-paris"
    live_box = (paris / "keys" / "box.key").read_text()
    with Node.open(paris) as node:  # what `member update --rotate box` does, up to its commit
        staged = rotation.stage(node.config, ["box"], node.org_key.public_key)
        node.wallet.send("governance.update_member", {"box_key": staged.body["box_key"]})
    # ...and then the process died: the live key is still the old one, the new one is staged.
    assert (paris / "keys" / "box.key").read_text() == live_box
    refused = run("member", "update", "-H", str(paris), "--rotate", "tls", ok=False)
    assert "pending" in refused.output and "box" in refused.output
    out = run("member", "update", "-H", str(paris))
    assert "switched to the new key" in out.output
    assert (paris / "keys" / "box.key").read_text() != live_box
    from nacl.public import PrivateKey

    from medledger.host.secretfile import read_hex_secret

    box = PrivateKey(read_hex_secret(paris / "keys" / "box.key"))
    assert _chain_record(paris, "aphp-paris")["box_key"] == bytes(box.public_key)


def test_a_member_rotates_its_p2p_node_key_and_only_the_new_node_is_peered(
    tmp_path: Path,
) -> None:
    """A stolen node_key.json reads the chain (the members peer with the node ids on it):
    `--rotate p2p` makes a new one and names its id in `addresses.p2p`, same host:port."""
    from medledger.node import Node
    from medledger.provisioning.keygen import node_key_id

    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon = net / "hospitals" / "chu-lyon"
    live = lyon / "cometbft" / "config" / "node_key.json"
    old_id = node_key_id(live)
    refused = run("member", "update", "-H", str(lyon), "--rotate", "p2p", ok=False)
    assert "no p2p address" in refused.output  # a solo sandbox announces none
    assert not (lyon / "keys" / "next").exists()  # nothing left staged by a refusal
    out = run(
        "member", "update", "-H", str(lyon), "--rotate", "p2p",
        "--address", f"p2p={old_id}@10.0.0.9:26656",
    )  # fmt: skip
    assert "restart the node" in out.output
    new_id = node_key_id(live)
    assert new_id != old_id
    addresses = cast(dict[str, str], _chain_record(lyon, "chu-lyon")["addresses"])
    assert addresses["p2p"] == f"{new_id}@10.0.0.9:26656"
    assert [p.name.split(".")[0] for p in (lyon / "keys" / "retired").iterdir()] == ["node_key"]
    with Node.open(lyon) as node:
        assert node.app is not None
        assert node.app.query(f"/p2p/filter/id/{new_id}", b"").code == 0
        assert node.app.query(f"/p2p/filter/id/{old_id}", b"").code != 0
