"""What a hospital's staff does, run inside its namespace next to its running node.

    python -m tests.netns.act ACTION --home H [args]     prints one JSON line

Each action opens the hospital's node as the CLI does (its CometBFT RPC on the namespace's
loopback) and does one thing the netns test checks: ingest a record, record a consent, fetch a
patient's records from another hospital across the bridge (each checked against its commitment
on the chain), refer a patient, admit them, read a referral's status, the height, the members,
or call a gateway's health (to see a removed member refused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson


def _ingest(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    from medledger.interop.synth import generate
    from medledger.node.ingest import Ingestor
    from medledger.vault import Vault

    bundle = generate(1, [node.config.org], seed=args.seed)[node.config.org][0]
    with Vault.open(node.config.vault_config()) as vault:
        result = Ingestor(node, vault).ingest_bytes(orjson.dumps(bundle), "netns.json")
    assert result.rejections == [], result.rejections
    (pid,) = result.pids
    return {"pid": pid, "rids": result.rids}


def _consent(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A treatment consent the patient asked for on this hospital's portal."""
    body = {
        "pid": args.pid,
        "grantee": f"org:{args.org}",
        "categories": ["*"],
        "purpose": "treatment",
        "start_ms": 0,
        "evidence_hash": hashlib.sha256(b"the patient's signed consent form").digest(),
        "channel": "portal",
    }
    committed = node.wallet.send("consent.grant", body)
    (event,) = [e for e in committed.result.events if e.type == "consent.granted"]
    return {"consent": int(event.get("id") or 0)}


def _fetch(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    from medledger.exchange.client import ExchangeClient

    client = ExchangeClient(node)
    try:
        entries = client.index(args.org, args.pid)
        fetched = client.fetch(args.org, args.pid, [e["rid"] for e in entries])
    finally:
        client.close()
    return {"entries": len(entries), "records": [r.rid for r in fetched.records]}


def _refer(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    from medledger.contracts.referral import Create
    from medledger.node.notes import NoteStore, referral_letter
    from medledger.vault import Vault

    with Vault.open(node.config.vault_config()) as vault:
        rids = [i.rid for i in vault.records_of(args.pid, include_copies=False)][:5]
    committed = node.wallet.send_message(
        Create(
            pid=args.pid,
            to=args.org,
            date_ms=int(time.time() * 1000) + 3 * 86_400_000,
            categories=["labs", "conditions", "medications", "allergies", "imaging"],
            procedure_hash=referral_letter(NoteStore(node.config.home), b"referral: bypass"),
            rids=rids,
            consent=args.consent,
        )
    )
    ref = next(e.get("id") for e in committed.result.events if e.type.startswith("referral."))
    return {"referral": int(ref or 0), "rids": rids}


def _admit(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    from medledger.contracts.referral import Admit

    node.wallet.send_message(Admit(args.referral))
    return {"admitted": args.referral}


def _status(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    from medledger.contracts import queries

    status = queries.referral_status(node.engine, args.referral) or {}
    return {"status": status.get("status")}


def _height(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {"height": node.engine.height()}


def _members(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    from medledger.contracts import queries

    return {"members": {m["org"]: m["power"] for m in queries.members(node.engine)}}


def _health(node: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The other hospital's gateway health, over this hospital's mTLS client."""
    import httpx

    from medledger.exchange.client import ExchangeClient

    client = ExchangeClient(node)
    try:
        answer = client._client(args.org).get("/exchange/v1/health")
        return {"status": answer.status_code}
    except httpx.HTTPError as exc:
        return {"status": 0, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()


ACTIONS = {
    "ingest": _ingest,
    "consent": _consent,
    "fetch": _fetch,
    "refer": _refer,
    "admit": _admit,
    "status": _status,
    "height": _height,
    "members": _members,
    "health": _health,
}


def main(argv: list[str] | None = None) -> int:
    from medledger.node import Node

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--org", default="")
    parser.add_argument("--pid", default="")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--consent", type=int, default=0)
    parser.add_argument("--referral", type=int, default=0)
    args = parser.parse_args(argv)
    with Node.open(args.home) as node:
        print(json.dumps(ACTIONS[args.action](node, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
