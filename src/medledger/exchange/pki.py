"""Each hospital's TLS identity, and trust pinned to the keys the consortium voted in.

There is no consortium CA: a hospital makes its own TLS key at home (ECDSA P-256) and a
certificate for it, and the chain holds the public key of every member (`tls_key` on its
member record, admitted and rotated by governance). A connection, either way, is accepted only
when the peer's certificate key is the `tls_key` of a current member in committed state; that
member is the `peer_org`. A member removed or rotated by a block is refused from the next
handshake on: the pins are re-read at every handshake (`PinnedContexts`).

How a stock TLS stack checks a key it holds no certificate for: a hospital's certificate is
issued by "its own pin" — its issuer is `medledger pin <org>` and it is signed by its own key.
For every current member the verifier makes, locally, a trust anchor named `medledger pin
<org>` carrying that member's key from the chain; OpenSSL then accepts the certificate exactly
when it is signed by that key, and `peer_org` checks that the certificate's own key is it too.
The anchors are never sent anywhere and their own signature is not what is trusted.

    HOME/keys/tls/key.pem    the hospital's TLS private key (mode 0600, folder 0700)
    HOME/keys/tls/cert.pem   its certificate, for the gateway and the node's client alike

TLS 1.3 only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medledger.host.secretfile import read_secret, write_secret
from medledger.node.config import TLS_DIR

log = logging.getLogger(__name__)

GATEWAY_PORT_OFFSET = 4  # with a base port, hospital i listens on base + 10 i + 4
_NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # the chain revokes, not time

#: Where the current pins come from: {org: DER public key} of the current members.
Pins = Mapping[str, bytes]
PinSource = Callable[[], Pins]


class PkiError(ValueError):
    """A TLS key or certificate file is missing or does not fit; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """Where one hospital's TLS key and certificate live."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @classmethod
    def of_home(cls, home: Path, tls: str = TLS_DIR) -> TlsFiles:
        """The files under a hospital's home (`tls`: its config's `exchange.tls`)."""
        return cls(home / tls)


# --------------------------------------------------------------------------- identities


def _pin_name(org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medledger"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"medledger pin {org}"),
        ]
    )


def public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a key: what the chain stores as `tls_key`."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_key(cert_der: bytes) -> bytes:
    """The DER public key a certificate carries."""
    key = x509.load_der_x509_certificate(cert_der).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError("the certificate's key is not an ECDSA key")
    return public_key_der(key)


def _certificate(
    key: ec.EllipticCurvePrivateKey, org: str, hosts: tuple[str, ...]
) -> x509.Certificate:
    """A certificate for `key` named after `org`, issued by its own pin and signed by `key`."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                    x509.NameAttribute(NameOID.COMMON_NAME, org),
                ]
            )
        )
        .issuer_name(_pin_name(org))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def _anchor(org: str, public_der: bytes, signer: ec.EllipticCurvePrivateKey) -> bytes:
    """A local trust anchor named after `org`'s pin, carrying its key from the chain (PEM)."""
    public = serialization.load_der_public_key(public_der)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PkiError(f"{org}: its tls_key on the chain is not an ECDSA key")
    cert = (
        x509.CertificateBuilder()
        .subject_name(_pin_name(org))
        .issuer_name(_pin_name(org))
        .public_key(public)
        .serial_number(1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _anchors(pins: tuple[tuple[str, bytes], ...], signer: ec.EllipticCurvePrivateKey) -> list[str]:
    """The anchors of the pins that load: one member's bad key costs that member alone its
    connections, not every handshake of the node."""
    out = []
    for org, key in pins:
        try:
            out.append(_anchor(org, key, signer).decode())
        except (PkiError, ValueError) as exc:
            log.warning("%s: its tls_key on the chain does not load, not trusted: %s", org, exc)
    return out


def new_identity(directory: Path, org: str, hosts: tuple[str, ...] = ()) -> bytes:
    """Make a TLS key and its certificate in `directory`; return the public key (DER).

    Refuses to overwrite a key: a rotation writes the new pair into a new folder first."""
    files = TlsFiles(directory)
    if files.key.exists():
        raise PkiError(f"{files.key}: a TLS key is already here")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(files.key, pem.decode())
    files.cert.write_bytes(_certificate(key, org, hosts).public_bytes(serialization.Encoding.PEM))
    return public_key_der(key.public_key())


def identity_key(files: TlsFiles) -> bytes:
    """The public key (DER) of a home's TLS certificate."""
    _check_files(files)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    return cert_key(cert.public_bytes(serialization.Encoding.DER))


# --------------------------------------------------------------------------- TLS contexts


def _check_files(files: TlsFiles) -> None:
    for p in (files.cert, files.key):
        if not p.exists():
            raise PkiError(f"{p}: missing (made by `medledger hospital keygen` or `init`)")
    # The private key passes the checks of every secret file (no link, not readable by group
    # or others) before `ssl` loads it from its path.
    read_secret(files.key, what="TLS key")


class PinnedContexts:
    """TLS contexts that trust exactly the current members' keys, rebuilt when they change.

    `server()` is the gateway's context: at every handshake it swaps in the context for the
    pins `source()` gives then. `client()` is the node's, for new connections; callers drop
    their pooled connections when `changed()` says the pins moved."""

    def __init__(self, files: TlsFiles, source: PinSource, *, anonymous: bool = False) -> None:
        """`anonymous`: the server also lets a client without a certificate finish the
        handshake (its `peer_org` is None; the gateway refuses it everything it must
        authenticate). A certificate that is shown must still carry a pinned key."""
        _check_files(files)
        self.files = files
        self.source = source
        self.anonymous = anonymous
        self._lock = threading.Lock()
        self._anchor_key = ec.generate_private_key(ec.SECP256R1())  # signs local anchors only
        self._built: dict[bool, ssl.SSLContext] = {}  # the latest context of each side

    def _pins(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(sorted((org, bytes(key)) for org, key in self.source().items() if key))

    def _stamp(self) -> tuple[int, int]:
        """Which certificate file is live: a rotation's switch makes new contexts too."""
        found = self.files.cert.stat()
        return found.st_ino, found.st_mtime_ns

    def _context(self, server: bool) -> ssl.SSLContext:
        pins, stamp = self._pins(), self._stamp()
        with self._lock:
            ctx = self._built.get(server)
            if ctx is not None and ctx.pins == dict(pins) and ctx.stamp == stamp:  # type: ignore[attr-defined]
                return ctx
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_OPTIONAL if server and self.anonymous else ssl.CERT_REQUIRED
            ctx.check_hostname = False  # the key is the identity, not the address dialled
            anchors = "".join(_anchors(pins, self._anchor_key))
            if anchors:
                ctx.load_verify_locations(cadata=anchors)
            ctx.load_cert_chain(str(self.files.cert), str(self.files.key))
            ctx.pins = dict(pins)  # type: ignore[attr-defined]
            ctx.stamp = stamp  # type: ignore[attr-defined]
            if server:
                ctx.sni_callback = self._swap
                # No session tickets: a resumed session skips the certificate, and every
                # connection must show a key pinned at the time it is made.
                ctx.num_tickets = 0
            self._built[server] = ctx
            return ctx

    def _swap(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        """At each ClientHello: the context for the members as they are now."""
        ssl_object.context = self._context(True)

    def server(self) -> ssl.SSLContext:
        return self._context(True)

    def client(self) -> ssl.SSLContext:
        return self._context(False)

    def current(self, ctx: ssl.SSLContext) -> bool:
        """Whether a client context still trusts exactly the current members, with the live
        certificate (else the caller drops its pooled connections and takes `client()`)."""
        return self._context(False) is ctx


def peer_org(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The member whose pinned key the verified peer certificate carries, or None."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(True)  # positional: httpx hands the C object
    pins: dict[str, bytes] = getattr(ssl_object.context, "pins", {})
    if not der or not pins:
        return None
    try:
        key = cert_key(der)
    except (PkiError, ValueError):
        return None
    for org, pinned in pins.items():
        if pinned == key:
            return org
    return None


def client_context(files: TlsFiles, pins: Pins) -> ssl.SSLContext:
    """A client context trusting exactly `pins` (a tool or test outside a running node)."""
    fixed = dict(pins)
    return PinnedContexts(files, lambda: fixed).client()


def server_context(files: TlsFiles, source: PinSource) -> ssl.SSLContext:
    """A server context trusting, at each handshake, the pins `source()` gives then."""
    return PinnedContexts(files, source).server()
