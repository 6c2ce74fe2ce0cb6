"""The client's side of OPC UA security: pick the server's endpoint for the configured policy and
mode, and accept the server's certificate only when the trust list vouches for it, before anything
secret (a password) is sent. A refused certificate is saved for the operator to inspect and trust."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from cryptography import x509

from drivers.opcua.config import Config
from edged.errors import Permanent
from edged.protocols.opcua import certs
from edged.protocols.opcua.errors import mapped_errors

POLICIES: Final[dict[str, type[security_policies.SecurityPolicy]]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES: Final[dict[str, ua.MessageSecurityMode]] = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


def data_path(data_dir: Path, p: str) -> Path:
    """Relative paths in the config are relative to gateway.data_dir."""
    path = Path(p)
    return path if path.is_absolute() else data_dir / path


async def set_security(client: Client, c: Config, data_dir: Path, log: logging.Logger) -> None:
    """Set up `client` for the configured policy and mode against the trust list (Permanent when
    the server offers no such endpoint or its certificate is not trusted)."""
    assert c.security_policy is not None
    assert c.certificate
    assert c.private_key
    policy, mode = POLICIES[c.security_policy], MODES[c.security_mode]
    cert_path, key_path = data_path(data_dir, c.certificate), data_path(data_dir, c.private_key)
    try:
        own = certs.load_certificate(cert_path)
        trusted = certs.load_trusted([data_path(data_dir, p) for p in c.trusted_server_certificates])
    except OSError as exc:
        raise Permanent(f"device {c.name}: cannot read {exc.filename}: {exc.strerror}") from exc
    except ValueError as exc:
        raise Permanent(f"device {c.name}: {exc}") from exc
    if not trusted:
        raise Permanent(f"device {c.name}: trusted_server_certificates holds no certificate")
    if certs.expires_within(own, 30):
        log.warning(
            "device %s: client certificate %s expires on %s",
            c.name,
            cert_path,
            own.not_valid_after_utc.date(),
        )
    if c.application_uri is None:
        client.application_uri = certs.application_uri(own) or client.application_uri
    with mapped_errors(f"get endpoints of {c.endpoint}"):
        endpoints = await client.connect_and_get_server_endpoints()
    ep = next(
        (e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode and e.ServerCertificate),
        None,
    )
    if ep is None:
        offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints})
        raise Permanent(
            f"{c.endpoint} offers no {c.security_policy}/{c.security_mode} endpoint (it offers {', '.join(offered)})"
        )
    server_der = first_certificate(ep.ServerCertificate)
    try:
        server_cert = x509.load_der_x509_certificate(server_der)
    except ValueError as exc:
        raise Permanent(f"{c.endpoint} sent an unreadable certificate: {exc}") from exc
    problem = certs.check_trusted(server_cert, trusted)
    if problem is not None:
        saved = save_rejected(data_dir, server_der, server_cert, log)
        hint = (
            f"; it was saved to {saved}: if this is the right server, add that file to trusted_server_certificates"
            if saved
            else ""
        )
        raise Permanent(
            f"server certificate {certs.describe(server_cert)} of {c.endpoint} is not trusted: {problem}{hint}"
        )
    password = c.private_key_password.reveal() if c.private_key_password else None
    try:
        await client.set_security(policy, str(cert_path), str(key_path), password, server_der, mode)
    except (OSError, ValueError, TypeError) as exc:
        raise Permanent(f"device {c.name}: cannot load {cert_path} / {key_path}: {exc}") from exc


def save_rejected(data_dir: Path, der: bytes, cert: x509.Certificate, log: logging.Logger) -> Path | None:
    """Keep a refused server certificate where the operator can inspect and trust it."""
    path = data_dir / "opcua" / "rejected" / f"{certs.thumbprint(cert)}.der"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(der)
    except OSError as exc:
        log.debug("cannot save rejected certificate to %s: %s", path, exc)
        return None
    return path


def first_certificate(der: bytes) -> bytes:
    """Servers may send their certificate followed by its chain; the leaf is the first DER SEQUENCE."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der
