"""The consortium's certificate authority and each hospital's TLS certificates.

Hospitals reach each other's gateways over mutual TLS, like X-Road's member servers: a
connection is accepted only when both sides present a certificate issued by the consortium
CA that `medledger init` creates, so a stranger (or a certificate from any public CA) never
reaches a gateway's code. The certificate names the hospital (CN = org id); the gateway
checks it against the key that signed the request, so one hospital cannot relay another's
identity.

    DIR/ca/ca.key  ca.pem                     the consortium CA (key mode 0600, folder 0700)
    DIR/hospitals/<org>/keys/tls/
        ca.pem                                the CA certificate, the only trust anchor
        server.key server.pem                 the gateway's certificate (SAN 127.0.0.1, localhost)
        client.key client.pem                 the node's client certificate (CN = org)

ECDSA P-256 everywhere: OpenSSL, Python's ssl and every TLS 1.3 stack support it. Contexts
made here allow TLS 1.3 only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medledger.host.secretfile import read_secret, write_secret
from medledger.node.config import TLS_DIR

CA_DAYS = 3650
LEAF_DAYS = 825
GATEWAY_PORT_OFFSET = 4  # with a base port, hospital i listens on base + 10 i + 4
_CLOCK_SKEW = dt.timedelta(minutes=5)


class PkiError(ValueError):
    """A CA or certificate file is missing or does not fit; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """Where one hospital's TLS material lives."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @classmethod
    def of_home(cls, home: Path, tls: str = TLS_DIR) -> TlsFiles:
        """The files under a hospital's home (`tls`: its config's `exchange.tls`)."""
        return cls(home / tls)


# --------------------------------------------------------------------------- issuing


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(ca_dir: Path, chain_id: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o700)
    key = _new_key()
    name = _name(f"medledger consortium CA ({chain_id})", chain_id)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_secret(ca_dir / "ca.key", _key_pem(key), overwrite=True)
    (ca_dir / "ca.pem").write_bytes(_cert_pem(cert))
    return cert, key


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key(read_secret(ca_dir / "ca.key"), None)
    except FileNotFoundError as exc:
        raise PkiError(f"{exc.filename}: the consortium CA is missing") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{ca_dir / 'ca.key'}: not an ECDSA key")
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    org: str,
    usage: x509.ObjectIdentifier,
    hosts: list[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(org, org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue_hospital(
    ca_dir: Path, home: Path, org: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TlsFiles:
    """Give one hospital its server and client certificates (also when it joins later)."""
    ca_cert, ca_key = load_ca(ca_dir)
    files = TlsFiles(home / TLS_DIR)
    files.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(files.directory, 0o700)
    files.ca.write_bytes(_cert_pem(ca_cert))
    server, server_key = _issue(ca_cert, ca_key, org, ExtendedKeyUsageOID.SERVER_AUTH, list(hosts))
    client, client_key = _issue(ca_cert, ca_key, org, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    write_secret(files.server_key, _key_pem(server_key), overwrite=True)
    files.server_cert.write_bytes(_cert_pem(server))
    write_secret(files.client_key, _key_pem(client_key), overwrite=True)
    files.client_cert.write_bytes(_cert_pem(client))
    return files


# --------------------------------------------------------------------------- set-up at init


# --------------------------------------------------------------------------- TLS contexts


def _check_files(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            raise PkiError(f"{p}: missing (was this home made by `medledger init`?)")


def _check_key(path: Path) -> None:
    """A TLS private key passes the checks of every secret file (no link, not readable by
    group or others) before `ssl` loads it from its path."""
    read_secret(path, what="TLS key")


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 only; a client certificate, when shown, must be from the consortium CA.

    Optional rather than required so that a hospital joining from afar can read
    `GET /exchange/v1/bootstrap`; every other endpoint refuses a connection without one."""
    _check_files(files.ca, files.server_cert, files.server_key)
    _check_key(files.server_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.server_cert), str(files.server_key))
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 only; the server must show a consortium certificate for the address dialled."""
    _check_files(files.ca, files.client_cert, files.client_key)
    _check_key(files.client_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.client_cert), str(files.client_key))
    return ctx


def peer_org(peercert: dict[str, Any] | None) -> str | None:
    """The hospital a verified peer certificate names (its CN), from `getpeercert()`."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
