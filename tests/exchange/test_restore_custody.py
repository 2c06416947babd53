"""A restore checked against the chain's custody (review finding 13): the peers lost every
item of one patient (a thief's drops with the stolen key, a peer's dead disk), and nothing
at the peers says that patient existed. The chain does: the restore names the patient and
each of its records, and is not complete."""

from __future__ import annotations

from pathlib import Path

from medledger.contracts import queries
from medledger.exchange.client import ExchangeClient
from medledger.node.replicas import describe_gaps, ensure_backup_key, replica_peers, restore_vault
from medledger.provisioning.recovery import restore_lines
from medledger.vault import Vault
from medledger.vault.keys import load_kek
from medledger.vault.replication import ReplicaKeys
from tests.exchange.conftest import A, Sandbox
from tests.exchange.test_replicas import ingested  # noqa: F401

# where each table of a patient's items holds the pid (vault/replication.py's rows)
PID_AT = {"patient_keys": 0, "key_sets": 1, "records": 2}


def _items_of(vault: Vault, pid: str) -> list[str]:
    """The names of every replicated item that holds a row of this patient."""
    found = []
    for name, rows in vault.read_items(vault.item_names()).items():
        for table, at in PID_AT.items():
            if any(str(r[at]) == pid for r in (rows or {}).get(table, [])):
                found.append(name)
                break
    return found


def test_a_patient_every_peer_lost_is_named_and_the_others_come_back(
    ingested: tuple[Sandbox, list[str]],  # noqa: F811
) -> None:
    sandbox, pids = ingested
    hosp, engine = sandbox.h[A], sandbox.root.engine
    lost, kept = pids[0], pids[1:]
    assert set(queries.custody_of(engine, A)) >= set(pids)  # what the chain expects back
    keys = ReplicaKeys(ensure_backup_key(hosp.node.config.home), A)
    names = _items_of(hosp.vault, lost)
    assert any(n.startswith("record\t") for n in names) and any(
        n.startswith("key\t") for n in names
    )
    client = sandbox.x(A).client
    for peer in replica_peers(engine, A):
        client.custody_drop(peer, [keys.item_id(n) for n in names])
        sandbox.x(peer).custody.purge_expired(float("inf"))  # and the grace period passed
    lost_rids = {e["rid"] for e in queries.records_of_patient(engine, lost, A)}

    sandbox.x(A).stop()
    hosp.exchange = None
    hosp.vault.close()
    path = Path(hosp.node.config.vault_config().path or "")
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    home = hosp.node.config.home
    restorer = ExchangeClient(hosp.node, directory=sandbox.directory)
    try:
        report = restore_vault(
            home,
            ensure_backup_key(home),
            load_kek(home / "keys" / "vault.kek"),
            restorer,
            replica_peers(engine, A),
        )
    finally:
        restorer.close()
        hosp.vault = Vault.open(hosp.node.config.vault_config())
    assert report.patients_missing == [lost]
    assert {m.split(" ")[0] for m in report.missing} == lost_rids
    assert not report.complete and not report.mismatched
    assert f"with nothing restored: {lost}" in describe_gaps(report)  # backup restore
    assert any(line.startswith("  PATIENTS") and lost in line for line in restore_lines(report))
    assert set(hosp.vault.patients()) >= set(kept) and lost not in hosp.vault.patients()
    assert report.checked > 0
