"""Real processes on a solo sandbox: a hospital's records reach its replica peers while
`medledger sandbox run` serves; its vault file is deleted; `medledger backup restore` brings
it back from the two peers; after a restart the FHIR API serves the same bytes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from medledger.consensus.solo_shared import SoloClient
from medledger.contracts import default_registry
from medledger.interop.synth import generate
from medledger.node.config import load_config
from medledger.node.replicas import replica_peers
from medledger.provisioning import create_consortium
from medledger.vault import Vault

MEDLEDGER = str(Path(sys.executable).parent / "medledger")


def run(*args: str) -> str:
    done = subprocess.run([MEDLEDGER, *args], capture_output=True, check=False, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    return done.stdout.decode()


def replicated(home: Path) -> bool:
    config = load_config(home)
    reader = SoloClient(config.ledger_db, default_registry(), None)
    try:
        peers = replica_peers(reader, config.org)
    finally:
        reader.close()
    with Vault.open(config.vault_config()) as vault:
        head, acked = vault.journal_head(), vault.replica_peers()
    return len(peers) == 2 and all(p in acked and acked[p][0] >= head for p in peers)


def served(home: Path, token: str, rids: list[tuple[str, str]]) -> dict[str, bytes]:
    api = f"http://{load_config(home).api.listen}"
    out: dict[str, bytes] = {}
    deadline = time.monotonic() + 180  # a loaded machine starts a sandbox slowly
    with httpx.Client(base_url=api, timeout=30) as client:
        while True:  # the API starts a moment after the gateway
            try:
                client.get("/fhir/metadata")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        for rtype, rid in rids:
            answer = client.get(
                f"/fhir/{rtype}/{rid}", headers={"authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200, answer.text
            out[rid] = answer.content
    return out


def sandbox(net: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [MEDLEDGER, "sandbox", "run", str(net)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")


def test_a_deleted_vault_is_restored_from_two_peers_and_served_the_same(tmp_path: Path) -> None:
    net = tmp_path / "net"
    homes = create_consortium(net, 3, genesis_time_ms=int(time.time() * 1000))
    home = homes[0]
    org = load_config(home).org
    files = []
    for i, bundle in enumerate(generate(6, [h.name for h in homes], seed=5)[org]):
        path = tmp_path / "in" / f"b{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(bundle))
        files.append(str(path))
    run("ingest", "--home", str(home), *files)
    with Vault.open(load_config(home).vault_config()) as vault:
        rids = [
            (info.resource_type, info.rid)
            for pid in vault.patients()
            for info in vault.records_of(pid, include_copies=False)
        ]
    token = run("token", "--home", str(home), "--user", "system", "--scopes", "system/*.rs")
    token = "".join(token.split())

    proc = sandbox(net)
    try:
        deadline = time.monotonic() + 180
        while not replicated(home):
            assert time.monotonic() < deadline, "the replicas did not reach both peers"
            time.sleep(0.3)
        before = served(home, token, rids)
        status = run("backup", "status", "--home", str(home))
        peers = [h.name for h in homes[1:]]
        assert all(p in status for p in peers) and "never" not in status

        vault_file = Path(load_config(home).vault_config().path or "")
        for suffix in ("", "-wal", "-shm"):
            Path(str(vault_file) + suffix).unlink(missing_ok=True)
        restored = run("backup", "restore", "--home", str(home), "--complete")
        found = re.search(r"(\d+) record versions \((\d+) checked against the chain\)", restored)
        assert found is not None, restored
        assert int(found[1]) == int(found[2]) >= len(rids)
    finally:
        stop(proc)

    proc = sandbox(net)  # the hospital's node opens the restored vault
    try:
        assert served(home, token, rids) == before
    finally:
        stop(proc)
