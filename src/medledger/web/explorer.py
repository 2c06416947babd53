"""The network explorer: the latest blocks, the hospitals and validators with their health,
one block's txs, and a verification of the whole chain from genesis.

No personal data is on the chain, and the explorer shows tx kinds and signers, never bodies.
A verification replays the chain from genesis: it is costly, so only for signed-in users and
one at a time.
"""

from __future__ import annotations

import threading
from collections import Counter

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from medledger.api.services import HospitalServices
from medledger.contracts import queries
from medledger.web.auth import csrf_token, guard_post, login_form, services, signed_in
from medledger.web.health import hospitals_health
from medledger.web.render import message, render

_VERIFYING = threading.Lock()  # one replay from genesis at a time


def router() -> APIRouter:
    """The explorer page, a block's page and the verification."""
    routes = APIRouter(dependencies=[Depends(guard_post)])

    @routes.get("/explorer")
    def explorer(request: Request) -> Response:
        svc = services(request)
        engine = svc.node.engine
        top = engine.height()
        blocks = []
        app = svc.node.app
        if app is not None:
            for h in range(top, max(0, top - 20), -1):
                record = app.block(h)
                if record is None:
                    continue
                blocks.append(
                    {
                        "height": h,
                        "time": record.header.time_ms,
                        "txs": len(record.txs),
                        "kinds": _kinds(record.txs),
                        "app_hash": record.header.app_hash.hex()[:16],
                    }
                )
        members = queries.members(engine)
        health = hospitals_health(svc)
        validators = [
            {**m, "key": m["key"].hex()[:16], "health": health.get(m["org"])} for m in members
        ]
        return render(
            request,
            "explorer.html",
            "Network explorer",
            csrf=csrf_token(svc, signed_in(request)),
            engine=svc.node.config.engine,
            top=top,
            blocks=blocks,
            validators=validators,
        )

    @routes.get("/explorer/block/{height}")
    def block(request: Request, height: int) -> Response:
        from medledger.ledger.tx import decode_tx

        svc = services(request)
        app = svc.node.app
        # Only heights this node committed are looked up (a huge one must not reach SQLite).
        known = app is not None and 0 <= height <= svc.node.engine.height()
        record = app.block(height) if known and app is not None else None
        if record is None:
            return message(request, "No such block", "Not committed here.", 404)
        txs = []
        for i, (raw, result) in enumerate(zip(record.txs, record.results, strict=True)):
            tx = decode_tx(raw)
            txs.append(
                {
                    "index": i,
                    "id": tx.id.hex()[:16],
                    "kind": tx.kind,
                    "signer": tx.signer.hex()[:16],
                    "nonce": tx.nonce,
                    "ok": result.ok,
                    "code": result.code,
                    "log": result.log,
                }
            )
        hd = record.header
        return render(
            request,
            "block.html",
            f"Block {height}",
            time=hd.time_ms,
            hash=record.hash.hex(),
            prev_hash=hd.prev_hash.hex(),
            tx_root=hd.tx_root.hex(),
            app_hash=hd.app_hash.hex(),
            txs=txs,
        )

    @routes.post("/explorer/verify")
    async def verify(request: Request) -> Response:
        svc = services(request)
        if signed_in(request) is None:  # a replay from genesis is costly: signed-in users only
            return login_form(request, "/explorer")
        if not _VERIFYING.acquire(blocking=False):
            return message(
                request,
                "Verification",
                "A verification is already running; try again when it ends.",
                429,
            )
        try:
            ok, text = await anyio.to_thread.run_sync(_verify, svc)
        finally:
            _VERIFYING.release()
        return message(
            request,
            "Verification",
            text,
            200 if ok else 409,
            cls="ok" if ok else "bad",
            back="/explorer",
        )

    return routes


def _kinds(txs: list[bytes]) -> str:
    """The kinds of a block's txs, counted: `consent.grant×2, records.add`."""
    from medledger.ledger.tx import decode_tx

    counts = Counter(decode_tx(t).kind for t in txs)
    return ", ".join(f"{k}×{n}" if n > 1 else k for k, n in sorted(counts.items()))


def _verify(svc: HospitalServices) -> tuple[bool, str]:
    """Replay the committed chain from genesis on a second connection, checking everything."""
    from medledger.ledger.replay import VerifyError, verify_replica

    app = svc.node.app
    if app is None:
        return False, "this node keeps no ledger replica"
    try:
        report = verify_replica(app)
    except VerifyError as exc:
        return False, f"verification failed at {exc}"
    return True, (
        f"ok: replayed {report.height} blocks and {report.txs} txs from genesis; every "
        f"signature, nonce, link and app hash matches (app hash {report.app_hash.hex()[:16]}…)"
    )
