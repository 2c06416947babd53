"""`medledger demo`: a consortium in action, narrated in plain words."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import console, user_errors


def say(text: str) -> None:
    console.print(f"[bold cyan]>[/] {text}")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        directory: Annotated[
            Path | None, typer.Option(help="Keep the demo consortium here (default: temporary).")
        ] = None,
    ) -> None:
        """Create a consortium, admit a hospital by vote, register practitioners, verify."""
        from medledger.contracts import default_registry
        from medledger.ledger.keys import SigningKey
        from medledger.ledger.replay import verify_history
        from medledger.network import create_consortium
        from medledger.node import Node

        keep = directory is not None
        base = directory or Path(tempfile.mkdtemp(prefix="medledger-demo-"))
        if keep and base.exists() and any(base.iterdir()):
            shutil.rmtree(base)
        with user_errors():
            say("Three university hospitals found a consortium on the solo engine.")
            homes = create_consortium(
                base / "net", 3, engine="solo", genesis_time_ms=int(time.time() * 1000)
            )
            lyon, paris, bordeaux = homes
            nantes_key = SigningKey.generate()
            with Node.open(lyon, serve=True, interval=0.05) as node:
                members = [m["org"] for m in node.engine.query("governance/members", {})]
                say(f"Founding members: {', '.join(members)}.")

                say("CHU de Lyon proposes to admit CHU de Nantes.")
                c = node.wallet.send(
                    "governance.propose",
                    {
                        "action": "admit_member",
                        "args": {
                            "org": "chu-nantes",
                            "name": "CHU de Nantes",
                            "key": nantes_key.public_key,
                        },
                        "note": "regional cardiology network",
                    },
                )
                say(f"Proposal 1 is open (block {c.height}); Lyon's own vote counts for it.")
                paris_wallet = node.sibling(paris).wallet
                c = paris_wallet.send("governance.vote", {"proposal": 1, "approve": True})
                executed = any(e.type == "member.admitted" for e in c.result.events)
                say(
                    "AP-HP Paris votes for: 2 of 3 members reached the two-thirds threshold, "
                    f"so the admission executed in block {c.height}: "
                    + ("CHU de Nantes is a member." if executed else "nothing happened?!")
                )

                staff = [
                    (node, "dr-martin", ["physician"]),
                    (node, "nurse-dubois", ["nurse"]),
                    (node, "dr-urgence", ["physician", "emergency"]),
                ]
                for owner, pid, roles in staff:
                    owner.wallet.send(
                        "identity.register",
                        {
                            "practitioner": pid,
                            "key": SigningKey.generate().public_key,
                            "roles": roles,
                        },
                    )
                    say(f"CHU de Lyon registers {pid} as {', '.join(roles)}.")
                bordeaux_wallet = node.sibling(bordeaux).wallet
                from medledger.wallet import TxRejected

                try:
                    bordeaux_wallet.send("identity.revoke", {"practitioner": "dr-martin"})
                except TxRejected as exc:
                    say(f"CHU de Bordeaux tries to revoke Lyon's dr-martin: refused ({exc.log}).")
                node.wallet.send(
                    "identity.revoke", {"practitioner": "nurse-dubois", "reason": "left"}
                )
                say("CHU de Lyon revokes nurse-dubois, who left the hospital.")
                height = node.engine.height()
                assert node.app is not None
                report = verify_history(node.app.store, node.app.genesis, default_registry())
            say(
                f"Verification replayed all {report.height} blocks from genesis: every signature, "
                f"nonce, Merkle root and app hash matches ({report.txs} txs, "
                f"app hash {report.app_hash.hex()[:16]}...)."
            )
            say(f"Chain height {height}. Try: medledger ledger show --home {lyon}")
        if not keep:
            console.print(f"(demo consortium in {base}; pass --directory to choose where)")
