"""Client-side TLS for the uplinks: one place that builds the context, so MQTT, Sparkplug and HTTP
verify certificates the same way (on by default, off only on purpose and with a warning)."""

from __future__ import annotations

import logging
import ssl
from typing import Protocol

from edged.config import Secret
from edged.errors import Permanent


class TlsOptions(Protocol):
    """The config fields every TLS-capable uplink has."""

    name: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    key_password: Secret | None
    tls_insecure_skip_verify: bool


def client_context(c: TlsOptions, log: logging.Logger) -> ssl.SSLContext:
    """A verifying client context (the system trust store unless `ca_file`), with the client
    certificate for mutual TLS when configured. Unreadable files are Permanent: retrying won't help."""
    try:
        ctx = ssl.create_default_context(cafile=c.ca_file)
        if c.cert_file and c.key_file:
            ctx.load_cert_chain(c.cert_file, c.key_file, c.key_password.reveal() if c.key_password else None)
    except (OSError, ssl.SSLError) as exc:
        raise Permanent(f"TLS setup failed: {exc}") from exc
    if c.tls_insecure_skip_verify:
        log.warning("uplink %s: TLS certificate verification is OFF (tls_insecure_skip_verify)", c.name)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
