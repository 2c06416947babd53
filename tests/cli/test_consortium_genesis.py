"""Founding a consortium across machines: each founder keygens at home, one of them makes the
genesis from the public join requests (`consortium genesis`), each configures itself from that
file (`join --genesis`). No private key is read, and a request that cannot found is named."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from medledger.cli import app
from medledger.node.config import load_config
from medledger.provisioning import keygen

runner = CliRunner()

# What the founders' operators typed: loopback ports for the first (so the second's key fetch
# is refused at once), a DNS name for another, as hospitals' IT teams write them.
FOUNDERS = [
    ("chu-lyon", "CHU de Lyon", {"gateway": "127.0.0.1:7", "p2p": "127.0.0.1:26656"}),
    (
        "aphp-paris",
        "AP-HP Paris",
        {
            "gateway": "ledger.aphp.example:7443",
            "api": "ehr.aphp.example:8443",
            "p2p": "10.20.0.12:26656",
        },
    ),  # fmt: skip
    ("chu-lille", "CHU de Lille", {"gateway": "10.20.0.14:7004", "p2p": "10.20.0.14:26656"}),
]


def run(*args: str, ok: bool = True) -> Any:
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _founders(tmp_path: Path) -> list[Path]:
    """Each founder's home, made as on its own machine; their join requests."""
    paths = []
    for org, name, addresses in FOUNDERS:
        keygen(tmp_path / org, org, name, addresses)
        paths.append(tmp_path / org / "join-request.json")
    return paths


def _genesis(out: Path, requests: list[Path], *more: str, ok: bool = True) -> Any:
    args = [arg for path in requests for arg in ("--request", str(path))]
    return run(
        "consortium", "genesis", "--chain-id", "medledger-found", *args, "--out", str(out),
        *more, ok=ok,
    )  # fmt: skip


def test_founders_make_the_genesis_from_their_requests_and_each_configures_its_own_home(
    tmp_path: Path,
) -> None:
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    said = _genesis(out, requests, "--power", "chu-lille=0", "--block-time", "500ms").output
    digest = re.search(r"genesis hash ([0-9a-f]{64})", said)
    assert digest, said

    founding = json.loads(out.read_text())
    assert founding["genesis_hash"] == digest[1]
    members = founding["genesis"]["members"]
    assert [m["org"] for m in members] == ["chu-lyon", "aphp-paris", "chu-lille"]
    assert [m["power"] for m in members] == [10, 10, 0]
    validators = founding["cometbft"]["genesis"]["validators"]
    assert [v["name"] for v in validators] == ["chu-lyon", "aphp-paris"]  # power 0: not one
    # Only public keys: no private key of any founder is in the file.
    text = out.read_text()
    for org, _, _ in FOUNDERS:
        for secret in ("org.key", "box.key", "vault.kek", "backup.key"):
            assert (tmp_path / org / "keys" / secret).read_text().strip() not in text

    # The first founder makes the consortium's pseudonym key.
    lyon = run("join", "--home", str(tmp_path / "chu-lyon"), "--genesis", str(out),
               "--genesis-hash", digest[1]).output  # fmt: skip
    assert f"genesis hash {digest[1]} checked" in lyon and "pseudonym key made here" in lyon
    assert len((tmp_path / "chu-lyon" / "keys" / "pseudonym.key").read_text().strip()) == 64

    # Another founder: configured, but told plainly the key is not there yet (Lyon not running).
    paris = run("join", "--home", str(tmp_path / "aphp-paris"), "--genesis", str(out)).output
    assert "pseudonym key: not yet" in paris and "run this command again" in paris
    assert "no replica of the chain yet" in paris  # never pinned from the genesis
    assert "warning" not in paris  # the founding file names this home's own p2p node
    assert not (tmp_path / "aphp-paris" / "keys" / "pseudonym.key").exists()
    config = load_config(tmp_path / "aphp-paris")
    assert config.genesis().hash().hex() == digest[1] and config.block_time_ms == 500
    assert config.exchange.listen == "ledger.aphp.example:7443"
    assert config.exchange.peers == {
        "chu-lyon": "https://127.0.0.1:7",
        "aphp-paris": "https://ledger.aphp.example:7443",
        "chu-lille": "https://10.20.0.14:7004",
    }
    toml = tomllib.loads(
        (tmp_path / "aphp-paris" / "cometbft" / "config" / "config.toml").read_text()
    )
    peers = toml["p2p"]["persistent_peers"].split(",")
    assert [p.split("@")[1] for p in peers] == ["127.0.0.1:26656", "10.20.0.14:26656"]
    cmt = json.loads((tmp_path / "aphp-paris" / "cometbft" / "config" / "genesis.json").read_text())
    assert cmt == founding["cometbft"]["genesis"]


