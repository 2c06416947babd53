"""The hospital's real ledger app, with one fault injected: die at the start of a commit.

`touch HOME/crash-before-commit` makes the next `commit()` exit the process at once (as a
SIGKILL would), after FinalizeBlock answered and before anything is persisted: CometBFT has
the block, the app does not, and the restart must replay it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from medledger.consensus.cometbft import testnet
from medledger.node.run_app import open_application

CRASH_FLAG = "crash-before-commit"
_REPO = Path(__file__).resolve().parents[2]


def open_app(home: Path) -> Any:
    app = open_application(home)
    original = app.commit
    flag = home / CRASH_FLAG

    def commit(*args: Any, **kwargs: Any) -> Any:
        if flag.exists():
            flag.unlink()
            os._exit(137)
        return original(*args, **kwargs)

    app.commit = commit
    return app


def crash_app_command() -> Any:
    def command(consortium_dir: Path, org: str) -> list[str]:
        home = str(testnet.hospital_home(consortium_dir, org))
        return [
            sys.executable,
            "-m",
            "medledger.node.run_app",
            "--home",
            home,
            "--app",
            "tests.cometbft.crash_app:open_app",
        ]

    return command


def crash_app_env() -> dict[str, str]:
    return {"PYTHONPATH": str(_REPO)}
