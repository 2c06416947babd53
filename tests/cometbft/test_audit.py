"""The fault run's finding, replayed on the four-hospital CometBFT network: a hospital's node
(`medledger node run`) killed with SIGKILL while its API serves reads, then restarted with
its CometBFT, loses no access entry: every read a client was served is on the chain, once,
whatever the first txs after the restart met (a replica behind, a nonce already spent)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import orjson

from medledger.api.services import issuer_key
from medledger.api.tokens import mint
from medledger.consensus.cometbft import processes
from medledger.contracts.access import journal_ref
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.audit import read_journal
from medledger.node.config import load_config
from medledger.node.ingest import Ingestor
from medledger.vault import Vault

from .conftest import CmtNet, wait_until


def _pending(home: Path) -> int:
    return sum(len(g) for g in read_journal(home / "audit" / "journal")[0])


def test_a_node_killed_mid_read_load_loses_no_served_read(cmt_net: CmtNet) -> None:
    net = cmt_net
    org = net.orgs[0]
    home = net.home(org)
    with Node.open(home) as node, Vault.open(node.config.vault_config()) as vault:
        bundle = generate(1, [org], seed=13)[org][0]
        result = Ingestor(node, vault).ingest_bytes(orjson.dumps(bundle), "p.json")
        (pid,) = result.pids
        rid = next(r for r in result.rids if vault.info(r).resource_type == "Observation")
    config = load_config(home)
    host, port = config.api.address
    now = int(time.time())
    token = mint(
        issuer_key(home),
        {
            "iss": f"urn:medledger:{org}:issuer",
            "aud": f"urn:medledger:{org}:fhir",
            "sub": f"Patient/{pid}",
            "scope": "patient/*.rs",
            "patient": pid,
            "iat": now,
            "exp": now + 600,
        },
    )
    served: list[int] = []
    stop = threading.Event()

    def load() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://{host}:{port}", headers=headers, timeout=5) as c:
            while not stop.is_set():
                try:
                    if c.get(f"/fhir/Observation/{rid}").status_code == 200:
                        served.append(1)
                except httpx.TransportError:
                    time.sleep(0.05)  # killed, or not yet back: nothing served

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(served) >= 40 and _pending(home) > 0, 60, "reads under load")
        processes.kill_app(net.dir, org)
        killed_with = _pending(home)
        processes.start_hospitals(net.dir, [org])
        wait_until(lambda: len(served) >= 80, 60, "reads served again after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert killed_with > 0  # the kill left entries off the chain
    wait_until(lambda: _pending(home) == 0, 60, "the journal to be on the chain")
    with net.engine(org) as engine:
        trail = engine.query("access/of_patient", {"pid": pid})
    reads = [e for e in trail if e["action"] == "read" and e["rids"] == [rid]]
    assert len({journal_ref(e) for e in reads}) == len(reads)  # none written twice
    assert len(reads) >= len(served)