def test_a_genesis_is_refused_naming_the_request_that_cannot_found(tmp_path: Path) -> None:
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    lyon = json.loads(requests[0].read_text())

    # The same keys under another org name (a copied home): named, with the file it copies.
    copy = tmp_path / "copy.json"
    lille = json.loads(requests[2].read_text())
    copy.write_text(json.dumps({**lyon, "org": "chu-nantes", "addresses": lille["addresses"]}))
    bad = _genesis(out, [requests[0], copy], ok=False)
    assert bad.exit_code == 1
    assert "copy.json: field key: the same as key in" in bad.output
    assert "chu-lyon/join-request.json" in bad.output.replace("\n", "")

    twice = _genesis(out, [requests[0], requests[0]], ok=False)
    assert "field org: the same as org" in twice.output

    # A founder the others cannot dial.
    no_p2p = tmp_path / "no-p2p.json"
    no_p2p.write_text(json.dumps({**lyon, "addresses": {"gateway": "10.0.0.9:7004"}}))
    assert "addresses.p2p: missing" in _genesis(out, [no_p2p], ok=False).output

    # A file that is not a request, a power for a stranger, nobody validating, no CometBFT.
    broken = tmp_path / "broken.json"
    broken.write_text('{"org": "chu-lyon",')
    assert "broken.json: not JSON" in _genesis(out, [broken], ok=False).output
    stranger = _genesis(out, requests, "--power", "chu-nantes=10", ok=False)
    assert "chu-nantes is not among the founders" in stranger.output
    nobody = _genesis(out, requests[:1], "--power", "chu-lyon=0", ok=False)
    assert "at least one founder must validate" in nobody.output
    solo = _genesis(out, requests, "--engine", "solo", ok=False)
    assert "need CometBFT" in solo.output
    assert not out.exists()  # nothing written by any refusal

    _genesis(out, requests)
    again = _genesis(out, requests, ok=False)
    assert "already exists" in again.output


def test_join_genesis_refuses_a_wrong_hash_or_tampered_validators_writing_nothing(
    tmp_path: Path,
) -> None:
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    _genesis(out, requests)
    home = tmp_path / "chu-lille"

    wrong = run("join", "--home", str(home), "--genesis", str(out), "--genesis-hash", "ab" * 32,
                ok=False)  # fmt: skip
    assert wrong.exit_code == 1 and "this is not the consortium you were given" in wrong.output

    # Someone swaps a validator in the CometBFT part, which the genesis hash does not cover.
    founding = json.loads(out.read_text())
    founding["cometbft"]["genesis"]["validators"][0]["power"] = "1000"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(founding))
    bad = run("join", "--home", str(home), "--genesis", str(tampered), ok=False)
    assert "validators differ from the genesis" in bad.output
    assert not (home / "config.json").exists() and not (home / "consortium").exists()

    both = run("join", "--home", str(home), "--genesis", str(out), "--from", "https://x:1",
               ok=False)  # fmt: skip
    assert "either --from URL" in both.output


