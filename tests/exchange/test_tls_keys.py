"""TLS private keys pass the checks of every secret file (host/secretfile.py) before `ssl`
loads them: a link or a mode open to group/others is refused naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medledger.exchange import pki
from medledger.host.secretfile import SecretFileError


def _hospital(tmp_path: Path) -> tuple[pki.TlsFiles, dict[str, bytes]]:
    files = pki.TlsFiles(tmp_path / "home" / "keys" / "tls")
    return files, {"hospA": pki.new_identity(files.directory, "hospA")}


@pytest.mark.parametrize("which", ["server", "client"])
def test_a_tls_key_readable_by_others_is_refused(tmp_path: Path, which: str) -> None:
    files, pins = _hospital(tmp_path)
    files.key.chmod(0o644)
    with pytest.raises((SecretFileError, pki.PkiError), match=str(files.key)):
        if which == "server":
            pki.server_context(files, lambda: pins)
        else:
            pki.client_context(files, pins)


def test_a_tls_key_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    files, pins = _hospital(tmp_path)
    elsewhere = tmp_path / "elsewhere.key"
    os.replace(files.key, elsewhere)
    files.key.symlink_to(elsewhere)
    with pytest.raises((SecretFileError, pki.PkiError), match=str(files.key)):
        pki.server_context(files, lambda: pins)


def test_a_tls_key_is_never_overwritten(tmp_path: Path) -> None:
    files, _ = _hospital(tmp_path)
    before = files.key.read_bytes()
    with pytest.raises(pki.PkiError, match="already here"):
        pki.new_identity(files.directory, "hospA")
    assert files.key.read_bytes() == before
