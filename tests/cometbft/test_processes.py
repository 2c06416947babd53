"""Process bookkeeping that needs no CometBFT binary: stand-in processes play its part."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medledger.consensus.cometbft import processes, testnet

# A CometBFT hung in its own shutdown: SIGTERM does nothing, only SIGKILL ends it.
_DEAF_TO_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(120)"
)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def _stand_in(
    directory: Path, org: str, role: str, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """A process whose command line names this hospital's home, with its pid file."""
    home = (
        testnet.cometbft_home(directory, org)
        if role == "cometbft"
        else testnet.hospital_home(directory, org)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _DEAF_TO_SIGTERM, str(home)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    (directory / "run").mkdir(exist_ok=True)
    (directory / "run" / f"{org}.{role}.pid").write_text(f"{proc.pid}\n")
    return proc


def test_a_cometbft_whose_app_is_gone_is_stopped_even_when_deaf_to_sigterm(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    orphan = _stand_in(tmp_path, "chu-lyon", "cometbft", started)
    paired = _stand_in(tmp_path, "aphp-paris", "cometbft", started)
    _stand_in(tmp_path, "aphp-paris", "app", started)

    stopped = processes.stop_orphaned_cometbfts(tmp_path, ["chu-lyon", "aphp-paris"], grace=0.5)

    assert stopped == ["chu-lyon"]
    assert orphan.wait(timeout=5) == -signal.SIGKILL
    assert processes.read_pid(tmp_path, "chu-lyon", "cometbft") is None
    assert not (tmp_path / "run" / "chu-lyon.cometbft.pid").exists()
    # A CometBFT whose app runs is left alone.
    assert paired.poll() is None
    assert processes.read_pid(tmp_path, "aphp-paris", "cometbft") == paired.pid


def test_a_stale_pid_file_never_signals_an_unrelated_process(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    stranger = _stand_in(tmp_path, "someone-else", "cometbft", started)
    (tmp_path / "run" / "chu-lyon.cometbft.pid").write_text(f"{stranger.pid}\n")

    assert processes.stop_orphaned_cometbfts(tmp_path, ["chu-lyon"], grace=0.5) == []
    assert stranger.poll() is None


def test_cometbft_gets_two_ps_on_a_one_cpu_machine_unless_the_operator_chose() -> None:
    """One P makes CometBFT's socket ABCI client spin on its flush timer (docs/deploy.md)."""
    assert processes.cometbft_env({}, cpus=1) == {"GOMAXPROCS": "2"}
    assert processes.cometbft_env({}, cpus=2) == {}  # Go's own default is enough
    assert processes.cometbft_env({"GOMAXPROCS": "1"}, cpus=1) == {}  # the operator's choice