def test_a_starting_parameter_a_vote_could_not_set_is_refused_by_name(tmp_path: Path) -> None:
    """A founder types the consortium's first parameters; governance's bounds apply to them
    as to a vote (a threshold above the shares would make every escrowed key unrecoverable)."""
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    crossed = _genesis(out, requests, "--param", "escrow_threshold=4", ok=False)
    assert crossed.exit_code != 0
    assert "params.escrow_threshold: escrow_threshold would be 4 and escrow_shares 3" in (
        crossed.output
    )
    typo = _genesis(out, requests, "--param", "study_min_cel=10", ok=False)
    assert "params.study_min_cel: no such parameter" in typo.output
    assert not out.exists()  # nothing written
    _genesis(out, requests, "--param", "study_min_cell=10", "--param", "escrow_shares=4")
    params = json.loads(out.read_text())["genesis"]["params"]
    assert params["study_min_cell"] == 10 and params["escrow_shares"] == 4


def test_join_refuses_a_founding_file_whose_parameters_were_edited(tmp_path: Path) -> None:
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    _genesis(out, requests)
    founding = json.loads(out.read_text())
    founding["genesis"]["params"]["proposal_ttl_ms"] = 0  # one vote would freeze governance
    out.write_text(json.dumps(founding))
    home = tmp_path / "chu-lyon"
    said = run("join", "--home", str(home), "--genesis", str(out), ok=False)
    assert said.exit_code != 0 and "params.proposal_ttl_ms: proposal_ttl_ms is" in said.output
    assert not (home / "genesis.json").exists()  # nothing written


def test_a_parameter_in_other_digits_is_refused_as_not_a_number(tmp_path: Path) -> None:
    """A superscript two is a digit to str.isdigit(), not to int(): refused as such."""
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    for option, value in (("--param", "study_min_cell=²"), ("--power", "chu-lyon=١٠")):
        said = _genesis(out, requests, option, value, ok=False)
        assert said.exit_code != 0 and isinstance(said.exception, SystemExit), said.output
        assert f"{option} {value!r}: expected" in said.output
    assert not out.exists()


def test_join_refuses_a_parameter_no_contract_knows_or_warns_of_it_before_the_rule(
    tmp_path: Path,
) -> None:
    """From governance v6 the nodes' InitChain refuses a name no contract knows (session 14),
    so join refuses such a genesis, naming it, before writing anything. Before v6 InitChain
    ignores it: the consortium runs without it, so join says so rather than refusing a
    genesis its members run on."""
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    _genesis(out, requests)
    founding = json.loads(out.read_text())
    founding["genesis"]["params"]["study_min_cel"] = 10  # a file edited since it was checked
    out.write_text(json.dumps(founding))
    home = tmp_path / "chu-lyon"
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    said = run("join", "--home", str(home), "--genesis", str(out), ok=False)
    assert said.exit_code == 1
    assert "params.study_min_cel: no such parameter" in said.output.replace("\n", "")
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == before
    founding["genesis"]["contracts"]["governance"] = 5  # a typo made before the rule
    out.write_text(json.dumps(founding))
    said = run("join", "--home", str(home), "--genesis", str(out)).output.replace("\n", " ")
    assert "which the nodes ignore: study_min_cel" in said
    assert load_config(home).genesis().params["study_min_cel"] == 10


def test_join_takes_a_genesis_founded_before_the_rule_as_its_nodes_replay_it(
    tmp_path: Path,
) -> None:
    """A consortium founded before session 11 (governance v4) took its parameters unchecked,
    and its nodes' InitChain still does: join refuses only what that InitChain would refuse
    (a value int() cannot read), not today's bounds (review 11a, finding 4)."""
    requests = _founders(tmp_path)
    out = tmp_path / "genesis.json"
    _genesis(out, requests)
    founding = json.loads(out.read_text())
    founding["genesis"]["contracts"]["governance"] = 4
    founding["genesis"]["params"].update(study_min_cell=1, emergency_max_ms=0)
    out.write_text(json.dumps(founding))
    home = tmp_path / "chu-lyon"
    run("join", "--home", str(home), "--genesis", str(out))
    assert load_config(home).genesis().params["study_min_cell"] == 1

    founding["genesis"]["params"]["study_min_cell"] = "few"
    out.write_text(json.dumps(founding))
    said = run("join", "--home", str(tmp_path / "aphp-paris"), "--genesis", str(out), ok=False)
    assert "params.study_min_cell: an integer expected" in said.output
