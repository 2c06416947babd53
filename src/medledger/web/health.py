"""The explorer's poll of every hospital's `/health` (served by `api.monitoring`).

`hospitals_health` asks each hospital of the consortium for it (org, height, app hash) and
says whether it agrees with this node.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.api.services import HospitalServices


@dataclass(frozen=True)
class NodeHealth:
    """What one hospital's node answered: up (its height, whether its app hash is ours at the
    same height), or unreachable (the kind of error)."""

    up: bool
    height: object = None
    same_app_hash: bool = False
    error: str = ""


def hospitals_health(svc: HospitalServices) -> dict[str, NodeHealth]:
    """Each hospital's node as its own /health reports it (height, app hash), or why not;
    keyed by org (by home folder name when it could not be reached)."""
    import httpx

    from medledger.node.config import hospital_homes, load_config

    out: dict[str, NodeHealth] = {}
    try:
        homes = hospital_homes(svc.node.config.consortium_dir)
    except Exception:
        return out
    mine = svc.node.app.info() if svc.node.app is not None else None
    for home in homes:
        try:
            config = load_config(home)
            host, port = config.api.address
            if not port:
                continue
            data = httpx.get(f"http://{host}:{port}/health", timeout=0.5).json()
        except Exception as exc:
            out[home.name] = NodeHealth(up=False, error=type(exc).__name__)
            continue
        agree = (
            mine is not None
            and data.get("height") == mine.height
            and data.get("app_hash") == mine.app_hash.hex()
        )
        out[str(data.get("org"))] = NodeHealth(
            up=True, height=data.get("height"), same_app_hash=agree
        )
    return out
