"""A hospital wiped out gets its keys and records back from its peers (issue 15), on a solo
sandbox whose hospitals run their gateways in this process: the home is deleted entirely, a
fresh one is keygen'd, two thirds of the others vote `rebind_member`, and
`provisioning.recovery.recover` rebuilds the keys from the escrow and the vault from the
replicas, each record checked against the chain."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from nacl.public import PublicKey, SealedBox

from medledger.contracts import queries
from medledger.contracts.governance import Propose, Vote
from medledger.exchange import escrow as exchange_escrow
from medledger.exchange.client import ExchangeClient, ExchangeError
from medledger.interop.synth import generate
from medledger.node import Node, escrow, shredding
from medledger.node.config import save_config
from medledger.node.ingest import Ingestor
from medledger.node.replicas import replica_peers
from medledger.provisioning import create_consortium, keygen
from medledger.provisioning.recovery import (
    RecoveryError,
    RecoveryReport,
    recover,
    recover_keys,
    wait_for_rebind,
)
from medledger.vault import Vault, load_kek
from tests.exchange.conftest import Sandbox, close_sandbox, open_sandbox, wait_for


def _keys(home: Path) -> tuple[bytes, bytes]:
    return load_kek(home / "keys" / "vault.kek"), load_kek(home / "keys" / "backup.key")


def _ingest(sandbox: Sandbox, org: str, patients: int, seed: int = 5) -> list[str]:
    hosp = sandbox.h[org]
    ingestor = Ingestor(hosp.node, hosp.vault)
    rids: list[str] = []
    orgs = list(sandbox.h)
    for bundle in generate(patients, orgs, seed=seed)[org]:
        result = ingestor.ingest_bytes(orjson.dumps(bundle), "bundle.json")
        assert result.rejections == [], result.rejections
        rids += result.rids
    return rids


def _escrow(sandbox: Sandbox, org: str) -> dict[str, Any]:
    hosp = sandbox.h[org]
    done = exchange_escrow.deposit(hosp.node, sandbox.x(org).client, *_keys(hosp.node.config.home))
    status = queries.escrow_status(sandbox.root.engine, org)
    assert status["current"] and status["record"]["epoch"] == done.epoch
    return dict(status["record"])


def _wipe(sandbox: Sandbox, org: str) -> Any:
    """Stop the hospital, delete its home entirely; the config (not secret, what the
    consortium's layout gives back) is kept to be rewritten in the fresh home."""
    hosp = sandbox.h.pop(org)
    if hosp.exchange is not None:
        hosp.exchange.stop()
    hosp.vault.close()
    config = hosp.node.config
    shutil.rmtree(config.home)
    return config


def _fresh_home(config: Any) -> Any:
    """The new machine: new keys (keygen), the same org and addresses; on a solo sandbox the
    config.json is what the consortium's layout gives back."""
    addresses = {"gateway": config.exchange.listen or "127.0.0.1:0"}
    request = keygen(config.home, config.org, config.name, addresses)
    save_config(config)
    return request


def _rebind(sandbox: Sandbox, org: str, request: Any, voters: list[str]) -> int:
    """`recover propose` by the first of `voters`, `member vote` by the others."""
    proposer, *others = voters
    rebind = Propose("rebind_member", request.member_args())
    committed = sandbox.h[proposer].node.wallet.send_message(rebind)
    created = next(e for e in committed.result.events if e.type == "proposal.created")
    pid = int(created.get("id") or 0)
    for voter in others:
        sandbox.h[voter].node.wallet.send_message(Vote(pid, True))
    assert queries.proposals(sandbox.root.engine, "executed")[-1]["id"] == pid
    return pid


def _recover(sandbox: Sandbox, home: Path, timeout: float = 30.0) -> Any:
    node = sandbox.root.sibling(home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        return recover(node, client, timeout=timeout)
    finally:
        client.close()


def _network(tmp_path: Path, hospitals: int, params: dict[str, int] | None = None) -> Any:
    directory = tmp_path / "net"
    homes = create_consortium(
        directory, hospitals, genesis_time_ms=int(time.time() * 1000), params=params
    )
    sandbox = open_sandbox(directory, homes)
    for org in sandbox.h:
        sandbox.start(org)
    return sandbox


@pytest.fixture
def four(tmp_path: Path) -> Any:
    sandbox = _network(tmp_path, 4)
    try:
        yield sandbox
    finally:
        close_sandbox(sandbox)


@pytest.fixture
def five(tmp_path: Path) -> Any:
    """Five hospitals, keys escrowed 3 of 4."""
    sandbox = _network(tmp_path, 5, {"escrow_shares": 4, "escrow_threshold": 3})
    try:
        yield sandbox
    finally:
        close_sandbox(sandbox)


B = "aphp-paris"  # the hospital wiped out (not the sandbox's first, which runs the engine)


def test_escrowed_keys_come_back_to_the_new_machine_only_after_the_vote(four: Sandbox) -> None:
    sandbox = four
    old_home = sandbox.h[B].node.config.home
    old_keys = _keys(old_home)
    record = _escrow(sandbox, B)
    holders = [h["org"] for h in record["holders"]]
    assert sorted(holders) == ["chu-bordeaux", "chu-lille", "chu-lyon"]  # every founder
    thief = sandbox.x(B).client  # the old machine's key, as the attacker has it
    # before any vote, no holder releases anything
    with pytest.raises(ExchangeError) as refused:
        thief.post(holders[0], "share-release", {"epoch": record["epoch"]})
    assert refused.value.status == 403 and "no rebind_member" in refused.value.reason
    # and the thief can neither overwrite nor drop the shares with the old key
    from medledger.node.custody import Item

    item = escrow.item_id(record["epoch"], bytes(record["holders"][0]["sha256"]))
    with pytest.raises(ExchangeError) as spoiled:
        thief.custody_put(holders[0], [Item(item, 9, b"\x00" * 32, b"garbage")])
    assert spoiled.value.status == 409 and "current escrow" in spoiled.value.reason
    with pytest.raises(ExchangeError) as dropped:
        thief.custody_drop(holders[0], [item])
    assert dropped.value.status == 409

    config = _wipe(sandbox, B)
    request = _fresh_home(config)
    assert _keys(old_home) != old_keys  # keygen's new KEK and backup key
    pid = _rebind(sandbox, B, request, ["chu-lyon", "chu-bordeaux", "chu-lille"])  # 3 of 4
    sandbox.x("chu-lille").stop()  # one holder down during the recovery
    sandbox.h["chu-lille"].exchange = None

    node = sandbox.root.sibling(old_home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        report = RecoveryReport(B)
        assert wait_for_rebind(node, timeout=5) == pid
        kek, backup_key, collected = recover_keys(node, client, report)
    finally:
        client.close()
    assert (kek, backup_key) == old_keys
    assert sorted(collected.good) == ["chu-bordeaux", "chu-lyon"]
    assert list(collected.withheld) == ["chu-lille"] and not collected.corrupt
    # the old key is no one's any more: the thief gets nothing even now
    with pytest.raises(ExchangeError) as after:
        thief.post(holders[0], "share-release", {"epoch": record["epoch"]})
    assert after.value.status in (401, 403)


def _lose_and_rebind(sandbox: Sandbox, org: str, voters: list[str]) -> tuple[Path, dict[str, Any]]:
    """Escrow, wipe, fresh keys, the members' vote: what every recovery starts from."""
    record = _escrow(sandbox, org)
    config = _wipe(sandbox, org)
    request = _fresh_home(config)
    _rebind(sandbox, org, request, voters)
    return config.home, record


def test_two_shares_missing_of_three_needed_names_them_and_writes_nothing(five: Sandbox) -> None:
    sandbox = five
    home, record = _lose_and_rebind(
        sandbox, B, ["chu-lyon", "chu-bordeaux", "chu-lille", "chu-nantes"]
    )
    holders = [h["org"] for h in record["holders"]]
    assert len(holders) == 4 and record["threshold"] == 3
    for down in holders[:2]:
        sandbox.x(down).stop()
        sandbox.h[down].exchange = None
    before = {p.name: p.read_bytes() for p in (home / "keys").iterdir() if p.is_file()}
    node = sandbox.root.sibling(home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        with pytest.raises(RecoveryError) as refused:
            recover(node, client, timeout=5)
    finally:
        client.close()
    message = str(refused.value)
    assert f"2 good share(s) of 3 needed; missing from: {holders[0]}, {holders[1]}" in message
    assert "nothing was written" in message
    after = {p.name: p.read_bytes() for p in (home / "keys").iterdir() if p.is_file()}
    assert after == before and not (home / "vault.db").exists()


def test_a_holder_that_releases_a_corrupt_share_is_named(
    five: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = five
    old_keys = _keys(sandbox.h[B].node.config.home)
    home, record = _lose_and_rebind(
        sandbox, B, ["chu-lyon", "chu-bordeaux", "chu-lille", "chu-nantes"]
    )
    liar = record["holders"][1]["org"]
    gateway = sandbox.x(liar).gateway
    honest = gateway.share_release

    def corrupt(caller: Any, body: bytes, timing: Any) -> dict[str, Any]:
        """The liar releases a share of the right place and a wrong value, duly sealed."""
        answer = honest(caller, body, timing)
        member = next(m for m in queries.members(sandbox.root.engine) if m["org"] == B)
        forged = bytes([answer["x"]]) + b"\x42" * 64
        sealed = SealedBox(PublicKey(bytes(member["box_key"]))).encrypt(forged)
        return {**answer, "sealed": base64.b64encode(sealed).decode()}

    monkeypatch.setattr(gateway, "share_release", corrupt)
    node = sandbox.root.sibling(home)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        report = RecoveryReport(B)
        kek, backup_key, collected = recover_keys(node, client, report)
    finally:
        client.close()
    assert (kek, backup_key) == old_keys  # from the three honest holders
    assert list(collected.corrupt) == [liar]
    assert "does not match its hash on the chain" in collected.corrupt[liar]
    assert any(f"share CORRUPT from {liar}" in line for line in report.lines())


def test_running_nodes_escrow_their_keys_by_themselves(tmp_path: Path) -> None:
    """`medledger sandbox run` / `node run`: each node deposits its escrow once its holders
    answer, and again when a parameter makes it stale."""
    from medledger.cli._runtime import Sandbox as RunningSandbox

    directory = tmp_path / "net"
    homes = create_consortium(directory, 3, genesis_time_ms=int(time.time() * 1000))
    with RunningSandbox(homes) as running:
        engine = running.root.engine
        orgs = [r.org for r in running.runtimes]
        wait_for(
            lambda: all(queries.escrow_status(engine, o)["current"] for o in orgs),
            timeout=60,
            what="every node's escrow",
        )
        records = {o: queries.escrow_status(engine, o)["record"] for o in orgs}
        assert all(r["threshold"] == 2 and len(r["holders"]) == 2 for r in records.values())
        # what the IT team sees meanwhile (the command reads the chain beside the node)
        from typer.testing import CliRunner

        from medledger.cli import app

        out = CliRunner().invoke(app, ["backup", "escrow", "--home", str(homes[0])])
        assert out.exit_code == 0, out.output
        assert "escrow epoch 1 is current: any 2 of" in out.output
        assert "keys escrowed" not in out.output  # current: nothing deposited again


def _own_records(vault: Vault) -> dict[tuple[str, int], bytes]:
    return {
        (info.rid, info.version): vault.get(info.rid, info.version)
        for pid in vault.patients()
        for info in vault.records_of(pid, include_copies=False)
    }


def _served(node: Node, vault: Vault, rids: list[tuple[str, str]]) -> dict[str, bytes]:
    """What the hospital's FHIR API serves for these (type, id), to a system token."""
    from fastapi.testclient import TestClient

    from medledger.api.services import HospitalServices, issuer_key
    from medledger.api.tokens import mint
    from medledger.web.site import create_app

    org, now = node.config.org, int(time.time())
    claims = {
        "iss": f"urn:medledger:{org}:issuer",
        "aud": f"urn:medledger:{org}:fhir",
        "sub": f"Device/{org}-system",
        "scope": "system/*.rs",
        "iat": now,
        "exp": now + 600,
    }
    token = mint(issuer_key(node.config.home), claims)
    out = {}
    with TestClient(create_app(HospitalServices(node, vault))) as client:
        for rtype, rid in rids:
            answer = client.get(
                f"/fhir/{rtype}/{rid}", headers={"authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200, answer.text
            out[rid] = answer.content
    return out


def _replicated(sandbox: Sandbox, org: str) -> bool:
    vault = sandbox.h[org].vault
    head, acked = vault.journal_head(), vault.replica_peers()
    return all(p in acked and acked[p][0] >= head for p in replica_peers(sandbox.root.engine, org))


def test_a_wiped_hospital_gets_every_record_back_with_a_peer_down(four: Sandbox) -> None:
    sandbox = four
    hosp = sandbox.h[B]
    rids = _ingest(sandbox, B, patients=130)
    assert len(rids) >= 2000
    erased = hosp.vault.patients()[0]
    shredding.shred(hosp.node, hosp.vault, erased)
    wait_for(lambda: _replicated(sandbox, B), timeout=120, what="the replicas at both peers")
    before = _own_records(hosp.vault)
    sample = [(hosp.vault.info(rid).resource_type, rid) for rid, _ in sorted(before)[::100]]
    served = _served(hosp.node, hosp.vault, sample)
    old_keys = _keys(hosp.node.config.home)
    home, record = _lose_and_rebind(sandbox, B, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    # a peer that holds both a replica and a share is down for the whole recovery
    down = next(p for p in replica_peers(sandbox.root.engine, B) if p != "chu-lyon")
    assert down in [h["org"] for h in record["holders"]]
    sandbox.x(down).stop()
    sandbox.h[down].exchange = None

    report = _recover(sandbox, home)

    lines = "\n".join(report.lines())
    assert report.complete, lines
    assert report.restore is not None and report.restore.unreachable == [down]
    assert report.restore.checked == report.restore.records >= len(before)
    assert list(report.withheld) == [down] and not report.corrupt
    assert _keys(home) == old_keys
    node = sandbox.root.sibling(home)
    with Vault.open(node.config.vault_config()) as vault:
        assert _own_records(vault) == before  # every record, byte for byte
        assert vault.is_erased(erased) and erased not in vault.patients()
        assert _served(node, vault, sample) == served  # the FHIR API, the same bytes
    assert f"escrow epoch {record['epoch']}" in lines and f"peer {down} unreachable" in lines
    # the new escrow needs every holder: with one down, the node finishes it once it is back
    assert report.escrow is None and down in report.escrow_error
    assert "keys NOT escrowed again yet" in lines
    sandbox.start(down)
    client = ExchangeClient(node, directory=sandbox.directory)
    with Vault.open(node.config.vault_config()) as vault:
        keeper = exchange_escrow.EscrowKeeper(node, client, *_keys(home), vault)
        try:
            done = keeper.check()
        finally:
            client.close()
    assert done is not None and done.epoch == record["epoch"] + 1
    status = queries.escrow_status(sandbox.root.engine, B)
    assert status["current"] and status["rebind"] is None  # the old shares are worth nothing


def test_recover_run_beside_the_running_sandbox(tmp_path: Path) -> None:
    """The IT team's command: `medledger recover run --home NEW` while the other hospitals
    run (a solo sandbox: the command reads its ledger beside it); the node restarted on the
    recovered home escrows the keys again."""
    from typer.testing import CliRunner

    from medledger.cli import app
    from medledger.cli._runtime import HospitalRuntime
    from medledger.cli._runtime import Sandbox as RunningSandbox

    directory = tmp_path / "net"
    homes = create_consortium(directory, 4, genesis_time_ms=int(time.time() * 1000))
    with RunningSandbox(homes) as running:
        engine = running.root.engine
        i = next(n for n, r in enumerate(running.runtimes) if r.org == B)
        wiped, vault = running.runtimes[i], running.vaults[i]
        for bundle in generate(8, [r.org for r in running.runtimes], seed=9)[B]:
            Ingestor(wiped.node, vault).ingest_bytes(orjson.dumps(bundle), "b.json")
        before = _own_records(vault)
        wait_for(
            lambda: (
                queries.escrow_status(engine, B)["current"]
                and all(
                    p in vault.replica_peers()
                    and vault.replica_peers()[p][0] >= vault.journal_head()
                    for p in replica_peers(engine, B)
                )
            ),
            timeout=60,
            what="the escrow and the replicas",
        )
        wiped.stop()
        vault.close()
        config = wiped.node.config
        shutil.rmtree(config.home)
        request = _fresh_home(config)
        args = request.member_args()
        lyon = next(r for r in running.runtimes if r.org == "chu-lyon")
        bordeaux = next(r for r in running.runtimes if r.org == "chu-bordeaux")
        lille = next(r for r in running.runtimes if r.org == "chu-lille")
        lyon.node.wallet.send_message(Propose("rebind_member", args))
        bordeaux.node.wallet.send_message(Vote(1, True))
        lille.node.wallet.send_message(Vote(1, True))  # 3 of 4

        out = CliRunner().invoke(app, ["recover", "run", "--home", str(config.home)])
        assert out.exit_code == 0, out.output
        assert "checked against their commitments on the chain" in out.output
        # it submits through the sandbox's ledger socket (consensus/solo_shared.py)
        assert "keys escrowed again: epoch" in out.output

        node = running.root.sibling(config.home)
        with Vault.open(node.config.vault_config()) as restored:
            assert _own_records(restored) == before
            back = HospitalRuntime(node, restored).start()  # its node, on the recovered home
            try:
                wait_for(
                    lambda: queries.escrow_status(engine, B)["rebind"] is None,
                    timeout=30,
                    what="the new escrow by the recovered node",
                )
            finally:
                back.stop()


def test_a_node_started_on_the_fresh_home_too_early_leaves_the_replicas_alone(
    four: Sandbox,
) -> None:
    """The fresh home's node run before `recover run` (by hand, or a supervisor that came
    back): its empty vault would be a first full copy that drops every replica at the peers;
    its replicator holds back instead, and the recovery still finds everything."""
    from medledger.exchange.replicator import Replicator

    sandbox = four
    _ingest(sandbox, B, patients=6)
    wait_for(lambda: _replicated(sandbox, B), timeout=60, what="the replicas at both peers")
    before = _own_records(sandbox.h[B].vault)
    home, _ = _lose_and_rebind(sandbox, B, ["chu-lyon", "chu-bordeaux", "chu-lille"])
    node = sandbox.root.sibling(home)
    peers = replica_peers(sandbox.root.engine, B)
    client = ExchangeClient(node, directory=sandbox.directory)
    try:
        held = {p: client.custody_list(p) for p in peers}
        assert all(items for items, _ in held.values())
        with Vault.open(node.config.vault_config()) as empty:
            early = Replicator(node, empty, client)
            early.sync()
            acked, holding_back = empty.replica_peers(), early.awaiting_recovery()
        assert {p: client.custody_list(p) for p in peers} == held  # nothing dropped
        assert holding_back and acked == {}
    finally:
        client.close()
    for suffix in ("", "-wal", "-shm"):  # moved away, as recover run asks
        Path(str(node.config.vault_config().path) + suffix).unlink(missing_ok=True)
    report = _recover(sandbox, home)
    assert report.complete, "\n".join(report.lines())
    with Vault.open(node.config.vault_config()) as vault:
        assert _own_records(vault) == before
        again = ExchangeClient(node, directory=sandbox.directory)
        try:
            assert not Replicator(node, vault, again).awaiting_recovery()  # it replicates again
        finally:
            again.close()
