"""A FIFO planted in place of a secret file is refused naming the file, never waited on (the
reader opens without blocking, then checks the file's type on the descriptor)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_fifo_in_place_of_a_secret_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "org.key"
    os.mkfifo(fifo, 0o600)
    code = (
        "import sys\n"
        "from medledger.host.secretfile import read_secret, InsecureSecretFile\n"
        "try:\n"
        f"    read_secret({str(fifo)!r})\n"
        "except InsecureSecretFile as exc:\n"
        "    print(exc); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], timeout=5, capture_output=True)
    except subprocess.TimeoutExpired:
        raise AssertionError("read_secret waited on a FIFO instead of refusing it") from None
    assert done.returncode == 0 and b"not a regular file" in done.stdout, done
