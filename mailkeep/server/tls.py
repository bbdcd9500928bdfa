"""TLS contexts: the server's certificate, and the client side used for delivery."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("mailkeep.tls")

SELF_SIGNED_CERT = "tls-cert.pem"
SELF_SIGNED_KEY = "tls-key.pem"


def make_self_signed(hostname: str, cert_path: Path, key_path: Path, days: int = 3650) -> None:
    """Write an EC P-256 key and a self-signed certificate whose name is ``hostname``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_paths(hostname: str, data_dir: str, cert: str, key: str) -> tuple[Path, Path]:
    """Return the certificate and key to serve, making a self-signed pair when none is configured."""
    if cert or key:
        if not (cert and key):
            raise ValueError("[tls] needs both cert and key, or neither for a self-signed certificate")
        return Path(cert), Path(key)
    cert_path = Path(data_dir) / SELF_SIGNED_CERT
    key_path = Path(data_dir) / SELF_SIGNED_KEY
    if not (cert_path.exists() and key_path.exists()):
        make_self_signed(hostname, cert_path, key_path)
        log.warning(
            "no [tls] certificate configured: made a self-signed one for %s in %s; "
            "clients that check certificates will not trust it", hostname, cert_path,
        )
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Build the context that STARTTLS and implicit-TLS listeners serve."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_path), str(key_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@functools.cache
def client_context() -> ssl.SSLContext:
    """Return the context for delivery: encrypt when offered, but do not require a valid
    certificate, as opportunistic SMTP TLS does (RFC 7435). It is built once and shared."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def describe(ssl_object: ssl.SSLObject | None) -> str:
    """Describe a TLS session for Received headers and logs, e.g. ``TLSv1.3 with cipher ...``."""
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    if not cipher:
        return ssl_object.version() or "TLS"
    name, version, bits = cipher
    return f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"
