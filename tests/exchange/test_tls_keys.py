"""TLS private keys pass the checks of every secret file (host/secretfile.py) before `ssl`
loads them: a link or a mode open to group/others is refused naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medledger.exchange import pki
from medledger.host.secretfile import SecretFileError


def _hospital(tmp_path: Path) -> pki.TlsFiles:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    pki.create_ca(ca_dir, "review2-chain")
    return pki.issue_hospital(ca_dir, tmp_path / "home", "hospA")


@pytest.mark.parametrize("which", ["server", "client"])
def test_a_tls_key_readable_by_others_is_refused(tmp_path: Path, which: str) -> None:
    files = _hospital(tmp_path)
    key = files.server_key if which == "server" else files.client_key
    key.chmod(0o644)
    make = pki.server_context if which == "server" else pki.client_context
    with pytest.raises((SecretFileError, pki.PkiError), match=str(key)):
        make(files)


def test_a_tls_key_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    files = _hospital(tmp_path)
    elsewhere = tmp_path / "elsewhere.key"
    os.replace(files.server_key, elsewhere)
    files.server_key.symlink_to(elsewhere)
    with pytest.raises((SecretFileError, pki.PkiError), match=str(files.server_key)):
        pki.server_context(files)
