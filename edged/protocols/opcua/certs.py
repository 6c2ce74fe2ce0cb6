"""OPC UA application certificates: a self-signed pair for first setup, and the trust check of a peer.

Trust is explicit: a peer certificate is accepted only when it is in the configured list (the usual
pinning of a self-signed OPC UA certificate) or directly issued by a certificate in that list. There
is no trust on first use; a rejected certificate is saved so the operator can inspect and trust it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edged.files import FILE_MODE, PRIVATE_MODE, write_atomic

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


@dataclass(frozen=True, slots=True)
class GeneratedCertificate:
    cert_path: Path
    key_path: Path
    application_uri: str
    thumbprint: str  # SHA-1, the way OPC UA tools show a certificate
    not_after: dt.datetime


def create_client_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    app_uri: str,
    hostname: str | None = None,
    *,
    days: int = 730,
    overwrite: bool = False,
) -> GeneratedCertificate:
    """Create a self-signed OPC UA client application certificate and its private key.

    For first setup: the server's administrator then trusts this certificate (most servers put an
    unknown client certificate in their "rejected" folder on the first connect attempt). The
    certificate carries `app_uri` as its URI SubjectAltName (OPC UA servers compare it with the
    client's ApplicationUri, which the driver takes from the certificate) and `hostname` (default:
    this machine's name) as DNS name. A `.pem` cert path writes PEM, anything else DER (the OPC UA
    convention); the key is unencrypted PKCS#8 PEM, created with mode 0600.

    Raises FileExistsError rather than replace an existing key or certificate unless `overwrite`.
    """
    return create_self_signed_certificate(
        cert_path, key_path, app_uri, hostname, days=days, overwrite=overwrite, server=False
    )


def create_self_signed_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    app_uri: str,
    hostname: str | None = None,
    *,
    days: int = 730,
    overwrite: bool = False,
    server: bool = False,
    addresses: Sequence[str] = (),
) -> GeneratedCertificate:
    """Like `create_client_certificate`; `server=True` makes a server (ServerAuth) certificate.
    `addresses` (IP addresses or DNS names) join the SubjectAltName: a client connecting by IP
    checks that the server certificate names that IP (OPC 10000-6 6.2.2, hostname check)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    cert_file, key_file = Path(cert_path), Path(key_path)
    if not overwrite:
        for p in (cert_file, key_file):
            if p.exists():
                raise FileExistsError(f"{p} already exists (pass overwrite=True to replace it)")
    host = hostname or socket.gethostname()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edged@{host}"[:64])])
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a peer's clock running slightly behind
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_alt_names(app_uri, [host, *addresses])), False)
        # Self-signed OPC UA application certificates carry cA=TRUE (OPC 10000-6 6.2.2), else
        # OpenSSL-based validators refuse them as their own issuer.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    encoding = serialization.Encoding.PEM if cert_file.suffix.lower() == ".pem" else serialization.Encoding.DER
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    # the key readable by its owner only, the certificate also by group edged, whatever the umask
    write_atomic(key_file, key_bytes, mode=PRIVATE_MODE, fsync=True)
    write_atomic(cert_file, cert.public_bytes(encoding), mode=FILE_MODE, fsync=True)
    return GeneratedCertificate(cert_file, key_file, app_uri, thumbprint(cert), cert.not_valid_after_utc)


def _alt_names(app_uri: str, names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
    for name in dict.fromkeys(names):  # once each, in order
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def alt_addresses(cert: x509.Certificate) -> set[str]:
    """The IP addresses and DNS names of a certificate's SubjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest()


def describe(cert: x509.Certificate) -> str:
    """Subject and thumbprint, the two things an operator compares with the server's own display."""
    return f"{cert.subject.rfc4514_string() or '(empty subject)'} (SHA-1 {thumbprint(cert)})"


def application_uri(cert: x509.Certificate) -> str | None:
    """The URI SubjectAltName: a client's ApplicationUri must equal it or servers reject the session."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """DER (one certificate) or PEM (one or more)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate in a DER or PEM file; ValueError names the file when it is not one."""
    try:
        return parse_certificates(path.read_bytes())[0]
    except ValueError as exc:
        raise ValueError(f"{path} is not a DER or PEM certificate: {exc}") from None


def load_trusted(paths: Iterable[Path]) -> list[x509.Certificate]:
    """Certificates from files and directories (their *.der, *.pem, *.crt, *.cer files)."""
    out: list[x509.Certificate] = []
    for path in paths:
        files = (
            sorted(p for p in path.iterdir() if p.suffix.lower() in CERT_SUFFIXES and p.is_file())
            if path.is_dir()
            else [path]
        )
        for f in files:
            try:
                out.extend(parse_certificates(f.read_bytes()))
            except ValueError as exc:
                raise ValueError(f"{f} is not a DER or PEM certificate: {exc}") from None
    return out


def check_trusted(
    cert: x509.Certificate, trusted: Sequence[x509.Certificate], now: dt.datetime | None = None
) -> str | None:
    """None when `cert` is trusted and currently valid, else the reason (for the operator)."""
    now = now or dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        return f"it is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d} UTC"
    der = cert.public_bytes(serialization.Encoding.DER)
    for t in trusted:
        if t.public_bytes(serialization.Encoding.DER) == der:
            return None
    for issuer in trusted:
        if issuer.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if now > issuer.not_valid_after_utc:
            return f"its issuer {describe(issuer)} expired"
        return None
    return "it is not in the trusted certificate list (and not issued by a certificate in it)"


def expires_within(cert: x509.Certificate, days: int) -> bool:
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=days)
